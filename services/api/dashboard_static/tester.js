// Domino's tester: pick a route or a Domino format, a JSON body from the route's template, a token,
// Send. The api makes the call through the gateway (POST /v1/models/{ref}/try: the gateway is
// another origin) and the page shows the status, time, headers and body as they came back.
import { api, ApiError, signedInByKey } from "./api.js";
import { keptTokens } from "./roles.js";
import { routeBody } from "./snippets.js";
import { add, field, fill, h } from "./ui.js";

export async function render(view, ctx) {
  const ref = ctx.params[0];
  const model = await api("GET", `/v1/models/${encodeURIComponent(ref)}`);
  const latest = model.versions.find((v) => v.number === model.latest) || model.versions[0];
  const entry = latest ? latest.entrypoint : { routes: [] };
  const targets = [];
  if (entry.file && entry.function) {
    targets.push({ label: "Domino format: data", path: "model", method: "POST", body: { data: { x: 1 } } });
    targets.push({ label: "Domino format: parameters", path: "model", method: "POST", body: { parameters: [1] } });
  }
  for (const r of entry.routes || []) {
    targets.push({ label: `${r.verb || "POST"} ${r.path}`, path: r.path, method: r.verb || "POST", body: routeBody(r) });
  }
  targets.push({ label: "GET /ping", path: "ping", method: "GET", body: null });
  const target = h("select", { id: "tester-target", name: "target" }, ...targets.map((t, i) => h("option", { value: i }, t.label)));
  const label = h("select", { id: "tester-label", name: "label" }, h("option", {}, "latest"),
    model.routing_mode === "advanced" ? h("option", {}, "prod") : null);
  const body = h("textarea", { id: "tester-body", name: "body", rows: 8, spellcheck: "false" });
  const tokens = keptTokens(model.id);
  const key = signedInByKey();
  const token = h("select", { id: "tester-token", name: "token" }, h("option", { value: "" }, "none"),
    ...tokens.map((t) => h("option", { value: `kept:${t.name}` }, `token ${t.name} (made in this tab)`)),
    key ? h("option", { value: "key" }, "my API key") : null, h("option", { value: "paste" }, "paste a token"));
  const pasted = h("input", { id: "tester-pasted", type: "password", autocomplete: "off", name: "pasted" });
  const pastedField = field("Pasted token", pasted);
  const prefill = () => {
    const t = targets[Number(target.value)];
    body.value = t.body === null ? "" : JSON.stringify(t.body, null, 2);
  };
  const showPasted = () => { pastedField.hidden = token.value !== "paste"; };
  if (tokens.length) token.value = `kept:${tokens[tokens.length - 1].name}`;
  target.addEventListener("change", prefill);
  token.addEventListener("change", showPasted);
  const result = h("section", { class: "panel", id: "tester-result", "aria-live": "polite" });
  const problem = h("p", { class: "error", role: "alert", "data-error-for": "body" });
  const form = h("form", { id: "tester-form" }, field("Call", target), field("Label", label), field("Body (JSON)", body),
    problem, field("Token", token), pastedField, h("button", { type: "submit", id: "send" }, "Send"));
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    problem.textContent = "";
    const t = targets[Number(target.value)];
    let parsed = null;
    if (body.value.trim()) {
      try {
        parsed = JSON.parse(body.value);
      } catch (err) {
        problem.textContent = `body: not valid JSON (${err.message})`;
        return;
      }
    }
    const secret = token.value === "key" ? key : token.value === "paste" ? pasted.value.trim()
      : tokens.find((k) => `kept:${k.name}` === token.value)?.secret;
    try {
      const answer = await api("POST", `/v1/models/${encodeURIComponent(model.name)}/try`, {
        path: t.path, method: t.method, label: label.value, body: t.method === "GET" ? null : parsed, token: secret || null });
      fill(result, ...shown(answer));
    } catch (err) {
      if (!(err instanceof ApiError)) throw err;
      problem.textContent = err.message;
    }
  });
  add(view, h("h1", {}, `Test ${model.name}`), h("p", {}, h("a", { href: `#/m/${encodeURIComponent(model.name)}` }, "Back")),
    h("section", { class: "panel" }, form), result);
  prefill();
  showPasted();
}

function shown(answer) {
  let pretty = answer.body;
  let fields = [];
  try {
    const data = JSON.parse(answer.body);
    pretty = JSON.stringify(data, null, 2);
    fields = data?.error?.fields || data?.error?.errors || [];
  } catch {
    // not JSON: shown as it came
  }
  const retry = answer.headers["Retry-After"] ?? answer.headers["retry-after"];
  const meaning = answer.status === 400 ? "Bad request: the body does not match the route's template."
    : answer.status === 503 ? `Overloaded or not ready${retry ? `: retry after ${retry} s` : ""}.`
    : answer.status === 401 || answer.status === 403 ? "Not allowed: choose an access token." : "";
  return [
    h("h2", {}, "Answer"),
    h("p", { id: "tester-status", "data-status": answer.status, class: answer.status < 400 ? "" : "error" },
      `${answer.status} in ${answer.time_ms} ms`),
    meaning ? h("p", { id: "tester-meaning", class: "notice" }, meaning) : null,
    fields.length ? h("ul", {}, ...fields.map((f) => h("li", {}, typeof f === "string" ? f : JSON.stringify(f)))) : null,
    h("h3", {}, "Headers"),
    h("pre", { id: "tester-headers" }, Object.entries(answer.headers).map(([k, v]) => `${k}: ${v}`).join("\n")),
    h("h3", {}, "Body"),
    h("pre", { id: "tester-body-out" }, pretty),
  ];
}
