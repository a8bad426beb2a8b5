// Build, instance and deployment logs: newest on top, new lines added at the top as they are written
// (follow=true), older lines loaded on scrolling down (the `before` cursor), filtered by version and instance.
import { api, follow } from "./api.js";
import { add, field, fill, h } from "./ui.js";

const PAGE = 100; // lines per read: the newest on opening, then each older page on scrolling
const KINDS = [["build", "Build"], ["instance", "Instance"], ["deployment", "Deployment"]];

function line(l) {
  const meta = [new Date(l.at * 1000).toLocaleTimeString(), l.version ? `v${l.version}` : "", l.instance_id || ""]
    .filter(Boolean).join(" ");
  return h("div", { "data-seq": l.seq }, h("span", { class: "meta" }, `${meta} `), l.line);
}

export async function render(view, ctx) {
  const ref = ctx.params[0];
  const model = await api("GET", `/v1/models/${encodeURIComponent(ref)}`);
  const base = `/v1/models/${encodeURIComponent(model.name)}/logs`;
  let kind = "deployment";
  let stream = null;
  const version = h("select", { id: "log-version", name: "version" }, h("option", { value: "" }, "all"),
    ...model.versions.map((v) => h("option", { value: v.number }, `v${v.number}`)));
  const instance = h("select", { id: "log-instance", name: "instance" }, h("option", { value: "" }, "all"),
    ...model.running_instances.map((i) => h("option", { value: i.instance_id }, i.instance_id)));
  const box = h("div", { class: "log", id: "log", tabindex: 0, role: "log", "aria-label": "Log lines, newest first" });
  const tabs = h("div", { class: "tabs", role: "tablist", "aria-label": "Log kind" });
  let older = null;
  let loading = false;

  const query = (extra) => {
    const q = new URLSearchParams({ kind, limit: String(PAGE), ...extra });
    if (version.value) q.set("version", version.value);
    if (instance.value) q.set("instance", instance.value);
    return `${base}?${q}`;
  };
  const more = async () => {
    if (older === null || loading) return;
    loading = true;
    const page = await api("GET", query({ before: String(older) }));
    add(box, ...page.lines.map(line));
    older = page.next_before;
    loading = false;
  };
  const load = async () => {
    if (stream) stream.abort();
    stream = new AbortController();
    ctx.signal.addEventListener("abort", () => stream.abort());
    for (const tab of tabs.children) tab.setAttribute("aria-selected", String(tab.dataset.kind === kind));
    const page = await api("GET", query({}));
    fill(box, ...page.lines.map(line));
    older = page.next_before;
    const newest = page.lines.length ? page.lines[0].seq : 0;
    follow(query({ follow: "true", after: String(newest) }), (_, l) => {
      if (!box.querySelector(`[data-seq="${l.seq}"]`)) box.prepend(line(l));
    }, stream.signal).catch(() => {});
  };
  for (const [value, text] of KINDS) {
    const tab = h("button", { type: "button", role: "tab", "data-kind": value, id: `tab-${value}` }, text);
    tab.addEventListener("click", () => { kind = value; load(); });
    add(tabs, tab);
  }
  box.addEventListener("scroll", () => {
    if (box.scrollTop + box.clientHeight >= box.scrollHeight - 40) more();
  });
  version.addEventListener("change", load);
  instance.addEventListener("change", load);
  add(view, h("h1", {}, `Logs of ${model.name}`), h("p", {}, h("a", { href: `#/m/${encodeURIComponent(model.name)}` }, "Back")),
    tabs, h("div", { class: "actions" }, field("Version", version), field("Instance", instance)),
    box, h("button", { type: "button", class: "secondary", id: "older", onclick: more }, "Older lines"));
  await load();
}
