"""Route templates: what a request must look like, and how it becomes a call's arguments."""

from __future__ import annotations

from typing import Any

import msgspec
import pytest

from pier.spec import Entrypoint, Param, Route, SpecError, check_entrypoint, coerce_query, match_template


def _route(*params: Param, positional: bool = False, verb: Any = "POST") -> Route:
    return Route(path="/r", file="predict.py", function="f", verb=verb, positional=positional, parameters=list(params))


def _errors(route: Route, body: dict[str, Any]) -> set[tuple[str, str]]:
    with pytest.raises(SpecError) as caught:
        match_template(route, body)
    return set(caught.value.errors)


def test_keyword_route_passes_named_arguments_with_defaults_filled_in() -> None:
    route = _route(Param(name="x", type="integer"), Param(name="y", type="number", required=False, default=0.5))
    assert match_template(route, {"x": 1}) == ([], {"x": 1, "y": 0.5})
    assert match_template(route, {"y": 2, "x": 1}) == ([], {"x": 1, "y": 2})


def test_positional_route_passes_arguments_in_template_order_not_body_order() -> None:
    route = _route(Param(name="a"), Param(name="b", type="integer", required=False, default=7), positional=True)
    assert match_template(route, {"a": "first"}) == (["first", 7], {})
    assert match_template(route, {"b": 1, "a": "first"}) == (["first", 1], {})


def test_every_mismatch_is_named_at_once() -> None:
    route = _route(Param(name="text"), Param(name="n", type="integer"), Param(name="flag", type="boolean"))
    assert _errors(route, {"n": "3", "flag": 1, "extra": None}) == {
        ("text", "is required"),
        ("n", "must be of type integer, got string"),
        ("flag", "must be of type boolean, got integer"),
        ("extra", "is not a parameter of this route"),
    }


@pytest.mark.parametrize(
    ("kind", "good", "bad"),
    [
        ("string", "s", 1),
        ("integer", 3, 3.5),
        ("integer", -(2**70), True),
        ("number", 3, "3"),
        ("number", 2.5, False),
        ("boolean", False, 0),
        ("object", {"a": 1}, [1]),
        ("array", [1, "a"], {"a": 1}),
    ],
)
def test_each_type_accepts_its_json_kind_only(kind: Any, good: Any, bad: Any) -> None:
    route = _route(Param(name="v", type=kind))
    assert match_template(route, {"v": good}) == ([], {"v": good})
    assert len(_errors(route, {"v": bad})) == 1


def test_null_is_not_a_value_of_any_type() -> None:
    assert _errors(_route(Param(name="v", type="object")), {"v": None}) == {("v", "must be of type object, got null")}


def test_query_strings_are_read_by_the_declared_types() -> None:
    route = _route(
        Param(name="n", type="integer"),
        Param(name="r", type="number"),
        Param(name="b", type="boolean"),
        Param(name="s"),
        Param(name="l", type="array"),
        verb="GET",
    )
    query = {"n": "3", "r": "2.5", "b": "true", "s": "3", "l": "[1,2]"}
    assert coerce_query(route, query) == {"n": 3, "r": 2.5, "b": True, "s": "3", "l": [1, 2]}
    # Unparseable text stays text, so the template check names the mismatch.
    assert _errors(route, coerce_query(route, {**query, "n": "many"})) == {("n", "must be of type integer, got string")}


def test_routes_yaml_fields_decode_with_their_defaults() -> None:
    route = msgspec.convert({"path": "/p", "file": "a.py", "function": "f", "parameters": [{"name": "x"}]}, Route)
    assert (route.verb, route.positional) == ("POST", False)
    assert (route.parameters[0].type, route.parameters[0].required) == ("string", True)
    with pytest.raises(msgspec.ValidationError, match="verb"):
        msgspec.convert({"path": "/p", "file": "a.py", "function": "f", "verb": "HEAD"}, Route)
    with pytest.raises(msgspec.ValidationError, match="type"):
        msgspec.convert({"name": "x", "type": "float"}, Param)


def test_entrypoint_check_names_every_bad_route_field() -> None:
    bad = Entrypoint(
        file="predict.py",
        function="predict",
        routes=[
            Route(path="/model", file="../x.py", function="1f"),
            Route(path="/ok", file="a.py", function="f", parameters=[Param(name="a"), Param(name="a")]),
            Route(path="/ok", file="a.py", function="f"),
            Route(
                path="/d",
                file="a.py",
                function="f",
                parameters=[Param(name="n", type="integer", required=False, default="x")],
            ),
        ],
    )
    with pytest.raises(SpecError) as caught:
        check_entrypoint(bad)
    fields = {field for field, _ in caught.value.errors}
    assert fields == {
        "routes[0].path",
        "routes[0].file",
        "routes[0].function",
        "routes[1].parameters[0].name",
        "routes[1].parameters[1].name",
        "routes[2].path",
        "routes[3].parameters[0].default",
    }


def test_functions_lists_each_file_and_function_once() -> None:
    ep = Entrypoint(
        file="predict.py",
        function="predict",
        routes=[Route(path="/a", file="predict.py", function="predict"), Route(path="/b", file="t.py", function="g")],
        health_function="ok",
    )
    assert ep.functions() == [("predict.py", "predict"), ("t.py", "g"), ("predict.py", "ok")]


def test_routes_alone_are_an_entrypoint_with_no_model_endpoint() -> None:
    ep = Entrypoint(routes=[Route(path="/a", file="a.py", function="f"), Route(path="/b", file="b.py", function="g")])
    check_entrypoint(ep)
    assert ep.model_function() is None
    assert ep.functions() == [("a.py", "f"), ("b.py", "g")]
    assert ep.files() == ["a.py", "b.py"]


@pytest.mark.parametrize(
    ("fields", "field"),
    [
        ({}, "file"),
        ({"file": "predict.py"}, "function"),
        ({"function": "predict", "routes": [Route(path="/a", file="a.py", function="f")]}, "file"),
        ({"health_function": "ok", "routes": [Route(path="/a", file="a.py", function="f")]}, "health_function"),
    ],
)
def test_an_entrypoint_needs_file_and_function_together_or_routes(fields: dict[str, Any], field: str) -> None:
    with pytest.raises(SpecError) as caught:
        check_entrypoint(Entrypoint(**fields))
    assert [f for f, _ in caught.value.errors] == [field]
