"""The OpenAPI document: every route the app serves, read from its router, so it cannot drift from
the code; request and response schemas come from the Structs for the routes that declare them."""

from __future__ import annotations

import inspect
from typing import Any

import msgspec
from aiohttp import web

from pier.events import GpuInventory
from services.api import policy
from services.api.audit import EventPage
from services.api.collaborators import CollaboratorOut, Share, Transfer
from services.api.environments import CreateEnvironment, EnvironmentOut
from services.api.gpus import PlanIn, PlanOut, UsageOut
from services.api.labels import LabelOut, Promote
from services.api.orgs import CreateOrg, OrgOut
from services.api.schedules import CreateSchedule, RunOut, ScheduleOut
from services.api.schemas import CreateModel, CreateVersion, ModelOut, SourceOut, VersionOut
from services.api.sessions import SessionOut, SetPassword, SignIn
from services.api.settings import ModelSettings, SettingsOut
from services.api.sources import CreateCredential, CredentialOut, NamedSourceOut
from services.api.tester import TryAnswer, TryCall
from services.api.tokens import CreateToken, TokenCreated, TokenOut
from services.api.users import ChangeUser, CreateKey, CreateUser, KeyCreated, KeyOut, Me, UserCreated, UserOut

# (method, path) -> (request body, answer body, success status) where a Struct describes them or
# the success is not a 200. The handlers read and answer with these Structs, so the schemas are exact.
_SCHEMAS: dict[tuple[str, str], tuple[Any, Any, int]] = {
    ("GET", "/v1/models"): (None, list[ModelOut], 200),
    ("POST", "/v1/models"): (CreateModel, ModelOut, 201),
    ("GET", "/v1/models/{ref}"): (None, ModelOut, 200),
    ("PATCH", "/v1/models/{ref}"): (ModelSettings, SettingsOut, 200),
    ("DELETE", "/v1/models/{ref}"): (None, ModelOut, 202),
    ("GET", "/v1/models/{ref}/settings"): (None, SettingsOut, 200),
    ("POST", "/v1/models/{ref}/stop"): (None, ModelOut, 202),
    ("POST", "/v1/models/{ref}/restart"): (None, ModelOut, 202),
    ("POST", "/v1/models/{ref}/versions"): (CreateVersion, None, 201),
    ("GET", "/v1/models/{ref}/versions"): (None, list[VersionOut], 200),
    ("GET", "/v1/models/{ref}/tokens"): (None, list[TokenOut], 200),
    ("POST", "/v1/models/{ref}/tokens"): (CreateToken, TokenCreated, 201),
    ("DELETE", "/v1/models/{ref}/tokens/{token_id}"): (None, None, 204),
    ("GET", "/v1/models/{ref}/labels"): (None, list[LabelOut], 200),
    ("PUT", "/v1/models/{ref}/labels/{label}"): (Promote, None, 200),
    ("GET", "/v1/models/{ref}/schedules"): (None, list[ScheduleOut], 200),
    ("POST", "/v1/models/{ref}/schedules"): (CreateSchedule, ScheduleOut, 201),
    ("DELETE", "/v1/models/{ref}/schedules/{id}"): (None, None, 204),
    ("GET", "/v1/models/{ref}/schedules/{id}/runs"): (None, list[RunOut], 200),
    ("POST", "/v1/models/{ref}/schedules/{id}/runs"): (None, RunOut, 202),
    ("GET", "/v1/models/{ref}/collaborators"): (None, list[CollaboratorOut], 200),
    ("PUT", "/v1/models/{ref}/collaborators/{principal}"): (Share, CollaboratorOut, 200),
    ("DELETE", "/v1/models/{ref}/collaborators/{principal}"): (None, None, 204),
    ("POST", "/v1/models/{ref}/transfer"): (Transfer, ModelOut, 200),
    ("GET", "/v1/models/{ref}/usage"): (None, UsageOut, 200),
    ("POST", "/v1/sources"): (None, SourceOut, 201),
    ("GET", "/v1/sources"): (None, list[NamedSourceOut], 200),
    ("GET", "/v1/sources/{name}"): (None, NamedSourceOut, 200),
    ("GET", "/v1/git-credentials"): (None, list[CredentialOut], 200),
    ("POST", "/v1/git-credentials"): (CreateCredential, CredentialOut, 201),
    ("GET", "/v1/environments"): (None, list[EnvironmentOut], 200),
    ("POST", "/v1/environments"): (CreateEnvironment, EnvironmentOut, 201),
    ("GET", "/v1/gpus"): (None, GpuInventory, 200),
    ("POST", "/v1/plan"): (PlanIn, PlanOut, 200),
    ("GET", "/v1/events"): (None, EventPage, 200),
    ("GET", "/v1/users"): (None, list[UserOut], 200),
    ("POST", "/v1/users"): (CreateUser, UserCreated, 201),
    ("PATCH", "/v1/users/{name}"): (ChangeUser, UserOut, 200),
    ("GET", "/v1/me"): (None, Me, 200),
    ("GET", "/v1/me/keys"): (None, list[KeyOut], 200),
    ("POST", "/v1/me/keys"): (CreateKey, KeyCreated, 201),
    ("DELETE", "/v1/me/keys/{id}"): (None, None, 204),
    ("PUT", "/v1/me/password"): (SetPassword, None, 204),
    ("GET", "/v1/orgs"): (None, list[OrgOut], 200),
    ("POST", "/v1/orgs"): (CreateOrg, OrgOut, 201),
    ("PUT", "/v1/orgs/{org}/members/{user}"): (None, OrgOut, 200),
    ("DELETE", "/v1/orgs/{org}/members/{user}"): (None, None, 204),
    ("POST", "/v1/session"): (SignIn, SessionOut, 201),
    ("DELETE", "/v1/session"): (None, None, 204),
    ("POST", "/v1/models/{ref}/try"): (TryCall, TryAnswer, 200),
}
_TYPES = sorted({t for request, answer, _ in _SCHEMAS.values() for t in (request, answer) if t is not None}, key=repr)
# Every refusal is application/problem+json (RFC 9457), as services/api/errors.py writes it.
_PROBLEM = {
    "type": "object",
    "required": ["type", "title", "status", "detail"],
    "properties": {
        "type": {"type": "string"},
        "title": {"type": "string"},
        "status": {"type": "integer"},
        "detail": {"type": "string"},
        "errors": {
            "type": "array",
            "items": {
                "type": "object",
                "required": ["field", "problem"],
                "properties": {"field": {"type": "string"}, "problem": {"type": "string"}},
            },
        },
    },
}
_REFUSED = {
    "description": "Refused: the problem, and for invalid input each field at fault",
    "content": {"application/problem+json": {"schema": {"$ref": "#/components/schemas/Problem"}}},
}


def _content(schema: dict[str, Any]) -> dict[str, Any]:
    return {"content": {"application/json": {"schema": schema}}}


def _summary(handler: Any) -> str:
    doc = inspect.getdoc(handler)
    if doc:
        return doc.splitlines()[0]
    return str(getattr(handler, "__name__", "")).replace("_", " ").strip().capitalize()


def document(router: web.UrlDispatcher) -> dict[str, Any]:
    schemas, components = msgspec.json.schema_components(_TYPES, ref_template="#/components/schemas/{name}")
    schema_of = dict(zip(_TYPES, schemas, strict=True))
    paths: dict[str, dict[str, Any]] = {}
    for route in router.routes():
        path = route.resource.canonical if route.resource else ""
        if route.method == "HEAD" or not (path.startswith("/v1/") or path == "/metrics"):
            continue
        request, response, status = _SCHEMAS.get((route.method, path), (None, None, 200))
        op: dict[str, Any] = {
            "summary": _summary(route.handler),
            "responses": {str(status): {"description": "OK"}, "4XX": _REFUSED},
        }
        if request is not None:
            op["requestBody"] = {"required": True, **_content(schema_of[request])}
        if response is not None:
            op["responses"][str(status)].update(_content(schema_of[response]))
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
        "components": {
            "schemas": {**components, "Problem": _PROBLEM},
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
        },
        "security": [{"bearer": []}],
        "paths": dict(sorted(paths.items())),
    }
