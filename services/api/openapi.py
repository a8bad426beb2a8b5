"""The OpenAPI document: every route the app serves, read from its router, so it cannot drift from
the code; request and response schemas come from the Structs for the routes that declare them."""

from __future__ import annotations

import inspect
from typing import Any

import msgspec
from aiohttp import web

from services.api import policy
from services.api.audit import EventPage
from services.api.schemas import CreateModel, CreateVersion, ModelOut, SourceOut, VersionOut
from services.api.tester import TryAnswer, TryCall

# (method, path) -> (request schema, response schema, success status) where a Struct describes them.
_SCHEMAS: dict[tuple[str, str], tuple[str | None, str | None, int]] = {
    ("POST", "/v1/models"): ("CreateModel", "ModelOut", 201),
    ("GET", "/v1/models/{ref}"): (None, "ModelOut", 200),
    ("POST", "/v1/models/{ref}/versions"): ("CreateVersion", None, 201),
    ("GET", "/v1/models/{ref}/versions"): (None, "VersionOut", 200),
    ("POST", "/v1/sources"): (None, "SourceOut", 201),
    ("GET", "/v1/events"): (None, "EventPage", 200),
    ("POST", "/v1/models/{ref}/try"): ("TryCall", "TryAnswer", 200),
}
_COMPONENTS = [CreateModel, CreateVersion, ModelOut, SourceOut, VersionOut, EventPage, TryCall, TryAnswer]


def _ref(name: str) -> dict[str, Any]:
    return {"content": {"application/json": {"schema": {"$ref": f"#/components/schemas/{name}"}}}}


def _summary(handler: Any) -> str:
    doc = inspect.getdoc(handler)
    if doc:
        return doc.splitlines()[0]
    return str(getattr(handler, "__name__", "")).replace("_", " ").strip().capitalize()


def document(router: web.UrlDispatcher) -> dict[str, Any]:
    _, components = msgspec.json.schema_components(_COMPONENTS, ref_template="#/components/schemas/{name}")
    paths: dict[str, dict[str, Any]] = {}
    for route in router.routes():
        path = route.resource.canonical if route.resource else ""
        if route.method == "HEAD" or not (path.startswith("/v1/") or path == "/metrics"):
            continue
        request, response, status = _SCHEMAS.get((route.method, path), (None, None, 200))
        op: dict[str, Any] = {"summary": _summary(route.handler), "responses": {str(status): {"description": "OK"}}}
        if request:
            op["requestBody"] = _ref(request)
        if response:
            op["responses"][str(status)].update(_ref(response))
        rule = policy.rule(route.method, path)
        if rule is not None:
            # Who may call it, from the policy table the api enforces (docs/access.md).
            op["x-pier-role"] = rule.role.label
            if rule.owner_fields:
                op["x-pier-role-owner-fields"] = sorted(rule.owner_fields)
            if rule.role is policy.Role.PUBLIC:
                op["security"] = []
        params = [p[1:-1] for p in path.split("/") if p.startswith("{")]
        if params:
            op["parameters"] = [
                {"name": p, "in": "path", "required": True, "schema": {"type": "string"}} for p in params
            ]
        paths.setdefault(path, {})[route.method.lower()] = op
    return {
        "openapi": "3.1.0",
        "info": {"title": "Pier management API", "version": "1"},
        "components": {"schemas": components, "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}}},
        "security": [{"bearer": []}],
        "paths": dict(sorted(paths.items())),
    }
