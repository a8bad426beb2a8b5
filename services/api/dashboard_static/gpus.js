// GPUs per type: total / free / asked / waiting (GET /v1/gpus), and the model APIs waiting in line.
import { api, ApiError } from "./api.js";
import { add, h, stateBadge } from "./ui.js";

export async function render(view) {
  add(view, h("h1", {}, "GPUs"));
  let gpus;
  try {
    gpus = await api("GET", "/v1/gpus");
  } catch (err) {
    if (!(err instanceof ApiError) || err.status !== 503) throw err;
    add(view, h("p", { class: "notice" }, err.message));
    return;
  }
  const models = await api("GET", "/v1/models");
  const waiting = models.filter((m) => m.state === "waiting").sort((a, b) =>
    (a.gpu_type || "").localeCompare(b.gpu_type || "") || (a.queue_position || 0) - (b.queue_position || 0));
  add(view, 
    gpus.simulated ? h("p", { class: "help" }, "Simulated GPUs (PIER_GPUS).") : null,
    h("div", { class: "table-wrap" }, h("table", { "aria-label": "GPU types", id: "gpu-table" },
      h("thead", {}, h("tr", {}, ...["Type", "Total", "Free", "Asked", "Waiting", "Nodes"].map((t) => h("th", { scope: "col" }, t)))),
      h("tbody", {}, ...Object.entries(gpus.types).map(([type, t]) => h("tr", { "data-gpu": type }, h("td", {}, type),
        h("td", {}, t.total), h("td", {}, t.free), h("td", {}, t.requested), h("td", {}, t.waiting),
        h("td", {}, Object.entries(t.nodes).map(([n, c]) => `${n}: ${c}`).join(", "))))))),
    h("h2", {}, "Waiting line"),
    waiting.length ? h("ol", { id: "waiting" }, ...waiting.map((m) => h("li", {},
      h("a", { href: `#/m/${encodeURIComponent(m.name)}` }, m.name), ` ${m.gpu_type} x ${m.gpu_count} x ${m.instances}, `,
      `#${m.queue_position} in line `, stateBadge(m.state, "")))) : h("p", {}, "Nothing is waiting (of what you may see)."),
  );
}
