// One model API: its state (live), versions and Promote, Connect, settings, tokens, collaborators,
// usage, audit history, and Stop / Restart / Terminate as its state and the caller's role allow.
import { api, ApiError, follow } from "./api.js";
import { keepToken, may } from "./roles.js";
import { snippets } from "./snippets.js";
import { add, copyButton, field, fill, h, showErrors, stateBadge } from "./ui.js";
import { readyCount } from "./models.js";
import { archiveTarball } from "./tarball.js";

const STOPPABLE = ["building", "waiting", "starting", "running"];
const RESTARTABLE = ["starting", "running", "stopped"];

function capital(text) {
  return text.charAt(0).toUpperCase() + text.slice(1);
}

// What an audit event changed, in a line: each field's before -> after (long values cut).
function change(e) {
  const cut = (v) => {
    const text = JSON.stringify(v);
    return text && text.length > 40 ? `${text.slice(0, 37)}...` : text;
  };
  if (e.action === "model.create") return "created";
  const keys = Object.keys(e.after).length ? Object.keys(e.after) : Object.keys(e.fields);
  return keys.map((k) => (k in e.after ? `${k}: ${cut(e.before[k])} -> ${cut(e.after[k])}` : `${k}: ${cut(e.fields[k])}`))
    .join("; ");
}

function when(iso) {
  return iso ? new Date(iso).toLocaleString() : "";
}

function sourceOf(v) {
  if (v.git) return `${v.git} at ${v.commit ? v.commit.slice(0, 12) : v.ref || "default branch"}`;
  if (v.source_name) return `${v.source_name} (${v.source.slice(0, 12)})`;
  return v.source ? `upload ${v.source.slice(0, 12)}` : "";
}

export async function render(view, ctx) {
  const ref = ctx.params[0];
  const path = `/v1/models/${encodeURIComponent(ref)}`;
  let model = await api("GET", path);
  const role = model.role;
  const editor = may(role, "editor"), owner = may(role, "owner");
  const say = h("p", { role: "status", "aria-live": "polite", id: "said" });
  const fail = h("p", { class: "error", role: "alert", id: "detail-error" });
  const act = (fn) => async (event) => {
    fail.textContent = "";
    try {
      await fn(event);
    } catch (err) {
      if (!(err instanceof ApiError)) throw err;
      fail.textContent = err.message;
    }
  };

  const head = h("div", {});
  const controls = h("div", { class: "actions", id: "controls" });
  const versions = h("section", { class: "panel", id: "versions" });
  const connect = h("section", { class: "panel", id: "connect" });
  const drawHead = () => {
    fill(head, h("h1", {}, model.name), h("p", { id: "model-state" }, stateBadge(model.state, model.reason),
      model.state === "waiting" && model.queue_position ? h("span", { id: "model-place" }, ` #${model.queue_position} in line`) : ""),
      h("p", {}, `${readyCount(model)} / ${model.instances} instances ready; ` +
        `${model.gpu_count ? `${model.gpu_type} x ${model.gpu_count}` : "CPU"}; owner ${model.owner}; ${model.visibility};` +
        ` ${model.access}; routing ${model.routing_mode}; your role: ${role}`));
    const links = [h("a", { href: `#/m/${encodeURIComponent(model.name)}/logs` }, "Logs"),
      h("a", { href: `#/m/${encodeURIComponent(model.name)}/test` }, "Tester")];
    const buttons = [];
    if (editor) {
      buttons.push(h("button", { type: "button", id: "stop", class: "secondary", disabled: !STOPPABLE.includes(model.state),
        onclick: act(async () => { await api("POST", `${path}/stop`); say.textContent = "Stopping."; }) }, "Stop"));
      buttons.push(h("button", { type: "button", id: "restart", class: "secondary", disabled: !RESTARTABLE.includes(model.state),
        onclick: act(async () => { await api("POST", `${path}/restart`); say.textContent = "Restarting."; }) }, "Restart"));
    }
    if (owner) buttons.push(h("button", { type: "button", id: "terminate", class: "danger", onclick: terminate }, "Terminate"));
    fill(controls, ...links, ...buttons);
  };

  const terminate = () => {
    const typed = h("input", { id: "terminate-name", autocomplete: "off" });
    const go = h("button", { type: "submit", class: "danger", id: "terminate-confirm", disabled: true }, "Terminate for good");
    typed.addEventListener("input", () => { go.disabled = typed.value !== model.name; });
    const box = h("form", { class: "panel", id: "terminate-form" },
      field(`Type ${model.name} to terminate it: its environment and data are purged`, typed), go);
    box.addEventListener("submit", act(async (event) => {
      event.preventDefault();
      await api("DELETE", path);
      location.hash = "#/models";
    }));
    controls.after(box);
    typed.focus();
  };

  let labels = [];
  const drawVersions = () => {
    const prod = labels.find((l) => l.label === "prod")?.version;
    fill(versions, h("h2", {}, "Versions"), h("div", { class: "table-wrap" }, h("table", { "aria-label": "Versions" },
      h("thead", {}, h("tr", {}, ...["#", "State", "Source", "Created", "Labels", ""].map((t) => h("th", { scope: "col" }, t)))),
      h("tbody", {}, ...model.versions.map((v) => h("tr", { "data-version": v.number },
        h("td", {}, `v${v.number}`), h("td", {}, stateBadge(v.state, v.reason)), h("td", {}, sourceOf(v)),
        h("td", {}, `${when(v.created_at)} by ${v.created_by}`),
        h("td", { "data-labels": "" }, [v.number === model.latest ? "latest" : "", v.number === prod ? "prod" : ""].filter(Boolean).join(", ")),
        h("td", {}, editor && model.routing_mode === "advanced" && v.number !== prod ? h("button", {
          type: "button", class: "secondary", "aria-label": `Promote version ${v.number} to prod`, "data-promote": v.number,
          onclick: act(async () => {
            await api("PUT", `${path}/labels/prod`, { version: v.number });
            labels = await api("GET", `${path}/labels`);
            say.textContent = `Version ${v.number} is prod.`;
            drawVersions();
          }) }, "Promote") : null)))))),
      editor ? deployForm() : null);
  };

  const deployForm = () => {
    const latest = model.versions[0];
    const kind = h("select", { id: "deploy-kind", name: "kind" }, h("option", { value: "source_name" }, "a registered source"),
      h("option", { value: "git" }, "a git repository"), h("option", { value: "tarball" }, "an upload (.tar.gz or .zip)"));
    const where = h("input", { id: "deploy-where", name: "source_name", placeholder: "source name or git URL" });
    const file = h("input", { id: "deploy-tarball", type: "file", accept: ".tar.gz,.tgz,.zip,application/gzip,application/zip" });
    const problem = h("p", { class: "error", role: "alert" });
    const form = h("form", { id: "deploy-form" }, h("h3", {}, "Deploy a new version"),
      h("p", { class: "help" }, "Same entry point and routes as the latest version."),
      field("From", kind), field("Source name or git URL", where, { name: "source_name" }), field("Or an archive", file, { name: "source" }),
      problem, h("button", { type: "submit", id: "deploy" }, "Deploy"));
    form.addEventListener("submit", act(async (event) => {
      event.preventDefault();
      const body = { ...(latest ? latest.entrypoint : {}) };
      if (kind.value === "git") body.git = where.value.trim();
      else if (kind.value === "tarball") {
        body.source = (await api("POST", "/v1/sources", undefined, await archiveTarball(file.files[0]))).digest;
      }
      else body.source_name = where.value.trim();
      try {
        const made = await api("POST", `${path}/versions`, body);
        say.textContent = `Version ${made.number} is building.`;
        form.reset();
      } catch (err) {
        if (!(err instanceof ApiError)) throw err;
        showErrors(form, err.byField(), problem);
        if (!err.errors.length) problem.textContent = err.message;
      }
    }));
    return form;
  };

  const drawConnect = () => {
    const latest = model.versions.find((v) => v.number === model.latest) || model.versions[0];
    fill(connect, h("h2", {}, "Connect"), h("p", {}, "Gateway URL: ", h("code", { id: "gateway-url" }, model.url)),
      model.access === "restricted" ? h("p", { class: "help" }, "Replace $PIER_TOKEN with one of its access tokens.") : null,
      ...snippets(model, latest?.entrypoint).map(([title, text]) => h("div", {}, h("h3", {}, title),
        h("pre", {}, text), copyButton(text, `Copy: ${title}`))));
  };

  add(view, head, controls, say, fail, versions, connect);
  drawHead();
  if (may(role, "viewer")) labels = await api("GET", `${path}/labels`);
  drawVersions();
  drawConnect();
  if (editor) add(view, await settingsPanel(path, model, owner, act), await tokensPanel(path, model, owner, act, say));
  add(view, await collaboratorsPanel(path, owner, act), await usagePanel(path));
  if (editor) add(view, await historyPanel(model));

  // Live: each change of this model API redraws its state, versions and controls.
  follow("/v1/models?follow=true", (kind, data) => {
    if (kind === "removed" && data.id === model.id) location.hash = "#/models";
    if (kind !== "model" || data.id !== model.id) return;
    const before = JSON.stringify([model.versions, model.latest, model.routing_mode]);
    const stateBefore = model.state;
    model = data;
    drawHead();
    if (model.state !== stateBefore) {
      // Instances start or stop with the state: the usage counts them.
      usagePanel(path).then((panel) => view.querySelector("#usage")?.replaceWith(panel)).catch(() => {});
    }
    if (JSON.stringify([model.versions, model.latest, model.routing_mode]) !== before) {
      api("GET", `${path}/labels`).then((l) => { labels = l; drawVersions(); drawConnect(); }).catch(() => {});
    }
  }, ctx.signal).catch(() => {});
}

async function settingsPanel(path, model, owner, act) {
  const now = await api("GET", `${path}/settings`);
  const inputs = {};
  const num = (k, value) => (inputs[k] = h("input", { type: "number", step: "any", name: k, id: `s-${k}`, value }));
  const choice = (k, options, value) => (inputs[k] = h("select", { name: k, id: `s-${k}` },
    ...options.map((o) => h("option", { value: o, selected: o === value }, o))));
  const problem = h("p", { class: "error", role: "alert" });
  const form = h("form", { id: "settings-form" }, h("h2", {}, "Settings"),
    h("div", { class: "grid" },
      field("Request timeout (s)", num("request_timeout", now.request_timeout)),
      ...Object.entries(now.health).map(([k, v]) => field(capital(k.replace(/_/g, " ")), num(k, v))),
      field("Access", choice("access", ["restricted", "unrestricted"], model.access)),
      field("Routing mode", choice("routing_mode", ["basic", "advanced"], model.routing_mode)),
      owner ? field("Visibility", choice("visibility", ["private", "public"], now.visibility)) : null),
    problem, h("button", { type: "submit", id: "save-settings" }, "Save settings"));
  form.addEventListener("submit", act(async (event) => {
    event.preventDefault();
    const change = {};
    for (const [k, el] of Object.entries(inputs)) {
      const before = k in now.health ? now.health[k] : k === "request_timeout" ? now.request_timeout : k === "visibility" ? now.visibility : model[k];
      const value = el.type === "number" ? Number(el.value) : el.value;
      if (value !== before) change[k] = value;
    }
    try {
      await api("PATCH", path, change);
      problem.textContent = "Saved.";
      Object.assign(now, await api("GET", `${path}/settings`));
    } catch (err) {
      if (!(err instanceof ApiError)) throw err;
      showErrors(form, err.byField(), problem);
      if (!err.errors.length) problem.textContent = err.message;
    }
  }));
  return h("section", { class: "panel" }, form);
}

async function tokensPanel(path, model, owner, act, say) {
  const section = h("section", { class: "panel", id: "tokens" });
  const draw = async () => {
    const tokens = await api("GET", `${path}/tokens`);
    const name = h("input", { name: "name", id: "token-name", autocomplete: "off", required: true });
    const form = h("form", { id: "token-form", class: "actions" }, field("New token's name", name),
      h("button", { type: "submit", id: "create-token" }, "Create token"));
    const shown = h("div", { id: "token-secret" });
    form.addEventListener("submit", act(async (event) => {
      event.preventDefault();
      const made = await api("POST", `${path}/tokens`, { name: name.value.trim() });
      keepToken(model.id, made.name, made.token);
      await draw();
      fill(section.querySelector("#token-secret"), h("div", { class: "secret", role: "status" },
        h("p", {}, `Token ${made.name}: copy it now, it is not shown again.`), h("code", { id: "new-token" }, made.token), " ",
        copyButton(made.token, "Copy the token")));
    }));
    fill(section, h("h2", {}, "Access tokens"), h("div", { class: "table-wrap" }, h("table", { "aria-label": "Access tokens" },
      h("thead", {}, h("tr", {}, ...["Name", "Created", "Last used", "State", ""].map((t) => h("th", { scope: "col" }, t)))),
      h("tbody", {}, ...tokens.map((t) => h("tr", { "data-token": t.name },
        h("td", {}, t.name), h("td", {}, `${when(t.created)} by ${t.creator}`), h("td", {}, when(t.last_used) || "never"),
        h("td", { "data-token-state": "" }, t.revoked ? "revoked" : "active"),
        h("td", {}, owner && !t.revoked ? h("button", { type: "button", class: "danger", "aria-label": `Revoke token ${t.name}`,
          onclick: act(async () => { await api("DELETE", `${path}/tokens/${t.id}`); say.textContent = `Token ${t.name} revoked.`; await draw(); }) },
        "Revoke") : null)))))), form, shown);
  };
  await draw();
  return section;
}

async function collaboratorsPanel(path, owner, act) {
  const section = h("section", { class: "panel", id: "collaborators" });
  const draw = async () => {
    const list = await api("GET", `${path}/collaborators`);
    const rows = list.map((c) => h("tr", {}, h("td", {}, c.principal), h("td", {}, c.role),
      h("td", {}, owner ? h("button", { type: "button", class: "secondary", "aria-label": `Remove ${c.principal}`,
        onclick: act(async () => { await api("DELETE", `${path}/collaborators/${encodeURIComponent(c.principal)}`); await draw(); }) },
      "Remove") : null)));
    let form = null;
    if (owner) {
      const who = h("input", { name: "principal", id: "collaborator", placeholder: "user or org:NAME" });
      const role = h("select", { name: "role", id: "collaborator-role" }, h("option", {}, "viewer"), h("option", {}, "editor"));
      form = h("form", { class: "actions", id: "share-form" }, field("User or organization", who), field("Role", role),
        h("button", { type: "submit" }, "Share"));
      form.addEventListener("submit", act(async (event) => {
        event.preventDefault();
        await api("PUT", `${path}/collaborators/${encodeURIComponent(who.value.trim())}`, { role: role.value });
        await draw();
      }));
    }
    fill(section, h("h2", {}, "Collaborators"), list.length ? h("table", { "aria-label": "Collaborators" },
      h("tbody", {}, ...rows)) : h("p", {}, "Not shared."), form);
  };
  await draw();
  return section;
}

async function usagePanel(path) {
  const u = await api("GET", `${path}/usage`);
  return h("section", { class: "panel", id: "usage" }, h("h2", {}, "Usage"),
    h("p", {}, `${u.gpu_seconds.toFixed(0)} GPU-seconds, ${u.instance_seconds.toFixed(0)} instance-seconds; ` +
      `${u.running_instances} running now.`));
}

async function historyPanel(model) {
  const page = await api("GET", `/v1/events?model=${encodeURIComponent(model.id)}&limit=50`);
  return h("section", { class: "panel", id: "history" }, h("h2", {}, "Audit history"),
    h("div", { class: "table-wrap" }, h("table", { "aria-label": "Audit history" },
      h("thead", {}, h("tr", {}, ...["When", "Who", "What", "Change"].map((t) => h("th", { scope: "col" }, t)))),
      h("tbody", {}, ...page.events.map((e) => h("tr", {}, h("td", {}, new Date(e.at * 1000).toLocaleString()),
        h("td", {}, e.actor), h("td", {}, e.action),
        h("td", {}, change(e))))))));
}
