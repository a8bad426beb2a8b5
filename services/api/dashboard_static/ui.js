// A few helpers to build the page from data: text is always set as text, never parsed as HTML.

export function h(tag, attrs = {}, ...children) {
  const el = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs || {})) {
    if (value === undefined || value === null || value === false) continue;
    if (name.startsWith("on")) el.addEventListener(name.slice(2), value);
    else if (name === "class") el.className = value;
    else if (name === "value") el.value = value;
    else if (name === "checked") el.checked = true;
    else el.setAttribute(name, value === true ? "" : value);
  }
  append(el, children);
  return el;
}

// el's children become `children`; null, undefined and false are left out (DOM methods would write "null").
export function fill(el, ...children) {
  el.replaceChildren();
  append(el, children);
  return el;
}

export function add(el, ...children) {
  append(el, children);
  return el;
}

function append(el, children) {
  for (const child of children.flat()) {
    if (child === undefined || child === null || child === false) continue;
    el.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
}

let ids = 0;
// A labelled control with its help text and the place its error is shown (data-error-for).
export function field(label, control, { help, name } = {}) {
  if (!control.id) control.id = `f${++ids}`;
  const error = h("p", { class: "error", "data-error-for": name || control.name || "", id: `${control.id}-error` });
  const helpEl = help ? h("p", { class: "help", id: `${control.id}-help` }, help) : null;
  control.setAttribute("aria-describedby", [helpEl && helpEl.id, error.id].filter(Boolean).join(" "));
  return h("div", { class: "field" }, h("label", { for: control.id }, label), helpEl, control, error);
}

// Put each error of an ApiError (or a {field: problem} map) next to its field; the rest in `general`.
export function showErrors(root, problems, general) {
  for (const el of root.querySelectorAll("[data-error-for]")) el.textContent = "";
  const left = [];
  for (const [name, problem] of Object.entries(problems)) {
    const place = root.querySelector(`[data-error-for="${CSS.escape(name)}"]`);
    if (place) place.textContent = `${name}: ${problem}`;
    else left.push(`${name}: ${problem}`);
  }
  if (general) general.textContent = left.join("; ");
  const first = root.querySelector(".error:not(:empty)");
  if (first) first.scrollIntoView({ block: "center" });
  return Object.keys(problems).length === 0;
}

export function stateBadge(state, reason) {
  return h("span", {}, h("span", { class: `state state-${state}`, "data-state": state }, state),
    reason ? h("span", { class: "reason" }, ` ${reason}`) : null);
}

export function copyButton(text, label = "Copy") {
  const button = h("button", { type: "button", class: "secondary", "aria-label": label }, "Copy");
  button.addEventListener("click", async () => {
    await navigator.clipboard.writeText(typeof text === "function" ? text() : text).catch(() => {});
    button.textContent = "Copied";
  });
  return button;
}

export function alertBox(text) {
  return h("p", { class: "error", role: "alert" }, text);
}
