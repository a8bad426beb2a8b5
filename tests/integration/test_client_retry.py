"""`predict` against a real gateway that sheds: one instance with one worker, a queue of one, and
calls held in the model until the test lets them go. The attempts are counted where they leave the
client (a transport that records each answer), and the waits where the client sleeps."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import httpx
import msgspec
import pytest

from pier.client import ApiError, AsyncClient, Client, RetryPolicy
from pier.events import VersionRoute
from pier.spec import Entrypoint
from tests.integration import test_gateway
from tests.integration.test_gateway import ENTRYPOINT, MODEL_CODE, Env, instance, route_record, start_harness
from tests.support import until

env = test_gateway.env  # the fixture: the gateway under test

GATED_CODE = """
import os
import time

def predict(x=0):
    while not os.path.exists(os.environ["GATE"]):  # held until the test opens the gate
        time.sleep(0.01)
    return x
"""
GATED = Entrypoint(file="model.py", function="predict")


class Recording(httpx.AsyncBaseTransport, httpx.BaseTransport):
    """The real network, with each answer's status and Retry-After written down."""

    def __init__(self) -> None:
        self.sync, self.aio = httpx.HTTPTransport(), httpx.AsyncHTTPTransport()
        self.answers: list[tuple[int, str | None]] = []

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        response = self.sync.handle_request(request)
        self.answers.append((response.status_code, response.headers.get("Retry-After")))
        return response

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        response = await self.aio.handle_async_request(request)
        self.answers.append((response.status_code, response.headers.get("Retry-After")))
        return response


# Jitter that always draws 0: every wait the client makes is then the gateway's Retry-After alone.
NO_JITTER = RetryPolicy(uniform=lambda low, high: 0.0)

Predict = Callable[..., Awaitable[dict[str, object]]]


def shells(env: Env, transport: Recording, on_sleep: Callable[[float], None]) -> dict[str, Predict]:
    """`predict` of each shell, awaitable: the blocking one runs in a thread, off the gateway's loop."""
    gateway = env.base

    def sleep(seconds: float) -> None:
        on_sleep(seconds)
        time.sleep(seconds)

    async def asleep(seconds: float) -> None:
        on_sleep(seconds)
        await asyncio.sleep(seconds)

    async def blocking(*args: object, **kwargs: object) -> dict[str, object]:
        with Client("http://unused", "", gateway, retry=NO_JITTER, sleep=sleep, transport=transport) as c:
            return dict(await asyncio.to_thread(c.predict, *args, **kwargs))  # type: ignore[arg-type]

    async def awaited(*args: object, **kwargs: object) -> dict[str, object]:
        async with AsyncClient("http://unused", "", gateway, retry=NO_JITTER, sleep=asleep, transport=transport) as c:
            return dict(await c.predict(*args, **kwargs))  # type: ignore[arg-type]

    return {"Client": blocking, "AsyncClient": awaited}


@pytest.fixture
async def full(env: Env, tmp_path: Path) -> AsyncIterator[tuple[str, Path]]:
    """A model API whose one worker is busy and whose queue (one call) is full: the next call is shed."""
    gate = tmp_path / "gate"
    record = msgspec.structs.replace(
        route_record(uuid.uuid4().hex, f"held-{uuid.uuid4().hex[:6]}", queue_length=1, queue_timeout=60.0),
        versions={"1": VersionRoute(number=1, id="v1", entrypoint=GATED)},
    )
    async with start_harness(tmp_path, GATED_CODE, GATED, env={"GATE": str(gate)}) as harness:
        await env.put_route(record)
        await env.put_instance(instance(record.model_id, harness.address))
        path = f"/models/{record.name}/latest/model"
        held = [asyncio.create_task(env.call("POST", path, json={"data": {"x": n}})) for n in (1, 2)]
        try:
            await until(lambda: any(n for _, n in env.gateway.balancer.queued()))  # one runs, one waits
            yield record.name, gate
        finally:
            gate.touch()
            await asyncio.gather(*held, return_exceptions=True)


@pytest.mark.parametrize("shell", ["Client", "AsyncClient"])
async def test_predict_succeeds_after_sheds_waiting_at_least_each_retry_after(
    env: Env, full: tuple[str, Path], shell: str
) -> None:
    name, gate = full
    transport, waits = Recording(), []

    def on_sleep(seconds: float) -> None:
        waits.append(seconds)
        gate.touch()  # shed once: now the held calls finish, and the queue empties

    answer = await shells(env, transport, on_sleep)[shell](name, data={"x": 42})
    assert answer["result"] == 42
    statuses = [status for status, _ in transport.answers]
    assert statuses[0] == 503 and statuses[-1] == 200 and set(statuses[:-1]) == {503}
    assert len(waits) == len(statuses) - 1
    for wait, (_, retry_after) in zip(waits, transport.answers, strict=False):
        assert retry_after is not None and wait >= float(retry_after) >= 1


@pytest.mark.parametrize("shell", ["Client", "AsyncClient"])
async def test_predict_stops_at_the_deadline_and_raises_the_last_shed(
    env: Env, full: tuple[str, Path], shell: str
) -> None:
    name, _ = full
    transport, waits = Recording(), []
    with pytest.raises(ApiError) as raised:
        await shells(env, transport, waits.append)[shell](name, data={"x": 1}, deadline=2.5)
    assert raised.value.status == 503 and raised.value.problem["error"]["type"] == "Overloaded"
    assert [status for status, _ in transport.answers] == [503] * (len(waits) + 1)
    assert len(waits) >= 1 and sum(waits) <= 2.5  # no attempt was started past the deadline


@pytest.mark.parametrize("shell", ["Client", "AsyncClient"])
async def test_a_400_or_a_500_is_sent_once(env: Env, tmp_path: Path, shell: str) -> None:
    record = route_record(uuid.uuid4().hex, f"plain-{uuid.uuid4().hex[:6]}")
    async with start_harness(tmp_path, MODEL_CODE, ENTRYPOINT) as harness:
        await env.put_route(record)
        await env.put_instance(instance(record.model_id, harness.address))
        for call, status in (
            ({"route": "/add", "data": {"a": 1, "b": "two"}}, 400),  # the gateway checks the route's template
            ({"data": {"x": 1, "nope": 2}}, 400),  # the instance: not the function's arguments
            ({"data": {"x": "one"}}, 500),  # the model raises: "one" + 0
        ):
            transport, waits = Recording(), []
            with pytest.raises(ApiError) as raised:
                await shells(env, transport, waits.append)[shell](record.name, **call)
            assert raised.value.status == status
            assert [s for s, _ in transport.answers] == [status] and waits == []
