"""Capacity, queueing and 503 shedding; label switches under load; the gateway's metrics."""

from __future__ import annotations

import asyncio
import uuid
from pathlib import Path

import msgspec

from pier.events import VersionRoute
from pier.spec import Entrypoint
from tests.integration import test_gateway
from tests.integration.test_gateway import (
    ENTRYPOINT,
    MODEL_CODE,
    Env,
    instance,
    route_record,
    start_harness,
)
from tests.support import until

env = test_gateway.env  # the fixture: the gateway under test

SLOW_CODE = """
import time

def predict(x):
    time.sleep(0.2)
    return x
"""
SLOW = Entrypoint(file="model.py", function="predict")

VERSION_CODE = """
import os

def predict():
    return os.environ.get("WHICH", "?")
"""


async def test_burst_of_20x_capacity_gets_only_200s_and_503s_with_retry_after(env: Env, tmp_path: Path) -> None:
    record = route_record(uuid.uuid4().hex, "busy", queue_length=4, queue_timeout=5.0)
    record = msgspec.structs.replace(record, versions={"1": VersionRoute(number=1, id="v1", entrypoint=SLOW)})
    async with start_harness(tmp_path, SLOW_CODE, SLOW) as harness:
        await env.put_route(record)
        await env.put_instance(instance(record.model_id, harness.address))  # 1 worker: capacity 1

        async def one() -> tuple[int, str | None, dict[str, object]]:
            status, body, response = await env.call("POST", "/models/busy/latest/model", json={"data": {"x": 1}})
            return status, response.headers.get("Retry-After"), body

        answers = await asyncio.gather(*(one() for _ in range(20)))
        statuses = [status for status, _, _ in answers]
        assert set(statuses) == {200, 503}, statuses
        for status, retry_after, body in answers:
            if status == 503:
                assert retry_after is not None and int(retry_after) >= 1
                assert body["error"]["type"] == "Overloaded"  # type: ignore[index]
        status, body, _ = await env.call("POST", "/models/busy/latest/model", json={"data": {"x": 7}})
        assert (status, body["result"]) == (200, 7)

        async with env.http.get(f"http://127.0.0.1:{env.gateway.metrics_port}/metrics") as response:
            text = await response.text()
        assert response.status == 200
        assert 'pier_gateway_requests_total{model="busy",version="1",status="503"}' in text
        assert 'pier_gateway_shed_total{model="busy",version="1"}' in text
        assert "pier_gateway_request_duration_seconds_bucket" in text


async def test_calls_wait_in_the_queue_for_a_free_worker_instead_of_failing(env: Env, tmp_path: Path) -> None:
    record = msgspec.structs.replace(
        route_record(uuid.uuid4().hex, "patient", queue_length=50, queue_timeout=30.0),
        versions={"1": VersionRoute(number=1, id="v1", entrypoint=SLOW)},
    )
    async with start_harness(tmp_path, SLOW_CODE, SLOW) as harness:
        await env.put_route(record)
        await env.put_instance(instance(record.model_id, harness.address))
        answers = await asyncio.gather(
            *(env.call("POST", "/models/patient/latest/model", json={"data": {"x": i}}) for i in range(6))
        )
        assert sorted(body["result"] for _, body, _ in answers) == list(range(6))


async def test_label_switch_under_a_steady_stream_of_calls_has_no_failures(env: Env, tmp_path: Path) -> None:
    model_id = uuid.uuid4().hex
    plain = Entrypoint(file="model.py", function="predict")
    versions = {str(n): VersionRoute(number=n, id=f"v{n}", entrypoint=plain) for n in (1, 2)}
    record = msgspec.structs.replace(
        route_record(model_id, "switch"), latest=2, labels={"prod": 1}, versions=versions, routing_mode="advanced"
    )
    async with (
        start_harness(tmp_path, VERSION_CODE, plain, env={"WHICH": "one"}) as one,
        start_harness(tmp_path, VERSION_CODE, plain, env={"WHICH": "two"}) as two,
    ):
        await env.put_route(record)
        await env.put_instance(instance(model_id, one.address, version=1))
        await env.put_instance(instance(model_id, two.address, version=2))
        seen: list[tuple[int, str]] = []
        stop = asyncio.Event()

        async def stream() -> None:
            while not stop.is_set():
                status, body, _ = await env.call("POST", "/models/switch/labels/prod/model", json={"data": {}})
                seen.append((status, body.get("result")))

        tasks = [asyncio.create_task(stream()) for _ in range(4)]
        try:
            await until_calls(seen, 20)
            await env.put_route(msgspec.structs.replace(record, labels={"prod": 2}))
            mark = len(seen)
            await until_calls(seen, mark + 40)
        finally:
            stop.set()
            await asyncio.gather(*tasks)
        assert {status for status, _ in seen} == {200}
        results = [result for _, result in seen]
        assert results[0] == "one" and set(results[-20:]) == {"two"}


async def until_calls(seen: list[tuple[int, str]], n: int) -> None:
    await until(lambda: len(seen) >= n, within=30)


async def test_unhealthy_instance_leaves_the_rotation_at_once(env: Env, tmp_path: Path) -> None:
    record = route_record(uuid.uuid4().hex, "mixed")
    async with (
        start_harness(tmp_path, MODEL_CODE, ENTRYPOINT) as sick,
        start_harness(tmp_path, MODEL_CODE, ENTRYPOINT) as well,
    ):
        await env.put_route(record)
        sick_record = instance(record.model_id, sick.address)
        await env.put_instance(sick_record)
        await env.put_instance(instance(record.model_id, well.address))
        await env.put_instance(msgspec.structs.replace(sick_record, state="unhealthy"))
        answers = await asyncio.gather(
            *(env.call("POST", "/models/mixed/latest/model", json={"data": {"x": 1}}) for _ in range(12))
        )
        assert {body["result"]["pid"] for _, body, _ in answers} == {well.proc.pid}
