// The dashboard's router: a hash route per page, each page a module with `render(view, ctx)`.
import { api, ApiError, signOut } from "./api.js";
import { add, fill, h } from "./ui.js";
import * as signin from "./signin.js";
import * as models from "./models.js";
import * as create from "./create.js";
import * as detail from "./detail.js";
import * as logs from "./logs.js";
import * as tester from "./tester.js";
import * as gpus from "./gpus.js";

const ROUTES = [
  [/^#\/signin$/, signin],
  [/^#\/(models)?$/, models],
  [/^#\/new(\/review)?$/, create],
  [/^#\/m\/([^/]+)$/, detail],
  [/^#\/m\/([^/]+)\/logs$/, logs],
  [/^#\/m\/([^/]+)\/test$/, tester],
  [/^#\/gpus$/, gpus],
];

const state = { me: null, page: null };

async function whoAmI() {
  try {
    state.me = await api("GET", "/v1/me");
  } catch (err) {
    if (!(err instanceof ApiError) || err.status !== 401) throw err;
    state.me = null;
  }
  showMe();
}

function showMe() {
  const box = document.getElementById("me");
  fill(box);
  document.getElementById("nav").hidden = !state.me;
  if (!state.me) return;
  const out = h("button", { type: "button", class: "secondary", id: "sign-out" }, "Sign out");
  out.addEventListener("click", async () => {
    await signOut();
    state.me = null;
    showMe();
    location.hash = "#/signin";
  });
  add(box, h("span", { id: "whoami" }, `Signed in as ${state.me.name}${state.me.admin ? " (admin)" : ""}`), out);
}

async function route() {
  if (state.page) state.page.abort();
  const page = new AbortController();
  state.page = page;
  const hash = location.hash || "#/models";
  const view = document.getElementById("view");
  if (state.me === null && hash !== "#/signin") {
    await whoAmI();
    if (state.me === null) {
      location.hash = "#/signin";
      return;
    }
  }
  for (const [pattern, module] of ROUTES) {
    const match = hash.match(pattern);
    if (!match) continue;
    // Each page draws into a box of its own: a page left while it still loads writes only into
    // its box, which is no longer on the screen.
    const box = h("div", {});
    fill(view, box);
    // Keyboard and screen reader users start on the new page, not on the link they followed
    // (a page with a first field to fill focuses it instead).
    view.focus();
    const ctx = {
      me: state.me,
      signal: page.signal,
      params: match.slice(1).map((p) => (p ? decodeURIComponent(p) : p)),
      signedIn: async () => {
        await whoAmI();
        location.hash = "#/models";
      },
    };
    try {
      await module.render(box, ctx);
    } catch (err) {
      if (page.signal.aborted) return;
      if (err instanceof ApiError && err.status === 401) {
        state.me = null;
        showMe();
        location.hash = "#/signin";
        return;
      }
      add(box, h("p", { class: "error", role: "alert" }, err.message || String(err)));
    }
    return;
  }
  fill(view, h("h1", {}, "Not found"), h("p", {}, h("a", { href: "#/models" }, "Back to the model APIs")));
}

window.addEventListener("hashchange", route);
route();
