"""Logs through the api: folded from the bus, newest first with a cursor, live as server-sent events;
and the health-check settings (`PATCH /v1/models/{ref}`)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import msgspec
import pytest

from pier.bus import Bus
from pier.config import Settings
from pier.events import ROUTES_BUCKET, InstanceReady, LogBatch, RouteRecord, encode, logs_subject
from pier.tasks import cancel_and_wait
from tests.integration.test_api import _source, api  # noqa: F401  (the fixture)
from tests.support import until

Api = tuple[aiohttp.ClientSession, Settings]


async def _model(session: aiohttp.ClientSession, settings: Settings, name: str = "m", **extra: Any) -> str:
    spec = {"name": name, "source": _source(settings), "file": "p.py", "function": "f", "access": "unrestricted"}
    async with session.post("/v1/models", json={**spec, **extra}) as r:
        assert r.status == 201, await r.text()
        return str((await r.json())["id"])


@pytest.fixture
async def b(api: Api) -> AsyncIterator[Bus]:  # noqa: F811
    from pier import bus

    async with bus.connect(api[1], "test-logs") as connected:
        yield connected


async def _lines(session: aiohttp.ClientSession, ref: str, **query: Any) -> dict[str, Any]:
    async with session.get(f"/v1/models/{ref}/logs", params={k: str(v) for k, v in query.items()}) as r:
        assert r.status == 200, await r.text()
        return dict(await r.json())


async def test_lines_come_newest_first_and_the_cursor_pages_to_older_ones(api: Api, b: Bus) -> None:  # noqa: F811
    session, settings = api
    model_id = await _model(session, settings)
    for n in range(7):
        await b.log(model_id, "instance", f"line {n}", version=1, instance_id="i-1")
    await b.log(model_id, "build", "a build line", version=1)

    await until(lambda: _count(session, model_id, 7, kind="instance"))
    first = await _lines(session, "m", kind="instance", limit=3)
    assert [x["line"] for x in first["lines"]] == ["line 6", "line 5", "line 4"]
    second = await _lines(session, "m", kind="instance", limit=3, before=first["next_before"])
    assert [x["line"] for x in second["lines"]] == ["line 3", "line 2", "line 1"]
    last = await _lines(session, "m", kind="instance", limit=3, before=second["next_before"])
    assert [x["line"] for x in last["lines"]] == ["line 0"] and last["next_before"] is None
    assert {x["instance_id"] for x in first["lines"]} == {"i-1"}
    builds = await _lines(session, "m", kind="build")
    assert [x["line"] for x in builds["lines"]] == ["a build line"]


async def _count(session: aiohttp.ClientSession, ref: str, n: int, **query: Any) -> bool:
    return len((await _lines(session, ref, limit=1000, **query))["lines"]) >= n


async def test_bad_query_is_a_400_naming_the_field(api: Api) -> None:  # noqa: F811
    session, settings = api
    await _model(session, settings)
    for query, field in [({"kind": "nope"}, "kind"), ({"limit": "0"}, "limit"), ({"before": "x"}, "before")]:
        async with session.get("/v1/models/m/logs", params=query) as r:
            assert r.status == 400
            assert [e["field"] for e in (await r.json())["errors"]] == [field]


async def test_a_follower_sees_a_new_line_within_a_second(api: Api, b: Bus) -> None:  # noqa: F811
    session, settings = api
    model_id = await _model(session, settings)
    await b.log(model_id, "instance", "before following", instance_id="i-1")
    await until(lambda: _count(session, model_id, 1, kind="instance"))
    seen: list[dict[str, Any]] = []

    async def follow() -> None:
        async with session.get(f"/v1/models/{model_id}/logs", params={"kind": "instance", "follow": "true"}) as r:
            assert r.headers["Content-Type"].startswith("text/event-stream")
            async for raw in r.content:
                text = raw.decode().strip()
                if text.startswith("data:"):
                    seen.append(json.loads(text[5:]))

    task = asyncio.create_task(follow())
    try:
        await until(lambda: [x["line"] for x in seen] == ["before following"])
        await b.log(model_id, "instance", "a new line", instance_id="i-1")
        await until(lambda: len(seen) == 2, within=1.0)
    finally:
        await cancel_and_wait([task])
    assert [x["line"] for x in seen] == ["before following", "a new line"]


async def test_batched_lines_page_newest_first_one_by_one_and_a_repeat_writes_nothing(
    api: Api,  # noqa: F811
    b: Bus,
) -> None:
    session, settings = api
    model_id = await _model(session, settings)
    subject = logs_subject(model_id, "instance")
    for n in range(3):  # as the log shipper sends them: batches of consecutive lines
        batch = LogBatch(at=1.0, kind="instance", lines=[f"line {n * 5 + i}" for i in range(5)], instance_id="i-1")
        await b.publish_raw(subject, encode(batch), msg_id=f"log:i-1:{n}")
    await b.publish_raw(subject, encode(batch), msg_id="log:i-1:2")  # a repeat of the last one
    await until(lambda: _count(session, model_id, 15, kind="instance"))

    seen: list[str] = []
    cursor = None
    while True:
        page = await _lines(session, "m", kind="instance", limit=4, **({"before": cursor} if cursor else {}))
        seen += [x["line"] for x in page["lines"]]
        if (cursor := page["next_before"]) is None:
            break
    assert seen == [f"line {n}" for n in reversed(range(15))]

    # A follower resuming after a line in the middle of a batch gets exactly the lines after it.
    middle = (await _lines(session, "m", kind="instance", limit=8))["lines"][-1]
    assert middle["line"] == "line 7"
    async with session.get(
        "/v1/models/m/logs", params={"kind": "instance", "follow": "true", "after": str(middle["seq"])}
    ) as r:
        followed: list[str] = []
        async for raw in r.content:
            text = raw.decode().strip()
            if text.startswith("data:"):
                followed.append(json.loads(text[5:])["line"])
            if len(followed) == 7:
                break
    assert followed == [f"line {n}" for n in range(8, 15)]


async def test_lifecycle_events_are_written_to_the_deployment_log(api: Api, b: Bus) -> None:  # noqa: F811
    session, settings = api
    model_id = await _model(session, settings)
    ready = InstanceReady(model_id=model_id, version=1, instance_id="i-9")
    await b.publish(ready)
    await b.publish(ready)  # a redelivery writes nothing more
    await until(lambda: _count(session, model_id, 1, kind="deployment"))
    lines = (await _lines(session, model_id, kind="deployment"))["lines"]
    assert [x["line"] for x in lines] == ["version 1: instance i-9 ready"]


# ---- settings -----------------------------------------------------------------------------------


async def test_a_policy_that_would_restart_under_a_running_call_is_a_400(api: Api) -> None:  # noqa: F811
    session, settings = api
    async with session.post(
        "/v1/models",
        json={"name": "bad", "source": _source(settings), "file": "p.py", "function": "f", "period": 1},
    ) as r:
        assert r.status == 400
        body = await r.json()
    assert "period * failure_threshold" in body["detail"] and "request_timeout" in body["detail"]
    await _model(session, settings, "ok")
    async with session.patch("/v1/models/ok", json={"period": 2, "failure_threshold": 3, "request_timeout": 6}) as r:
        assert r.status == 400
        assert {e["field"] for e in (await r.json())["errors"]} == {"period", "failure_threshold", "request_timeout"}
    async with session.patch("/v1/models/ok", json={"period": "x"}) as r:
        assert r.status == 400
        assert [e["field"] for e in (await r.json())["errors"]] == ["period"]


async def test_changed_settings_reach_the_route_record(api: Api, b: Bus) -> None:  # noqa: F811
    session, settings = api
    model_id = await _model(session, settings, initial_delay=5)
    async with session.patch(
        f"/v1/models/{model_id}", json={"period": 2, "failure_threshold": 4, "timeout": 1, "request_timeout": 7}
    ) as r:
        assert r.status == 200, await r.text()
        shown = await r.json()
    assert shown["request_timeout"] == 7
    assert {k: shown["health"][k] for k in ("initial_delay", "period", "failure_threshold", "timeout")} == {
        "initial_delay": 5,
        "period": 2,
        "failure_threshold": 4,
        "timeout": 1,
    }
    kv = await b.kv(ROUTES_BUCKET)
    record = msgspec.json.decode((await kv.get(model_id)).value or b"", type=RouteRecord)
    assert (record.health.period, record.health.failure_threshold, record.request_timeout) == (2, 4, 7)
