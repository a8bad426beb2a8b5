"""What a user declares about a model API's code: entry point, routes and their parameter templates.

Shared by the api (validation), the builder (static checks), the gateway (request templates) and
the harness (dispatch), so it depends on msgspec alone: it ships into model images.
"""

from __future__ import annotations

import re
from typing import Any, Literal

import msgspec

ParamType = Literal["string", "integer", "number", "boolean", "object", "array"]
Verb = Literal["GET", "POST", "PUT", "PATCH", "DELETE"]

_PATH_RE = re.compile(r"^/[A-Za-z0-9_\-./]*$")
_IDENT_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_FILE_RE = re.compile(r"^[A-Za-z0-9_\-./]+\.py$")


class Param(msgspec.Struct, kw_only=True, omit_defaults=True):
    name: str
    type: ParamType = "string"
    required: bool = True
    default: Any = None


class Route(msgspec.Struct, kw_only=True, omit_defaults=True):
    path: str
    file: str
    function: str
    verb: Verb = "POST"
    positional: bool = False
    parameters: list[Param] = msgspec.field(default_factory=list)


class Entrypoint(msgspec.Struct, kw_only=True, omit_defaults=True):
    """The code an instance serves: the Domino `/model` endpoint's file and function, routes, or
    both (proxiML's endpoints have routes only), and an optional health function in `file`."""

    file: str | None = None
    function: str | None = None
    routes: list[Route] = msgspec.field(default_factory=list)
    health_function: str | None = None

    def model_function(self) -> tuple[str, str] | None:
        """The (file, function) `/model` calls, or None when only routes are served."""
        return (self.file, self.function) if self.file and self.function else None

    def files(self) -> list[str]:
        """Every entry file, the `/model` one first: what an instance imports at start."""
        return list(dict.fromkeys(file for file, _ in self.functions()))

    def functions(self) -> list[tuple[str, str]]:
        """Every (file, function) pair an instance must be able to call."""
        model = self.model_function()
        pairs = [model] if model else []
        pairs += [(r.file, r.function) for r in self.routes]
        if model and self.health_function:
            pairs.append((model[0], self.health_function))
        return list(dict.fromkeys(pairs))


class SpecError(ValueError):
    """A problem with one field of a spec; `errors` lists every (field, problem) found."""

    def __init__(self, errors: list[tuple[str, str]]) -> None:
        self.errors = errors
        super().__init__("; ".join(f"{f}: {p}" for f, p in errors))


_JSON_TYPES: dict[str, tuple[type, ...]] = {
    "string": (str,),
    "integer": (int,),
    "number": (int, float),
    "boolean": (bool,),
    "object": (dict,),
    "array": (list,),
}


def check_entrypoint(ep: Entrypoint) -> None:
    errors: list[tuple[str, str]] = []
    if ep.file is None and ep.function is None:
        if not ep.routes:
            errors.append(("file", "give `file` and `function` (the /model endpoint), or `routes`, or both"))
        if ep.health_function is not None:
            errors.append(("health_function", "needs `file` and `function`: it is looked up in `file`"))
    elif ep.file is None or ep.function is None:
        missing = "file" if ep.file is None else "function"
        errors.append((missing, f"`file` and `function` go together (the /model endpoint): {missing} is missing"))
    if ep.file is not None and (not _FILE_RE.match(ep.file) or ep.file.startswith("/") or ".." in ep.file.split("/")):
        errors.append(("file", f"{ep.file!r} is not a relative path to a .py file"))
    for name, value in (("function", ep.function), ("health_function", ep.health_function)):
        if value is not None and not _IDENT_RE.match(value):
            errors.append((name, f"{value!r} is not a Python identifier"))
    seen: set[tuple[str, str]] = set()
    for i, route in enumerate(ep.routes):
        where = f"routes[{i}]"
        if not _PATH_RE.match(route.path) or route.path.rstrip("/") in ("", "/model", "/ping"):
            errors.append((f"{where}.path", f"{route.path!r} must start with / and not be /, /model or /ping"))
        if (route.verb, route.path) in seen:
            errors.append((f"{where}.path", f"{route.verb} {route.path} is declared twice"))
        seen.add((route.verb, route.path))
        if not _FILE_RE.match(route.file) or ".." in route.file.split("/"):
            errors.append((f"{where}.file", f"{route.file!r} is not a relative path to a .py file"))
        if not _IDENT_RE.match(route.function):
            errors.append((f"{where}.function", f"{route.function!r} is not a Python identifier"))
        names = [p.name for p in route.parameters]
        for j, param in enumerate(route.parameters):
            if not _IDENT_RE.match(param.name):
                errors.append((f"{where}.parameters[{j}].name", f"{param.name!r} is not an identifier"))
            if names.count(param.name) > 1:
                errors.append((f"{where}.parameters[{j}].name", f"{param.name!r} is declared twice"))
            if not param.required and param.default is not None and not _is_type(param.default, param.type):
                errors.append((f"{where}.parameters[{j}].default", f"is not of type {param.type}"))
    if errors:
        raise SpecError(errors)


def _is_type(value: Any, kind: str) -> bool:
    if isinstance(value, bool) and kind not in ("boolean",):
        return False
    return isinstance(value, _JSON_TYPES[kind])


def match_template(route: Route, body: dict[str, Any]) -> tuple[list[Any], dict[str, Any]]:
    """Check a request body against a route's template; return (args, kwargs) for the call.

    Raises SpecError naming every mismatch: missing required fields, unknown fields, wrong types.
    """
    errors: list[tuple[str, str]] = []
    known = {p.name for p in route.parameters}
    for name in body:
        if name not in known:
            errors.append((name, "is not a parameter of this route"))
    values: dict[str, Any] = {}
    for param in route.parameters:
        if param.name in body:
            value = body[param.name]
            if not _is_type(value, param.type):
                errors.append((param.name, f"must be of type {param.type}, got {_json_type(value)}"))
            values[param.name] = value
        elif param.required:
            errors.append((param.name, "is required"))
        else:
            values[param.name] = param.default
    if errors:
        raise SpecError(errors)
    if route.positional:
        return [values[p.name] for p in route.parameters], {}
    return [], values


def coerce_query(route: Route, query: dict[str, str]) -> dict[str, Any]:
    """GET routes take their parameters from the query string: parse each by its declared type."""
    types = {p.name: p.type for p in route.parameters}
    out: dict[str, Any] = {}
    for name, text in query.items():
        kind = types.get(name)
        if kind in (None, "string"):
            out[name] = text
            continue
        try:
            out[name] = msgspec.json.decode(text)
        except msgspec.DecodeError:
            out[name] = text  # left as a string so the template check names the type mismatch
    return out


def _json_type(value: Any) -> str:
    for name, types in _JSON_TYPES.items():
        if name == "number":
            continue
        if isinstance(value, bool):
            return "boolean"
        if isinstance(value, types):
            return name
    if isinstance(value, float):
        return "number"
    return "null" if value is None else type(value).__name__
