// What a page offers follows the caller's role on a model API, which the api answers with the
// model API itself (GET /v1/models/{ref}: `role`); the api still checks every call.
const RANK = { viewer: 1, editor: 2, owner: 3, admin: 4 };

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
