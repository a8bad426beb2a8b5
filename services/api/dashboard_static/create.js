// Create a model API as proxiML's form does, then review it (POST /v1/plan) before anything is
// created: the model API is made only by Confirm.
import { api, ApiError } from "./api.js";
import { archiveTarball, folderTarball } from "./tarball.js";
import { add, field, fill, h, showErrors } from "./ui.js";

const NAME = /^[a-z0-9][a-z0-9-]{0,62}$/;
const TYPES = ["string", "integer", "number", "boolean", "object", "array"];
const DEFAULTS = { initial_delay: 0, period: 10, timeout: 5, failure_threshold: 7, request_timeout: 60 };
const LABELS = { initial_delay: "Initial delay (s)", period: "Probe period (s)", timeout: "Probe timeout (s)",
  failure_threshold: "Failure threshold", request_timeout: "Request timeout (s)" };
// What the form holds between the form and its review page (this tab only; nothing is sent).
let draft = null;

function num(value) {
  return value === "" || value === undefined ? undefined : Number(value);
}

function maxNode(type) {
  return Math.max(0, ...Object.values(type.nodes || {}));
}

async function inventory() {
  try {
    return await api("GET", "/v1/gpus");
  } catch (err) {
    if (err instanceof ApiError && err.status === 503) return { simulated: true, types: {} };
    throw err;
  }
}

export async function render(view, ctx) {
  if (location.hash === "#/new/review") return review(view, ctx);
  const [gpus, sources] = await Promise.all([inventory(), api("GET", "/v1/sources").catch(() => [])]);
  const d = draft?.form || {};
  const input = (name, attrs = {}) => h("input", { name, id: `f-${name}`, value: d[name] ?? attrs.value, ...attrs });
  const form = h("form", { id: "create-form", novalidate: true });

  // What and where from.
  const name = input("name", { required: true, autocomplete: "off", pattern: NAME.source });
  const kinds = [["source_name", "A registered source"], ["folder", "Upload a folder"], ["tarball", "Upload a .tar.gz or .zip"],
    ["git", "A git repository"]];
  const kind = d.kind || (sources.length ? "source_name" : "folder");
  const kindPick = h("fieldset", {}, h("legend", {}, "Source"), ...kinds.map(([value, text]) =>
    h("label", {}, h("input", { type: "radio", name: "kind", value, checked: value === kind }), ` ${text}`)));
  const sourceName = h("select", { name: "source_name", id: "f-source_name" },
    ...sources.map((s) => h("option", { value: s.name, selected: d.source_name === s.name }, s.name)));
  const folder = h("input", { type: "file", name: "folder", id: "f-folder", webkitdirectory: true, multiple: true });
  const tarball = h("input", { type: "file", name: "tarball", id: "f-tarball", accept: ".tar.gz,.tgz,.zip,application/gzip,application/zip" });
  const git = input("git", { placeholder: "https://example.org/team/repo.git" });
  const ref = input("ref", { placeholder: "main, a tag or a commit" });
  const sourceFields = {
    source_name: field("Registered source", sourceName, { name: "source_name" }),
    folder: field("Folder", folder, { name: "source", help: "Its .modelignore is applied when it is built." }),
    tarball: field("Archive", tarball, { name: "source" }),
    git: h("div", {}, field("Git URL", git), field("Ref", ref)),
  };
  const showSource = () => {
    const chosen = form.querySelector("input[name=kind]:checked")?.value;
    for (const [k, el] of Object.entries(sourceFields)) el.hidden = k !== chosen;
  };
  kindPick.addEventListener("change", showSource);

  // What it runs on.
  const count = h("select", { name: "gpu_count", id: "f-gpu_count" },
    ...[1, 2, 3, 4].map((n) => h("option", { value: n, selected: Number(d.gpu_count || 1) === n }, String(n))));
  const cards = h("div", { class: "cards", role: "radiogroup", "aria-label": "GPU type" });
  const drawCards = () => {
    const n = Number(count.value);
    const chosen = form.querySelector("input[name=gpu_type]:checked")?.value ?? d.gpu_type ?? "";
    const card = (value, title, lines, why) => h("div", { class: `card${why ? " impossible" : ""}`, "data-gpu": value || "cpu" },
      h("label", {}, h("input", { type: "radio", name: "gpu_type", value, disabled: !!why, checked: value === chosen && !why }),
        title), ...lines.map((l) => h("div", {}, l)), why ? h("div", { class: "reason" }, why) : null);
    const list = [card("", "CPU only", ["no GPU"], null)];
    for (const [type, t] of Object.entries(gpus.types)) {
      const most = maxNode(t);
      const why = n > most ? `needs ${n} on one node; its nodes have at most ${most}` : null;
      list.push(card(type, type, [`${t.free} free / ${t.total} total`, t.waiting ? `${t.waiting} waiting` : ""], why));
    }
    fill(cards, ...list);
    if (!cards.querySelector("input:checked")) cards.querySelector("input").checked = true;
  };
  count.addEventListener("change", drawCards);
  cards.addEventListener("change", drawCards);

  const instances = input("instances", { type: "number", min: 1, max: 32, value: 1 });
  const disk = input("disk_size", { placeholder: "e.g. 10g" });
  const quota = input("quota", { placeholder: "default" });
  const workers = input("workers", { type: "number", min: 1, max: 64 });

  // What it serves.
  const file = input("file", { placeholder: "predict.py" });
  const fn = input("function", { placeholder: "predict" });
  const routes = h("div", { id: "routes" });
  const routeList = d.routes ? structuredClone(d.routes) : [];
  const drawRoutes = () => {
    fill(routes, ...routeList.map((r, i) => {
      const at = `routes[${i}]`;
      const bind = (el, key, get = (e) => e.value) => {
        el.addEventListener("input", () => { r[key] = get(el); });
        el.addEventListener("change", () => { r[key] = get(el); });
        return el;
      };
      const verb = bind(h("select", { name: `${at}.verb` }, ...["POST", "GET", "PUT", "PATCH", "DELETE"].map(
        (v) => h("option", { selected: r.verb === v }, v))), "verb");
      const move = (delta) => () => {
        const [item] = routeList.splice(i, 1);
        routeList.splice(Math.max(0, Math.min(routeList.length, i + delta)), 0, item);
        drawRoutes();
      };
      return h("div", { class: "route-row", "data-route": i },
        field("Verb", verb, { name: `${at}.verb` }),
        field("Path", bind(h("input", { name: `${at}.path`, value: r.path, placeholder: "/predict" }), "path"), { name: `${at}.path` }),
        field("File", bind(h("input", { name: `${at}.file`, value: r.file, placeholder: "predict.py" }), "file"), { name: `${at}.file` }),
        field("Function", bind(h("input", { name: `${at}.function`, value: r.function }), "function"), { name: `${at}.function` }),
        field("Positional", bind(h("input", { type: "checkbox", name: `${at}.positional`, checked: r.positional }), "positional", (e) => e.checked)),
        field("Parameters", bind(h("input", { name: `${at}.parameters`, value: r.parameters, placeholder: "text:string, n:integer" }), "parameters"),
          { name: `${at}.parameters`, help: `name:type, ... (${TYPES.join(", ")})` }),
        h("div", { class: "actions" },
          h("button", { type: "button", class: "secondary", onclick: move(-1), disabled: i === 0, "aria-label": `Move route ${i + 1} up` }, "Up"),
          h("button", { type: "button", class: "secondary", onclick: move(1), disabled: i === routeList.length - 1, "aria-label": `Move route ${i + 1} down` }, "Down"),
          h("button", { type: "button", class: "secondary", "aria-label": `Remove route ${i + 1}`,
            onclick: () => { routeList.splice(i, 1); drawRoutes(); } }, "Remove")));
    }));
  };
  const addRoute = h("button", { type: "button", class: "secondary", id: "add-route" }, "Add a route");
  addRoute.addEventListener("click", () => {
    routeList.push({ verb: "POST", path: "", file: "", function: "", positional: false, parameters: "" });
    drawRoutes();
  });

  // How it is watched and reached.
  const health = ["initial_delay", "period", "timeout", "failure_threshold", "request_timeout"];
  const healthInputs = Object.fromEntries(health.map((k) => [k, input(k, { type: "number", min: 0, step: "any",
    placeholder: DEFAULTS[k] !== undefined ? String(DEFAULTS[k]) : "" })]));
  const rule = h("p", { class: "error", id: "health-rule", "aria-live": "polite" });
  const checkRule = () => {
    const get = (k) => num(healthInputs[k].value) ?? DEFAULTS[k];
    const window = get("period") * get("failure_threshold");
    rule.textContent = window > get("request_timeout") ? "" :
      `period x failure threshold (${window} s) must be greater than the request timeout (${get("request_timeout")} s)`;
    return !rule.textContent;
  };
  for (const el of Object.values(healthInputs)) el.addEventListener("input", checkRule);
  const routing = h("select", { name: "routing_mode", id: "f-routing_mode" },
    h("option", { value: "basic", selected: d.routing_mode !== "advanced" }, "basic: latest only"),
    h("option", { value: "advanced", selected: d.routing_mode === "advanced" }, "advanced: latest and prod"));
  const visibility = h("select", { name: "visibility", id: "f-visibility" },
    h("option", { value: "private", selected: d.visibility !== "public" }, "private: collaborators only"),
    h("option", { value: "public", selected: d.visibility === "public" }, "public: every signed-in user"));
  const restricted = h("input", { type: "checkbox", name: "restricted", id: "f-restricted", checked: d.restricted !== false });

  const general = h("p", { class: "error", role: "alert", id: "create-error" });
  add(form, 
    h("section", { class: "panel" }, h("h2", {}, "Name and source"),
      field("Name", name, { help: "lower-case letters, digits and -" }), kindPick, ...Object.values(sourceFields)),
    h("section", { class: "panel" }, h("h2", {}, "Compute"),
      field("GPUs per instance", count, { name: "gpu_count", help: "with a GPU type below: at most 4, on one node" }),
      h("div", { class: "field" }, h("span", { class: "help" }, "GPU type"), cards, h("p", { class: "error", "data-error-for": "gpu_type" })),
      h("div", { class: "grid" }, field("Instances", instances, { help: "1 to 32" }),
        field("Disk size", disk, { help: "It cannot be changed later." }), field("Quota", quota), field("Workers", workers))),
    h("section", { class: "panel" }, h("h2", {}, "What it serves"),
      h("p", { class: "help" }, "The Domino endpoint (/model) calls a file's function; routes are paths of their own."),
      h("div", { class: "grid" }, field("Entry file", file), field("Entry function", fn)), routes, addRoute),
    h("section", { class: "panel" }, h("h2", {}, "Health and access"),
      h("div", { class: "grid" }, ...health.map((k) => field(LABELS[k], healthInputs[k], { name: k }))), rule,
      h("div", { class: "grid" }, field("Routing mode", routing), field("Visibility", visibility),
        h("div", { class: "field" }, h("label", { for: "f-restricted" }, restricted, " Restricted: calls need an access token")))),
    general, h("button", { type: "submit", id: "review" }, "Review"));
  add(view, h("h1", {}, "New model API"), form);
  showSource();
  drawCards();
  drawRoutes();
  checkRule();
  if (draft?.errors) showErrors(form, draft.errors, general);

  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    const kindNow = form.querySelector("input[name=kind]:checked").value;
    const gpuType = form.querySelector("input[name=gpu_type]:checked").value;
    const values = {
      name: name.value.trim(), kind: kindNow, source_name: sourceName.value, git: git.value.trim(), ref: ref.value.trim(),
      gpu_type: gpuType, gpu_count: gpuType ? Number(count.value) : 0, instances: instances.value, disk_size: disk.value.trim(),
      quota: quota.value.trim(), workers: workers.value, file: file.value.trim(), function: fn.value.trim(),
      routes: routeList, routing_mode: routing.value, visibility: visibility.value, restricted: restricted.checked,
      ...Object.fromEntries(health.map((k) => [k, healthInputs[k].value])),
    };
    const problems = {};
    if (!NAME.test(values.name)) problems.name = "lower-case letters, digits and -, starting with a letter or digit";
    if (kindNow === "folder" && !folder.files.length) problems.source = "pick a folder";
    if (kindNow === "tarball" && !tarball.files.length) problems.source = "pick a .tar.gz or .zip file";
    if (kindNow === "source_name" && !values.source_name) problems.source_name = "there is no registered source";
    if (kindNow === "git" && !values.git) problems.git = "give the repository's URL";
    if (!values.file !== !values.function) problems[values.file ? "function" : "file"] = "give both the file and the function";
    if (!values.file && !routeList.length) problems.file = "give an entry file and function, or add a route";
    if (!checkRule()) problems.period = "period x failure threshold must be greater than the request timeout";
    const spec = toSpec(values);
    if (!spec.ok) Object.assign(problems, spec.problems);
    if (!showErrors(form, problems, general)) return;
    try {
      const plan = await api("POST", "/v1/plan", {
        gpu_type: spec.body.gpu_type, gpu_count: spec.body.gpu_count || 0, instances: spec.body.instances,
        quota: spec.body.quota, disk_size: spec.body.disk_size,
      });
      draft = { form: values, spec: spec.body, plan, gpus, upload: { folder: folder.files, tarball: tarball.files[0] } };
      location.hash = "#/new/review";
    } catch (err) {
      if (!(err instanceof ApiError)) throw err;
      showErrors(form, err.errors.length ? err.byField() : { body: err.message }, general);
    }
  });
  name.focus();
}

function toSpec(v) {
  const problems = {};
  const body = { name: v.name, instances: Number(v.instances || 1), access: v.restricted ? "restricted" : "unrestricted",
    routing_mode: v.routing_mode, visibility: v.visibility };
  if (v.kind === "source_name") body.source_name = v.source_name;
  if (v.kind === "git") {
    body.git = v.git;
    if (v.ref) body.ref = v.ref;
  }
  if (v.gpu_type) Object.assign(body, { gpu_type: v.gpu_type, gpu_count: v.gpu_count });
  for (const k of ["disk_size", "quota"]) if (v[k]) body[k] = v[k];
  for (const k of ["workers", "initial_delay", "period", "timeout", "failure_threshold", "request_timeout"]) {
    if (num(v[k]) !== undefined) body[k] = num(v[k]);
  }
  if (v.file) Object.assign(body, { file: v.file, function: v.function });
  body.routes = v.routes.map((r, i) => {
    const parameters = [];
    for (const part of (r.parameters || "").split(",").map((p) => p.trim()).filter(Boolean)) {
      const [pname, type = "string"] = part.split(":").map((p) => p.trim());
      if (!TYPES.includes(type)) problems[`routes[${i}].parameters`] = `${type} is not one of ${TYPES.join(", ")}`;
      parameters.push({ name: pname, type });
    }
    if (!r.path || !r.path.startsWith("/")) problems[`routes[${i}].path`] = "must start with /";
    if (!r.file) problems[`routes[${i}].file`] = "is required";
    if (!r.function) problems[`routes[${i}].function`] = "is required";
    return { verb: r.verb, path: r.path, file: r.file, function: r.function, positional: !!r.positional, parameters };
  });
  return { ok: Object.keys(problems).length === 0, problems, body };
}

function planText(plan, gpus) {
  if (plan.decision === "start") return `It will start now. ${plan.reason}`;
  if (plan.decision === "wait") {
    const t = gpus.types[plan.gpu_type];
    const used = t ? `${t.total - t.free} of ${t.total} ${plan.gpu_type} GPUs are in use. ` : "";
    return `It will wait for GPUs: ${used}Its place in line: ${plan.position ?? plan.ahead + 1}. ${plan.reason}`;
  }
  return `It can never start: ${plan.reason}`;
}

async function review(view, ctx) {
  if (!draft) {
    location.hash = "#/new";
    return;
  }
  const { spec, plan, gpus } = draft;
  const rows = Object.entries(spec).filter(([k, v]) => k !== "routes" || v.length)
    .map(([k, v]) => [h("dt", {}, k), h("dd", {}, typeof v === "object" ? JSON.stringify(v) : String(v))]);
  if (draft.form.kind === "folder") rows.push([h("dt", {}, "source"), h("dd", {}, `a folder of ${draft.upload.folder.length} files`)]);
  if (draft.form.kind === "tarball") rows.push([h("dt", {}, "source"), h("dd", {}, draft.upload.tarball.name)]);
  const general = h("p", { class: "error", role: "alert", id: "confirm-error" });
  const confirm = h("button", { type: "button", id: "confirm", disabled: plan.decision === "impossible" }, "Confirm");
  const back = h("button", { type: "button", class: "secondary", id: "back" }, "Back to the form");
  back.addEventListener("click", () => {
    draft.errors = null;
    location.hash = "#/new";
  });
  confirm.addEventListener("click", async () => {
    confirm.disabled = true;
    general.textContent = "";
    try {
      const body = { ...spec };
      if (draft.form.kind === "folder" || draft.form.kind === "tarball") {
        const blob = draft.form.kind === "folder"
          ? await folderTarball(draft.upload.folder) : await archiveTarball(draft.upload.tarball);
        body.source = (await api("POST", "/v1/sources", undefined, blob)).digest;
      }
      const made = await api("POST", "/v1/models", body);
      draft = null;
      location.hash = `#/m/${encodeURIComponent(made.name)}`;
    } catch (err) {
      if (!(err instanceof ApiError)) throw err;
      // Back to the form, each error next to its field.
      draft.errors = err.errors.length ? err.byField() : { body: err.message };
      location.hash = "#/new";
    }
  });
  add(view, h("h1", {}, `Review ${spec.name}`),
    h("section", { class: "panel" }, h("h2", {}, "Placement"),
      h("p", { id: "plan", "data-decision": plan.decision, class: plan.decision === "impossible" ? "error" : "notice" },
        planText(plan, gpus)), plan.simulated ? h("p", { class: "help" }, "GPUs are simulated on this platform.") : null),
    h("section", { class: "panel" }, h("h2", {}, "Spec"), h("dl", { class: "spec", id: "spec" }, ...rows.flat())),
    general, h("div", { class: "actions" }, confirm, back));
  confirm.focus();
}
