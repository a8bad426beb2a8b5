// The model APIs the user may see, live: GET /v1/models?follow=true sends each one, then every change.
import { follow } from "./api.js";
import { add, fill, h, stateBadge } from "./ui.js";

export function readyCount(model) {
  return model.running_instances.filter((i) => i.state === "ready").length;
}

function row(m) {
  const gpu = m.gpu_count ? `${m.gpu_type} x ${m.gpu_count}` : "CPU";
  return h("tr", { "data-model": m.name },
    h("td", {}, h("a", { href: `#/m/${encodeURIComponent(m.name)}` }, m.name)),
    h("td", {}, stateBadge(m.state, m.reason)),
    h("td", { "data-versions": "" }, m.latest ? `latest v${m.latest}` : "-", m.labels.prod ? `, prod v${m.labels.prod}` : "",
      m.target && m.target !== m.latest ? ` (deploying v${m.target})` : ""),
    h("td", { "data-instances": "" }, `${readyCount(m)} / ${m.instances}`),
    h("td", {}, gpu),
    h("td", { "data-place": "" }, m.state === "waiting" && m.queue_position ? `#${m.queue_position} in line` : ""),
    h("td", { class: "hide-narrow" }, m.owner),
    h("td", { class: "hide-narrow" }, m.visibility),
  );
}

export async function render(view, ctx) {
  const shown = new Map();
  const body = h("tbody", {});
  const empty = h("p", { id: "no-models" }, "No model APIs yet.");
  const table = h("div", { class: "table-wrap" }, h("table", { "aria-label": "Model APIs" },
    h("thead", {}, h("tr", {}, ...["Name", "State", "Versions", "Ready / asked", "GPUs", "Place in line"].map(
      (t) => h("th", { scope: "col" }, t)),
      h("th", { scope: "col", class: "hide-narrow" }, "Owner"), h("th", { scope: "col", class: "hide-narrow" }, "Visibility"))),
    body));
  const live = h("p", { class: "help", "aria-live": "polite", id: "live" }, "Connecting...");
  add(view, h("div", { class: "actions" }, h("h1", {}, "Model APIs"),
    h("a", { class: "button", href: "#/new", id: "create" }, "New model API")), live, empty, table);
  const draw = () => {
    fill(body, ...[...shown.values()].sort((a, b) => a.name.localeCompare(b.name)).map(row));
    empty.hidden = shown.size > 0;
  };
  draw();
  await follow("/v1/models?follow=true", (kind, data) => {
    if (kind === "model") shown.set(data.id, data);
    else if (kind === "removed") shown.delete(data.id);
    draw();
  }, ctx.signal, () => {
    live.textContent = "Live: states update as they change.";
  });
}
