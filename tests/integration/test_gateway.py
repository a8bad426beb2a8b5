"""The gateway routes invocations to ready harness instances, checks templates and answers errors."""

from __future__ import annotations

import asyncio
import contextlib
import os
import subprocess
import sys
import textwrap
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import msgspec
import pytest
import yarl
from nats.js.kv import KeyValue

from infra.embedded import free_port, stop_process, wait_for_port
from pier import bus
from pier.bus import Bus
from pier.config import Settings
from pier.events import INSTANCES_BUCKET, ROUTES_BUCKET, InstanceRecord, RouteRecord, VersionRoute
from pier.spec import Entrypoint, Param, Route
from pier.tasks import cancel_and_wait
from services.gateway.__main__ import main as gateway_main
from services.gateway.app import Gateway, running
from tests.support import until

LIBS = Path(__file__).resolve().parents[2] / "libs"

MODEL_CODE = """
import os
import time

def predict(x, y=0):
    return {"sum": x + y, "pid": os.getpid()}

def add(a, b):
    return a + b

def echo(name, times=1):
    return [name] * times

def slow():
    time.sleep(3)
    return "late"
"""

ROUTES = [
    Route(
        path="/add",
        file="model.py",
        function="add",
        parameters=[Param(name="a", type="integer"), Param(name="b", type="integer")],
    ),
    Route(
        path="/echo",
        file="model.py",
        function="echo",
        verb="GET",
        parameters=[Param(name="name"), Param(name="times", type="integer", required=False, default=1)],
    ),
    Route(path="/slow", file="model.py", function="slow"),
]
ENTRYPOINT = Entrypoint(file="model.py", function="predict", routes=ROUTES)


@dataclass
class Harness:
    address: str
    log: Path
    proc: subprocess.Popen[bytes]

    def served(self, request_id: str) -> bool:
        """Whether this instance answered the request (the harness logs every request id)."""
        return f"request {request_id} " in self.log.read_text()


@contextlib.contextmanager
def _harness_process(workdir: Path, entrypoint: Entrypoint, extra: dict[str, str] | None = None) -> Iterator[Harness]:
    port = free_port()
    env = {
        **os.environ,
        **(extra or {}),
        "PIER_WORKING_DIR": str(workdir),
        "PIER_ENTRYPOINT": msgspec.json.encode(entrypoint).decode(),
        "PIER_PORT": str(port),
        "PYTHONPATH": os.pathsep.join([str(LIBS), os.environ.get("PYTHONPATH", "")]),
    }
    log = workdir / "harness.log"
    with open(log, "ab") as out:
        proc = subprocess.Popen([sys.executable, "-m", "pier.harness"], env=env, stdout=out, stderr=subprocess.STDOUT)
    try:
        yield Harness(f"127.0.0.1:{port}", log, proc)
    finally:
        stop_process(proc)


@contextlib.asynccontextmanager
async def start_harness(
    tmp_path: Path,
    code: str,
    entrypoint: Entrypoint,
    files: dict[str, str] | None = None,
    env: dict[str, str] | None = None,
) -> AsyncIterator[Harness]:
    """A real instance: the harness serving `code` as model.py from a directory of its own."""
    workdir = tmp_path / f"instance-{uuid.uuid4().hex[:8]}"
    workdir.mkdir()
    (workdir / "model.py").write_text(textwrap.dedent(code))
    for name, text in (files or {}).items():
        (workdir / name).write_text(text)
    with _harness_process(workdir, entrypoint, env) as harness:
        await asyncio.to_thread(wait_for_port, int(harness.address.rsplit(":", 1)[1]), harness.proc, "harness")
        yield harness


async def last_revision(kv: KeyValue) -> int:
    """The bucket's newest revision (`kv.delete` returns no revision of its own)."""
    return int((await kv.status()).stream_info.state.last_seq)


def instance(model_id: str, address: str, state: str = "ready", version: int = 1) -> InstanceRecord:
    return msgspec.convert(
        {"instance_id": uuid.uuid4().hex, "model_id": model_id, "version": version, "address": address, "state": state},
        InstanceRecord,
    )


def route_record(model_id: str, name: str, **fields: Any) -> RouteRecord:
    return RouteRecord(
        model_id=model_id,
        name=name,
        latest=1,
        versions={"1": VersionRoute(number=1, id="v1-id", entrypoint=ENTRYPOINT)},
        **fields,
    )


class Env:
    """The gateway under test, its bus and an HTTP client."""

    def __init__(self, gateway: Gateway, b: Bus, http: aiohttp.ClientSession, base: str) -> None:
        self.gateway, self.bus, self.http, self.base = gateway, b, http, base

    async def put_route(self, record: RouteRecord) -> None:
        kv = await self.bus.kv(ROUTES_BUCKET)
        revision = await kv.put(record.model_id, msgspec.json.encode(record))
        await until(lambda: self.gateway.table.applied(ROUTES_BUCKET, revision))

    async def put_instance(self, record: InstanceRecord) -> None:
        kv = await self.bus.kv(INSTANCES_BUCKET)
        revision = await kv.put(record.instance_id, msgspec.json.encode(record))
        await until(lambda: self.gateway.table.applied(INSTANCES_BUCKET, revision))

    async def call(self, method: str, path: str, **kwargs: Any) -> tuple[int, Any, aiohttp.ClientResponse]:
        async with self.http.request(method, self.base + path, **kwargs) as response:
            body = await response.read()
            return response.status, msgspec.json.decode(body) if body else None, response


@pytest.fixture
async def env(settings: Settings) -> AsyncIterator[Env]:
    settings = msgspec.structs.replace(
        settings, gateway_port=free_port(), gateway_metrics_port=0, max_body_bytes=64 * 1024
    )
    async with (
        bus.connect(settings, "test-gateway") as b,
        running(settings, b) as gateway,
        aiohttp.ClientSession() as http,
    ):
        yield Env(gateway, b, http, settings.gateway_url)


@pytest.fixture
async def model(env: Env, tmp_path: Path) -> AsyncIterator[tuple[RouteRecord, Harness]]:
    """Model API `demo` with one ready instance."""
    record = route_record(uuid.uuid4().hex, "demo")
    async with start_harness(tmp_path, MODEL_CODE, ENTRYPOINT) as harness:
        await env.put_route(record)
        await env.put_instance(instance(record.model_id, harness.address))
        yield record, harness


async def test_data_and_parameters_calls_return_the_result_by_name_and_by_id(
    env: Env, model: tuple[RouteRecord, Harness]
) -> None:
    record, _ = model
    for ref in ("demo", record.model_id):
        status, body, response = await env.call("POST", f"/models/{ref}/latest/model", json={"data": {"x": 2, "y": 3}})
        assert status == 200, body
        assert body["result"]["sum"] == 5
        assert body["release"] == {"model_version": "", "model_version_number": 0}
        assert "model_time_in_ms" in body
        assert response.headers["X-Request-Id"] == body["request_id"]
        status, body, _ = await env.call("POST", f"/models/{ref}/latest/model", json={"parameters": [4, 1]})
        assert (status, body["result"]["sum"]) == (200, 5)


async def test_client_request_id_and_authorization_header_pass_through(
    env: Env, model: tuple[RouteRecord, Harness]
) -> None:
    headers = {"X-Request-Id": "my-request-1", "Authorization": "Bearer whatever"}
    status, body, _ = await env.call("POST", "/models/demo/latest/model", json={"data": {"x": 1}}, headers=headers)
    assert (status, body["request_id"], body["result"]["sum"]) == (200, "my-request-1", 1)


async def test_label_routes_to_its_version(env: Env, model: tuple[RouteRecord, Harness]) -> None:
    record, _ = model
    await env.put_route(msgspec.structs.replace(record, labels={"prod": 1}))
    status, body, _ = await env.call("POST", "/models/demo/labels/prod/model", json={"data": {"x": 7}})
    assert (status, body["result"]["sum"]) == (200, 7)
    status, body, _ = await env.call("GET", "/models/demo/labels/prod/ping")
    assert status == 200


async def test_unknown_label_is_404_and_unknown_model_the_401_a_restricted_one_gives(
    env: Env, model: tuple[RouteRecord, Harness]
) -> None:
    status, body, response = await env.call("POST", "/models/nope/latest/model", json={"data": {}})
    assert status == 401  # names cannot be probed for (test_gateway_access)
    assert body["error"]["type"] == "Unauthorized"
    assert body["request_id"] == response.headers["X-Request-Id"]
    status, body, _ = await env.call("POST", "/models/demo/labels/staging/model", json={"data": {}})
    assert status == 404
    assert "staging" in body["error"]["message"]


async def test_no_ready_instance_is_503_with_retry_after_until_one_is_ready(env: Env, tmp_path: Path) -> None:
    record = route_record(uuid.uuid4().hex, "cold")
    async with start_harness(tmp_path, MODEL_CODE, ENTRYPOINT) as harness:
        await env.put_route(record)
        starting = instance(record.model_id, harness.address, state="starting")
        await env.put_instance(starting)
        status, body, response = await env.call("POST", "/models/cold/latest/model", json={"data": {"x": 1}})
        assert status == 503
        assert response.headers["Retry-After"] == "1"
        assert body["error"]["type"] == "Unavailable"
        status, _, response = await env.call("GET", "/models/cold/latest/ping")
        assert (status, response.headers["Retry-After"]) == (503, "1")

        await env.put_instance(msgspec.structs.replace(starting, state="ready"))
        status, _, _ = await env.call("GET", "/models/cold/latest/ping")
        assert status == 200
        status, body, _ = await env.call("POST", "/models/cold/latest/model", json={"data": {"x": 1}})
        assert (status, body["result"]["sum"]) == (200, 1)


async def test_route_template_mismatch_is_400_naming_every_field_and_never_reaches_the_instance(
    env: Env, model: tuple[RouteRecord, Harness]
) -> None:
    _, harness = model
    bad = {"X-Request-Id": "bad-" + uuid.uuid4().hex}
    status, body, _ = await env.call("POST", "/models/demo/latest/add", json={"a": "one", "c": 3}, headers=bad)
    assert status == 400
    fields = {e["field"]: e["problem"] for e in body["error"]["errors"]}
    assert set(fields) == {"a", "b", "c"}
    assert "integer" in fields["a"]
    for name in ("a", "b", "c"):
        assert name in body["error"]["message"]

    bad_get = {"X-Request-Id": "bad-" + uuid.uuid4().hex}
    status, body, _ = await env.call("GET", "/models/demo/latest/echo?times=x", headers=bad_get)
    assert status == 400
    assert {e["field"] for e in body["error"]["errors"]} == {"name", "times"}

    good = {"X-Request-Id": "good-" + uuid.uuid4().hex}
    status, body, _ = await env.call("POST", "/models/demo/latest/add", json={"a": 1, "b": 2}, headers=good)
    assert (status, body["result"]) == (200, 3)
    status, body, _ = await env.call("GET", "/models/demo/latest/echo?name=hi&times=2")
    assert (status, body["result"]) == (200, ["hi", "hi"])
    # The harness logs requests in order: once the good one is there, a bad one would be too.
    await until(lambda: harness.served(good["X-Request-Id"]))
    assert not harness.served(bad["X-Request-Id"])
    assert not harness.served(bad_get["X-Request-Id"])


async def test_unknown_route_is_404_and_wrong_verb_405(env: Env, model: tuple[RouteRecord, Harness]) -> None:
    status, _, _ = await env.call("POST", "/models/demo/latest/nowhere", json={})
    assert status == 404
    status, body, _ = await env.call("GET", "/models/demo/latest/add")
    assert status == 405
    assert "POST" in body["error"]["message"]


async def test_load_spreads_over_two_ready_instances(env: Env, tmp_path: Path) -> None:
    record = route_record(uuid.uuid4().hex, "wide")
    async with (
        start_harness(tmp_path, MODEL_CODE, ENTRYPOINT) as one,
        start_harness(tmp_path, MODEL_CODE, ENTRYPOINT) as two,
    ):
        await env.put_route(record)
        await env.put_instance(instance(record.model_id, one.address))
        await env.put_instance(instance(record.model_id, two.address))
        pids = set()
        for _ in range(10):
            status, body, _ = await env.call("POST", "/models/wide/latest/model", json={"data": {"x": 1}})
            assert status == 200
            pids.add(body["result"]["pid"])
        assert pids == {one.proc.pid, two.proc.pid}

        # Concurrent calls are spread too: the least busy instance takes the next one.
        results = await asyncio.gather(
            *(env.call("POST", "/models/wide/latest/model", json={"data": {"x": 1}}) for _ in range(20))
        )
        assert {body["result"]["pid"] for _, body, _ in results} == {one.proc.pid, two.proc.pid}


async def test_unhealthy_instance_gets_no_calls(env: Env, tmp_path: Path) -> None:
    record = route_record(uuid.uuid4().hex, "half")
    async with (
        start_harness(tmp_path, MODEL_CODE, ENTRYPOINT) as sick,
        start_harness(tmp_path, MODEL_CODE, ENTRYPOINT) as well,
    ):
        await env.put_route(record)
        sick_record = instance(record.model_id, sick.address)
        await env.put_instance(sick_record)
        await env.put_instance(instance(record.model_id, well.address))
        await env.put_instance(msgspec.structs.replace(sick_record, state="unhealthy"))
        for _ in range(10):
            status, body, _ = await env.call("POST", "/models/half/latest/model", json={"data": {"x": 1}})
            assert (status, body["result"]["pid"]) == (200, well.proc.pid)


async def test_deleted_instance_gets_no_calls(env: Env, tmp_path: Path) -> None:
    record = route_record(uuid.uuid4().hex, "gone")
    async with start_harness(tmp_path, MODEL_CODE, ENTRYPOINT) as harness:
        await env.put_route(record)
        only = instance(record.model_id, harness.address)
        await env.put_instance(only)
        kv = await env.bus.kv(INSTANCES_BUCKET)
        await kv.delete(only.instance_id)
        revision = await last_revision(kv)
        await until(lambda: env.gateway.table.applied(INSTANCES_BUCKET, revision))
        status, _, _ = await env.call("POST", "/models/gone/latest/model", json={"data": {"x": 1}})
        assert status == 503


async def test_refused_connection_is_retried_on_another_instance_else_502(env: Env, tmp_path: Path) -> None:
    record = route_record(uuid.uuid4().hex, "flaky")
    dead = instance(record.model_id, f"127.0.0.1:{free_port()}")  # nothing listens there
    async with start_harness(tmp_path, MODEL_CODE, ENTRYPOINT) as live:
        await env.put_route(record)
        await env.put_instance(dead)
        live_record = instance(record.model_id, live.address)
        await env.put_instance(live_record)
        for _ in range(6):
            status, body, _ = await env.call("POST", "/models/flaky/latest/model", json={"data": {"x": 1}})
            assert (status, body["result"]["pid"]) == (200, live.proc.pid)

        await env.put_instance(msgspec.structs.replace(live_record, state="unhealthy"))
        status, body, _ = await env.call("POST", "/models/flaky/latest/model", json={"data": {"x": 1}})
        assert (status, body["error"]["type"]) == (502, "BadGateway")


async def test_instance_slower_than_the_request_timeout_is_504(env: Env, tmp_path: Path) -> None:
    record = route_record(uuid.uuid4().hex, "slow", request_timeout=0.3)
    async with start_harness(tmp_path, MODEL_CODE, ENTRYPOINT) as harness:
        await env.put_route(record)
        await env.put_instance(instance(record.model_id, harness.address))
        status, body, _ = await env.call("POST", "/models/slow/latest/slow", json={})
        assert (status, body["error"]["type"]) == (504, "Timeout")

        # The connection that timed out is dropped, not reused: once the instance's worker is free
        # again (the slow call ends), calls are answered, each with its own result.
        async def served() -> bool:
            status, body, _ = await env.call("POST", "/models/slow/latest/add", json={"a": 2, "b": 3})
            return status == 200 and body["result"] == 5

        await until(served, within=20)


async def test_concurrent_calls_to_one_instance_each_get_their_own_answer(
    env: Env, model: tuple[RouteRecord, Harness]
) -> None:
    # Calls to one instance share its connections, pipelined: answers must never be swapped.
    for _ in range(3):
        answers = await asyncio.gather(
            *(env.call("POST", "/models/demo/latest/model", json={"data": {"x": i, "y": 1000}}) for i in range(100))
        )
        assert [(status, body["result"]["sum"]) for status, body, _ in answers] == [(200, i + 1000) for i in range(100)]


async def test_body_over_the_limit_is_413(env: Env, model: tuple[RouteRecord, Harness]) -> None:
    big = {"data": {"x": 1, "pad": "x" * (64 * 1024)}}
    status, body, _ = await env.call("POST", "/models/demo/latest/model", json=big)
    assert (status, body["error"]["type"]) == (413, "TooLarge")

    async def chunks() -> AsyncIterator[bytes]:  # no Content-Length: the limit is enforced while reading
        for _ in range(80):
            yield b"x" * 1024

    status, body, _ = await env.call("POST", "/models/demo/latest/model", data=chunks())
    assert (status, body["error"]["type"]) == (413, "TooLarge")


async def test_service_serves_ping_and_answers_health_requests(settings: Settings) -> None:
    settings = msgspec.structs.replace(settings, gateway_port=free_port(), gateway_metrics_port=0)
    task = asyncio.create_task(gateway_main(settings))
    try:
        async with aiohttp.ClientSession() as http, bus.connect(settings, "test") as b:

            async def pinged() -> bool:
                with contextlib.suppress(aiohttp.ClientError):
                    async with http.get(settings.gateway_url + "/ping") as response:
                        return response.status == 200
                return False

            await until(pinged)
            reply = await b.nc.request("pier.health.gateway", b"", timeout=5)
            assert reply.data == b"ok"
    finally:
        await cancel_and_wait([task])


async def test_model_endpoint_of_a_routes_only_version_is_404_naming_its_routes(env: Env) -> None:
    routes = [
        Route(path="/classify", file="text.py", function="classify"),
        Route(path="/stats", verb="GET", file="text.py", function="stats"),
    ]
    record = RouteRecord(
        model_id=uuid.uuid4().hex,
        name="routed",
        latest=1,
        versions={"1": VersionRoute(number=1, id="v1-id", entrypoint=Entrypoint(routes=routes))},
    )
    await env.put_route(record)
    # No instance at all: the answer comes from the route record, not from a 503 "none ready".
    status, body, _ = await env.call("POST", "/models/routed/latest/model", json={"data": {}})
    assert status == 404 and body["error"]["type"] == "NotFound"
    assert "POST /classify" in body["error"]["message"] and "GET /stats" in body["error"]["message"]


async def test_an_encoded_slash_is_part_of_a_segment_and_never_routes_as_a_separator(
    env: Env, model: tuple[RouteRecord, Harness]
) -> None:
    # Decoded first, `demo%2Flatest%2Fmodel` would read as demo/latest/model and call the model.
    url = yarl.URL(env.base + "/models/demo%2Flatest%2Fmodel", encoded=True)
    async with env.http.post(url, json={"data": {"x": 1}}) as response:
        assert response.status == 404
        assert "demo%2Flatest%2Fmodel" in (await response.json())["error"]["message"]


async def test_an_instance_answer_with_a_bare_lf_is_502_and_none_of_its_headers_reach_the_client(
    env: Env,
) -> None:
    async def lying_instance(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(ConnectionError, asyncio.IncompleteReadError):
            await reader.readuntil(b"\r\n\r\n")
            writer.write(
                b"HTTP/1.1 200 OK\r\nContent-Type: text/html\nSet-Cookie: session=x\r\nContent-Length: 2\r\n\r\nok"
            )
            await writer.drain()
        writer.close()

    server = await asyncio.start_server(lying_instance, "127.0.0.1", 0)
    try:
        record = route_record(uuid.uuid4().hex, "liar")
        await env.put_route(record)
        await env.put_instance(instance(record.model_id, f"127.0.0.1:{server.sockets[0].getsockname()[1]}"))
        status, body, response = await env.call("POST", "/models/liar/latest/model", json={"data": {"x": 1}})
        assert (status, body["error"]["type"]) == (502, "BadGateway")
        assert "Set-Cookie" not in response.headers and response.content_type == "application/json"
    finally:
        server.close()


async def test_the_harness_takes_its_http_limits_from_pier_http_variables(tmp_path: Path) -> None:
    async with start_harness(tmp_path, MODEL_CODE, ENTRYPOINT, env={"PIER_HTTP_MAX_HEADERS": "3"}) as harness:
        host, port = harness.address.rsplit(":", 1)
        reader, writer = await asyncio.open_connection(host, int(port))
        try:
            writer.write(b"GET /ping HTTP/1.1\r\nHost: x\r\nA: 1\r\nB: 2\r\nC: 3\r\n\r\n")
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
            assert head.startswith(b"HTTP/1.1 431 ")
            assert b'"HeadersTooLarge"' in await asyncio.wait_for(reader.read(), 10)
        finally:
            writer.close()
