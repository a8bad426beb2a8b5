// How to call a model API: curl for each route and for both Domino formats, and the Python client.
export function gatewayOf(model) {
  return model.url.replace(/\/models\/.*$/, "");
}

export function example(param) {
  return { string: "text", integer: 1, number: 1.5, boolean: true, object: {}, array: [] }[param.type] ?? "text";
}

export function routeBody(route) {
  if (route.positional) return route.parameters.map(example);
  return Object.fromEntries((route.parameters || []).map((p) => [p.name, example(p)]));
}

export function snippets(model, entrypoint) {
  const base = `${gatewayOf(model)}/models/${model.name}/latest`;
  const auth = model.access === "restricted" ? ` \\\n  -H "Authorization: Bearer $PIER_TOKEN"` : "";
  const curl = (verb, path, body) => `curl -X ${verb} ${base}${path}${auth}` +
    (body === undefined ? "" : ` \\\n  -H "Content-Type: application/json" \\\n  -d '${JSON.stringify(body)}'`);
  const out = [];
  if (entrypoint?.file && entrypoint?.function) {
    out.push(["Domino format, named data", curl("POST", "/model", { data: { x: 1 } })]);
    out.push(["Domino format, positional parameters", curl("POST", "/model", { parameters: [1] })]);
  }
  for (const r of entrypoint?.routes || []) {
    const verb = r.verb || "POST";
    out.push([`${verb} ${r.path}`, curl(verb, r.path, verb === "GET" ? undefined : routeBody(r))]);
  }
  out.push(["Health", curl("GET", "/ping")]);
  const token = model.access === "restricted" ? ', token="<token>"' : "";
  out.push(["Python", `from pier.client import Client\n\nclient = Client(gateway_url="${gatewayOf(model)}"${token})\n` +
    `print(client.predict("${model.name}", data={"x": 1}))`]);
  return out;
}
