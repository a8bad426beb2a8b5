// Sign in with a name and password (a session cookie), or with an API key kept in this tab only.
import { signIn, useKey } from "./api.js";
import { add, field, h } from "./ui.js";

export async function render(view, ctx) {
  const name = h("input", { name: "name", autocomplete: "username", required: true });
  const password = h("input", { name: "password", type: "password", autocomplete: "current-password", required: true });
  const problem = h("p", { class: "error", role: "alert", id: "signin-error" });
  const form = h("form", { "aria-labelledby": "signin-title" },
    field("Name", name), field("Password", password), problem, h("button", { type: "submit" }, "Sign in"));
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    problem.textContent = "";
    try {
      await signIn(name.value.trim(), password.value);
      await ctx.signedIn();
    } catch (err) {
      problem.textContent = err.retryAfter ? `${err.message} (wait ${err.retryAfter} s)` : err.message;
    }
  });
  const key = h("input", { name: "key", type: "password", autocomplete: "off", required: true });
  const keyProblem = h("p", { class: "error", role: "alert", id: "key-error" });
  const keyForm = h("form", { "aria-labelledby": "key-title" },
    field("API key", key, { help: "Kept in this browser tab only, and sent as a Bearer token." }),
    keyProblem, h("button", { type: "submit", class: "secondary" }, "Sign in with the key"));
  keyForm.addEventListener("submit", async (event) => {
    event.preventDefault();
    keyProblem.textContent = "";
    try {
      await useKey(key.value.trim());
      await ctx.signedIn();
    } catch (err) {
      keyProblem.textContent = err.message;
    }
  });
  add(view, 
    h("h1", { id: "signin-title" }, "Sign in to Pier"),
    h("section", { class: "panel" }, form),
    h("h2", { id: "key-title" }, "Or paste an API key"),
    h("section", { class: "panel" }, keyForm),
  );
  name.focus();
}
