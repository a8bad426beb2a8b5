// Every read and write of the dashboard goes through here, to the public /v1 API of the same origin.
// Signed in by password: the session cookie (sent by the browser) and, on changes, the CSRF token
// (kept in localStorage, which only this origin can read, so that every tab of the session has it).
// Signed in by pasting an API key: the key, kept in this tab's sessionStorage, as a Bearer token.
const KEY = "pier.key";
const CSRF = "pier.csrf";

export class ApiError extends Error {
  constructor(status, body, headers) {
    const detail = (body && body.detail) || (typeof body === "string" && body) || `HTTP ${status}`;
    super(detail);
    this.status = status;
    this.detail = detail;
    this.errors = (body && body.errors) || [];
    this.retryAfter = headers ? headers.get("Retry-After") : null;
  }
  // field -> problem, for showing each error next to its field.
  byField() {
    const found = {};
    for (const e of this.errors) found[e.field] = found[e.field] ? `${found[e.field]}; ${e.problem}` : e.problem;
    return found;
  }
}

function headers(method, json) {
  const out = {};
  if (json) out["Content-Type"] = "application/json";
  const key = sessionStorage.getItem(KEY);
  if (key) out.Authorization = `Bearer ${key}`;
  else if (method !== "GET" && localStorage.getItem(CSRF)) out["X-CSRF-Token"] = localStorage.getItem(CSRF);
  return out;
}

export async function api(method, path, body, raw) {
  const init = { method, credentials: "same-origin", headers: headers(method, body !== undefined && !raw) };
  if (raw) {
    init.body = raw;
    init.headers["Content-Type"] = "application/gzip";
  } else if (body !== undefined) init.body = JSON.stringify(body);
  const answer = await fetch(path, init);
  const text = await answer.text();
  const type = answer.headers.get("Content-Type") || "";
  const data = text && type.includes("json") ? JSON.parse(text) : text;
  if (!answer.ok) throw new ApiError(answer.status, data, answer.headers);
  return data;
}

export async function signIn(name, password) {
  sessionStorage.removeItem(KEY);
  const session = await api("POST", "/v1/session", { name, password });
  localStorage.setItem(CSRF, session.csrf_token);
  return session;
}

export async function useKey(key) {
  sessionStorage.setItem(KEY, key);
  try {
    return await api("GET", "/v1/me");
  } catch (err) {
    sessionStorage.removeItem(KEY);
    throw err;
  }
}

export function signedInByKey() {
  return sessionStorage.getItem(KEY);
}

export async function signOut() {
  if (!sessionStorage.getItem(KEY)) {
    try {
      await api("DELETE", "/v1/session");
    } catch (err) {
      if (err.status !== 401) throw err;
    }
  }
  sessionStorage.removeItem(KEY);
  localStorage.removeItem(CSRF);
}

// Server-sent events read with fetch (an EventSource cannot send the Authorization header).
// Calls onEvent(kind, data, id) per event, and onOpen() at each (re)connection; reconnects after a
// drop until `signal` aborts.
export async function follow(path, onEvent, signal, onOpen) {
  while (!signal.aborted) {
    try {
      const answer = await fetch(path, { headers: headers("GET", false), credentials: "same-origin", signal });
      if (!answer.ok) throw new ApiError(answer.status, await answer.text());
      if (onOpen) onOpen();
      const reader = answer.body.pipeThrough(new TextDecoderStream()).getReader();
      let buffer = "";
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        buffer += value;
        let end;
        while ((end = buffer.indexOf("\n\n")) >= 0) {
          const frame = buffer.slice(0, end);
          buffer = buffer.slice(end + 2);
          let kind = "message", data = "", id = null;
          for (const line of frame.split("\n")) {
            if (line.startsWith("event: ")) kind = line.slice(7);
            else if (line.startsWith("data: ")) data += line.slice(6);
            else if (line.startsWith("id: ")) id = line.slice(4);
          }
          if (data) onEvent(kind, JSON.parse(data), id);
        }
      }
    } catch (err) {
      if (signal.aborted) return;
      if (err instanceof ApiError && (err.status === 401 || err.status === 403 || err.status === 404)) throw err;
    }
    await new Promise((resolve) => setTimeout(resolve, 1000));
  }
}
