"""Route templates (docs/calling.md, "Routes"): for any template, every body it admits reaches the
function with the values sent, of the Python types the template declares (defaults where a field
is absent, in template order for positional routes); every body it refuses is a 400 that names the
field at fault, and the function is not called. GET routes take the same values from the query.

The harness is exercised in-process; the gateway checks requests with the same `pier.spec` code.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any
from urllib.parse import urlencode

import msgspec
import pytest
from hypothesis import given
from hypothesis import strategies as st

from pier.spec import Entrypoint, Param, Route, check_entrypoint
from tests.property.calls import Calls, harness, same

TYPES = ("string", "integer", "number", "boolean", "object", "array")

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=4), inner, max_size=3),
    max_leaves=6,
)


def admitted(kind: str, value: Any) -> bool:
    """The type rules restated: booleans are never numbers, null is no type."""
    if isinstance(value, bool):
        return kind == "boolean"
    return {
        "string": isinstance(value, str),
        "integer": isinstance(value, int),
        "number": isinstance(value, int | float),
        "boolean": False,
        "object": isinstance(value, dict),
        "array": isinstance(value, list),
    }[kind]


def values_of(kind: str) -> st.SearchStrategy[Any]:
    return (
        json_values.filter(lambda v: admitted(kind, v))
        if kind in ("object", "array")
        else {
            "string": st.text(max_size=12),
            "integer": st.integers(),
            "number": st.integers() | st.floats(allow_nan=False, allow_infinity=False),
            "boolean": st.booleans(),
        }[kind]
    )


names = st.from_regex(r"[a-z_][a-z0-9_]{0,6}", fullmatch=True)


@st.composite
def params(draw: st.DrawFn) -> Param:
    kind = draw(st.sampled_from(TYPES))
    if draw(st.booleans()):
        return Param(name="", type=kind)  # type: ignore[arg-type]
    return Param(name="", type=kind, required=False, default=draw(st.none() | values_of(kind)))  # type: ignore[arg-type]


@st.composite
def routes(draw: st.DrawFn) -> Route:
    chosen = draw(st.lists(names, unique=True, max_size=5))
    declared = [msgspec.structs.replace(draw(params()), name=name) for name in chosen]
    route = Route(
        path="/r",
        file="predict.py",
        function="keep",
        verb=draw(st.sampled_from(("POST", "PUT", "GET"))),
        positional=draw(st.booleans()),
        parameters=declared,
    )
    check_entrypoint(Entrypoint(routes=[route]))  # a template a deploy accepts
    return route


@st.composite
def admitted_bodies(draw: st.DrawFn, route: Route) -> dict[str, Any]:
    body: dict[str, Any] = {}
    for param in route.parameters:
        if param.required or draw(st.booleans()):
            body[param.name] = draw(values_of(param.type))
    return body


def send(calls: Calls, route: Route, body: dict[str, Any]) -> Any:
    if route.verb == "GET":
        # A string parameter keeps the text as sent; every other type is read as JSON.
        fields = {k: v if isinstance(v, str) else msgspec.json.encode(v).decode() for k, v in body.items()}
        return calls.call("GET", route.path, query=urlencode(fields))
    return calls.call(route.verb, route.path, msgspec.json.encode(body))


@pytest.fixture(scope="module")
def calls() -> Iterator[Calls]:
    with harness() as served:
        yield served


@given(data=st.data())
def test_every_admitted_body_reaches_the_function_with_the_declared_types(calls: Calls, data: st.DataObject) -> None:
    route = data.draw(routes())
    body = data.draw(admitted_bodies(route))
    calls.route(route)
    answer = send(calls, route, body)
    assert answer.status == 200, answer.body
    [(args, kwargs)] = calls.captured.calls
    want = {p.name: body.get(p.name, p.default) for p in route.parameters}
    got = dict(zip([p.name for p in route.parameters], args, strict=True)) if route.positional else kwargs
    assert not (kwargs if route.positional else args)
    assert list(got) == list(want) if route.positional else got.keys() == want.keys()
    for param in route.parameters:
        value = got[param.name]
        assert same(value, want[param.name]), (param, value)
        assert (value is None and param.name not in body) or admitted(param.type, value), (param, value)


@st.composite
def refused_bodies(draw: st.DrawFn, route: Route) -> tuple[dict[str, Any], str]:
    """A body the template must refuse, and the field at fault."""
    body = draw(admitted_bodies(route))
    required = [p for p in route.parameters if p.required]
    typed = [p for p in route.parameters if p.name in body and not (route.verb == "GET" and p.type == "string")]
    ways = ["unknown"] + (["missing"] if required else []) + (["wrong type"] if typed else [])
    way = draw(st.sampled_from(ways))
    if way == "missing":
        field = draw(st.sampled_from(required)).name
        del body[field]
    elif way == "wrong type":
        param = draw(st.sampled_from(typed))
        field = param.name
        # A query value is text: a string would be read as the JSON it spells, so GET gets other values.
        wrong = json_values.filter(lambda v: not admitted(param.type, v))
        body[field] = draw(wrong.filter(lambda v: not isinstance(v, str)) if route.verb == "GET" else wrong)
    else:
        known = {p.name for p in route.parameters}
        field = draw(st.text(min_size=1, max_size=8).filter(lambda k: k not in known))
        body[field] = draw(json_values)
    return body, field


@given(data=st.data())
def test_every_refused_body_is_a_400_naming_the_field(calls: Calls, data: st.DataObject) -> None:
    route = data.draw(routes())
    body, field = data.draw(refused_bodies(route))
    calls.route(route)
    answer = send(calls, route, body)
    assert answer.status == 400, (body, answer.body)
    assert answer.body["error"]["type"] == "BadRequest"
    assert field in {e["field"] for e in answer.body["error"]["errors"]}, answer.body
    assert calls.captured.calls == []
