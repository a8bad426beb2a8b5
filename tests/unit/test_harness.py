"""The harness in-process: request formats, argument checks, errors, and the loop staying free."""

from __future__ import annotations

import asyncio
import json
import sys
import textwrap
import threading
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from pier.harness.loader import Functions, argument_problems
from pier.harness.server import Harness, encode_result, serve_harness
from pier.http import SECRET_HEADER
from pier.spec import Entrypoint, Param, Route

CODE = """
import asyncio
import threading

IMPORTS = []
IMPORTS.append(1)
GATE = threading.Event()

class Opaque:
    pass

def named(x, y, z=0):
    return {"sum": x + y + z}

def types(**values):
    return {k: type(v).__name__ for k, v in values.items()}

def one(d):
    return d["x"]

def raises(message):
    raise KeyError(message)

def opaque():
    return [Opaque()]

def leaves():
    raise SystemExit(3)

def wait_for_gate():
    GATE.wait(10)
    return "opened"

async def later(n):
    await asyncio.sleep(0)
    return n + 1

def healthy():
    return len(IMPORTS)
"""


class Tolistable:
    def tolist(self) -> list[int]:
        return [1, 2]


@pytest.fixture
def code_dir(tmp_path: Path) -> Iterator[Path]:
    (tmp_path / "predict.py").write_text(textwrap.dedent(CODE))
    (tmp_path / "other.py").write_text("import predict\n\ndef imports():\n    return len(predict.IMPORTS)\n")
    yield tmp_path
    # The loader imports into this process: leave nothing for the next test to find.
    for name in ("predict", "other"):
        sys.modules.pop(name, None)
    if str(tmp_path) in sys.path:
        sys.path.remove(str(tmp_path))


def _entrypoint(function: str = "named", **kw: Any) -> Entrypoint:
    return Entrypoint(file="predict.py", function=function, **kw)


@pytest.fixture
async def serve(code_dir: Path) -> AsyncIterator[Callable[..., Any]]:
    """Start a harness on a free port; the answer is an HTTP client of it (paths relative to it)."""
    started: list[tuple[Any, aiohttp.ClientSession]] = []

    async def start(
        entrypoint: Entrypoint, timeout: float = 10.0, max_body: int = 1024, secret: str = ""
    ) -> aiohttp.ClientSession:
        functions = Functions(code_dir, entrypoint)
        harness = Harness(functions, entrypoint, 1, timeout, "v-id", 3, secret=secret)
        server = await serve_harness(harness, max_body, port=0)
        client = aiohttp.ClientSession(base_url=f"http://127.0.0.1:{server.port}")
        started.append((server, client))
        return client

    yield start
    for server, client in started:
        await client.close()
        await server.close(grace=0.1)


async def test_data_and_parameters_call_the_same_function(serve: Callable[..., Any]) -> None:
    client = await serve(_entrypoint())
    by_name = await (await client.post("/model", json={"data": {"x": 1, "y": 2}})).json()
    by_position = await (await client.post("/model", json={"parameters": [1, 2, 3]})).json()
    assert by_name["result"] == {"sum": 3} and by_position["result"] == {"sum": 6}
    assert by_name["release"] == {"model_version": "v-id", "model_version_number": 3}
    assert by_name["request_id"] and by_name["model_time_in_ms"] >= 0


async def test_json_values_arrive_as_the_python_types_domino_documents(serve: Callable[..., Any]) -> None:
    client = await serve(_entrypoint("types"))
    data = {"o": {}, "a": [], "s": "", "i": 1, "r": 1.0, "t": True, "n": None}
    answer = await (await client.post("/model", json={"data": data})).json()
    assert answer["result"] == {
        "o": "dict",
        "a": "list",
        "s": "str",
        "i": "int",
        "r": "float",
        "t": "bool",
        "n": "NoneType",
    }


async def test_a_dict_argument_comes_as_the_only_parameter(serve: Callable[..., Any]) -> None:
    client = await serve(_entrypoint("one"))
    answer = await (await client.post("/model", json={"parameters": [{"x": "value"}]})).json()
    assert answer["result"] == "value"


@pytest.mark.parametrize(
    ("body", "fields"),
    [
        ({"data": {}}, {"x", "y"}),
        ({"data": {"x": 1, "y": 1, "w": 1, "v": 2}}, {"w", "v"}),
        ({"parameters": [1, 2, 3, 4]}, {"parameters"}),
        ({"data": [1]}, {"data"}),
        ({"parameters": {"x": 1}}, {"parameters"}),
        ({"data": {}, "extra": 1}, {"extra"}),
    ],
)
async def test_bad_arguments_are_400_naming_each(serve: Callable[..., Any], body: Any, fields: set[str]) -> None:
    client = await serve(_entrypoint())
    response = await client.post("/model", json=body)
    assert response.status == 400
    error = (await response.json())["error"]
    assert {e["field"] for e in error["errors"]} == fields


@pytest.mark.parametrize("body", [b"{", b"[1, 2]", b"", b'{"data": {}, "parameters": []}'])
async def test_malformed_or_shapeless_bodies_are_400(serve: Callable[..., Any], body: bytes) -> None:
    client = await serve(_entrypoint())
    response = await client.post("/model", data=body)
    assert response.status == 400
    assert (await response.json())["error"]["type"] in ("MalformedJSON", "BadRequest")


async def test_an_exception_is_500_with_its_traceback_logged_and_serving_goes_on(
    serve: Callable[..., Any], capfd: pytest.CaptureFixture[str]
) -> None:
    failing = await serve(_entrypoint("raises"))
    response = await failing.post("/model", json={"data": {"message": "boom"}}, headers={"X-Request-Id": "r-1"})
    assert response.status == 500
    assert await response.json() == {"error": {"type": "KeyError", "message": "'boom'"}, "request_id": "r-1"}
    out = capfd.readouterr().out
    assert "request r-1: raises() raised KeyError" in out and "Traceback" in out
    assert (await failing.post("/model", json={"data": {"message": "again"}})).status == 500

    leaving = await serve(_entrypoint("leaves"))
    assert (await (await leaving.post("/model", json={"data": {}})).json())["error"]["type"] == "SystemExit"
    assert (await leaving.get("/ping")).status == 200


async def test_a_result_that_is_not_json_is_500_naming_its_type(serve: Callable[..., Any]) -> None:
    client = await serve(_entrypoint("opaque"))
    response = await client.post("/model", json={"data": {}})
    assert response.status == 500
    error = (await response.json())["error"]
    assert error["type"] == "ResultNotSerializable" and "predict.Opaque" in error["message"]


def test_arrays_with_tolist_are_encoded_as_lists() -> None:
    assert encode_result({"a": Tolistable(), "t": (1, 2)}) == b'{"a":[1,2],"t":[1,2]}'


async def test_async_functions_are_awaited(serve: Callable[..., Any]) -> None:
    client = await serve(_entrypoint("later"))
    assert (await (await client.post("/model", json={"parameters": [1]})).json())["result"] == 2


async def test_a_slow_sync_call_leaves_ping_and_health_answering(serve: Callable[..., Any], code_dir: Path) -> None:
    client = await serve(_entrypoint("wait_for_gate", health_function="healthy"))
    call = asyncio.create_task(client.post("/model", json={"data": {}}))
    gate: threading.Event = __import__("predict").GATE
    try:
        for _ in range(3):
            assert (await client.get("/ping")).status == 200
            assert (await client.get("/health")).status == 200
        assert not call.done()
    finally:
        gate.set()
    assert (await (await call).json())["result"] == "opened"


async def test_over_the_request_timeout_is_504(serve: Callable[..., Any]) -> None:
    client = await serve(_entrypoint("wait_for_gate"), timeout=0.05)
    try:
        response = await client.post("/model", json={"data": {}})
        assert response.status == 504 and (await response.json())["error"]["type"] == "Timeout"
    finally:
        __import__("predict").GATE.set()


async def test_a_body_over_the_limit_is_413(serve: Callable[..., Any]) -> None:
    client = await serve(_entrypoint(), max_body=100)
    response = await client.post("/model", data=b'{"data": {"x": "' + b"a" * 200 + b'"}}')
    assert response.status == 413 and (await response.json())["error"]["type"] == "TooLarge"


async def test_routes_check_their_template_and_pass_arguments(serve: Callable[..., Any]) -> None:
    routes = [
        Route(path="/sum", file="predict.py", function="named", positional=True, parameters=[
            Param(name="x", type="integer"), Param(name="y", type="integer"), Param(name="z", type="integer")
        ]),
        Route(path="/get", verb="GET", file="predict.py", function="named", parameters=[
            Param(name="x", type="integer"), Param(name="y", type="number", required=False, default=0.5)
        ]),
    ]  # fmt: skip
    client = await serve(_entrypoint(routes=routes))
    assert (await (await client.post("/sum", json={"z": 3, "y": 2, "x": 1})).json())["result"] == {"sum": 6}
    assert (await (await client.get("/get?x=2")).json())["result"] == {"sum": 2.5}
    wrong = await client.post("/sum", json={"x": "1", "w": 0})
    assert wrong.status == 400
    assert {e["field"] for e in (await wrong.json())["error"]["errors"]} == {"x", "y", "z", "w"}


def test_an_entry_file_imported_by_another_is_loaded_once(code_dir: Path) -> None:
    # other.py imports predict before the loader reaches predict.py: still one module, one init.
    entrypoint = Entrypoint(file="other.py", function="imports", routes=[
        Route(path="/n", file="predict.py", function="named")
    ])  # fmt: skip
    functions = Functions(code_dir, entrypoint)
    assert functions.get("other.py", "imports")() == 1
    assert functions.modules["predict.py"] is sys.modules["predict"]


def test_argument_problems_name_everything_at_once() -> None:
    def f(a: int, b: int, *, c: int, d: int = 0) -> None: ...

    assert set(argument_problems(f, [1], {"e": 1, "a": 2})) == {
        ("e", "is not an argument of the function"),
        ("a", "is given twice, by position and by name"),
        ("b", "is required"),
        ("c", "is required"),
    }

    def g(a: int, **rest: Any) -> None: ...

    assert argument_problems(g, [], {"a": 1, "anything": 2}) == []


async def _raw(port: int, data: bytes, answers: int) -> list[tuple[int, dict[str, str], bytes]]:
    """Send `data` as is on one connection and read `answers` HTTP answers (Content-Length bodies)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(data)
        out = []
        for _ in range(answers):
            head = (await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)).decode("latin-1").split("\r\n")
            headers = dict(line.split(": ", 1) for line in head[1:] if line)
            body = await reader.readexactly(int(headers["Content-Length"]))
            out.append((int(head[0].split()[1]), headers, body))
        return out
    finally:
        writer.close()


def _post(path: str, body: bytes, request_id: str, extra: str = "") -> bytes:
    head = (
        f"POST {path} HTTP/1.1\r\nHost: x\r\nX-Request-Id: {request_id}\r\nContent-Length: {len(body)}\r\n{extra}\r\n"
    )
    return head.encode() + body


@pytest.fixture
async def harness_port(code_dir: Path) -> AsyncIterator[int]:
    entrypoint = _entrypoint()
    harness = Harness(Functions(code_dir, entrypoint), entrypoint, 1, 10.0, "v-id", 3)
    server = await serve_harness(harness, 1024, port=0)
    yield server.port
    await server.close(grace=0.1)


async def test_pipelined_requests_are_answered_in_order_on_one_connection(harness_port: int) -> None:
    calls = [_post("/model", b'{"parameters": [%d, 1]}' % i, f"r-{i}") for i in range(5)]
    calls.insert(2, _post("/model", b"{", "bad"))  # a failing call in the middle keeps its place
    answers = await _raw(harness_port, b"".join(calls), len(calls))
    assert [h["X-Request-Id"] for _, h, _ in answers] == ["r-0", "r-1", "bad", "r-2", "r-3", "r-4"]
    assert [status for status, _, _ in answers] == [200, 200, 400, 200, 200, 200]
    assert [_result(b) for _, _, b in answers if b.startswith(b'{"result"')] == [{"sum": i + 1} for i in range(5)]


def _result(body: bytes) -> Any:
    return json.loads(body)["result"]


async def test_a_chunked_body_is_read_and_connection_close_is_honoured(harness_port: int) -> None:
    body = b'{"data": {"x": 2, "y": 3}}'
    chunked = (
        b"POST /model HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
        + b"%x\r\n%s\r\n0\r\n\r\n" % (len(body), body)
    )
    [(status, headers, answer)] = await _raw(harness_port, chunked, 1)
    assert status == 200 and headers["Connection"] == "close" and _result(answer) == {"sum": 5}


async def test_malformed_http_unknown_paths_and_verbs_get_json_errors(harness_port: int) -> None:
    [(status, _, body)] = await _raw(harness_port, b"NOT HTTP AT ALL\r\n\r\n", 1)
    assert status == 400 and b'"BadRequest"' in body
    [(missing, _, _), (wrong_verb, _, _)] = await _raw(
        harness_port, b"GET /nothing HTTP/1.1\r\nHost: x\r\n\r\nGET /model HTTP/1.1\r\nHost: x\r\n\r\n", 2
    )
    assert (missing, wrong_verb) == (404, 405)


async def test_a_routes_only_entrypoint_serves_its_routes_and_has_no_model_endpoint(
    serve: Callable[..., Any],
) -> None:
    route = Route(path="/imports", verb="GET", file="other.py", function="imports")
    client = await serve(Entrypoint(routes=[route]))
    assert (await (await client.get("/imports")).json())["result"] == 1
    assert (await client.post("/model", json={"data": {}})).status == 404
    assert (await client.get("/health")).status == 200


async def test_a_harness_with_a_secret_answers_only_callers_that_send_it(serve: Callable[..., Any]) -> None:
    client = await serve(_entrypoint(), secret="s3cret")
    for headers in ({}, {SECRET_HEADER: "wrong"}, {SECRET_HEADER: "s3cre"}):
        for method, path in (("GET", "/ping"), ("GET", "/health"), ("POST", "/model")):
            response = await client.request(method, path, json={"data": {"x": 1, "y": 2}}, headers=headers)
            assert response.status == 403, (headers, path)
            assert (await response.json())["error"]["type"] == "Forbidden"
    allowed = await client.post("/model", json={"data": {"x": 1, "y": 2}}, headers={SECRET_HEADER: "s3cret"})
    assert allowed.status == 200 and (await allowed.json())["result"] == {"sum": 3}
    assert (await client.get("/ping", headers={SECRET_HEADER: "s3cret"})).status == 200
