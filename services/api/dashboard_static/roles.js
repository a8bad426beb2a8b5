// The caller's role on a model API, as services/api/access.py decides it, so a page offers only
// what the role may do (the api still checks every call).
import { api } from "./api.js";

export const RANK = { viewer: 1, editor: 2, owner: 3, admin: 4 };

export async function roleOn(model, me) {
  if (me.admin) return "admin";
  if (model.owner === me.name) return "owner";
  const mine = new Set([me.name, ...(me.orgs || []).map((o) => `org:${o}`)]);
  const shared = (await api("GET", `/v1/models/${encodeURIComponent(model.name)}/collaborators`))
    .filter((c) => mine.has(c.principal)).map((c) => c.role);
  return shared.includes("editor") ? "editor" : "viewer";
}

export function may(role, needed) {
  return RANK[role] >= RANK[needed];
}

// Tokens created in this tab, for the tester (a secret is shown once by the api, so only here).
export function keptTokens(modelId) {
  return JSON.parse(sessionStorage.getItem(`pier.tokens.${modelId}`) || "[]");
}

export function keepToken(modelId, name, secret) {
  const kept = keptTokens(modelId).filter((t) => t.name !== name);
  kept.push({ name, secret });
  sessionStorage.setItem(`pier.tokens.${modelId}`, JSON.stringify(kept));
}
