"""The monitor probes harness instances: starting ones become ready, failing ones unhealthy and restarted."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import TypeVar

import msgspec
import pytest

from pier import bus
from pier.bus import Bus
from pier.config import Settings
from pier.events import (
    INSTANCES_BUCKET,
    HealthPolicy,
    InstanceReady,
    InstanceRecord,
    InstanceUnhealthy,
    RestartInstance,
    RouteRecord,
    VersionRoute,
)
from pier.spec import Entrypoint
from pier.tasks import cancel_and_wait
from services.monitor.__main__ import main as monitor_main
from services.monitor.prober import incarnation_id, running
from services.monitor.restarts import Restarter, restarts_bucket
from tests.integration.test_gateway import last_revision, start_harness
from tests.support import until

CODE = """
from pathlib import Path

def predict(x):
    return x

def health():
    healthy = Path("healthy.txt").read_text().strip() == "yes"
    with open("probes.log", "a") as log:
        log.write(f"{healthy}\\n")
    return healthy
"""
ENTRYPOINT = Entrypoint(file="model.py", function="predict", health_function="health")
# Fast probes, so a test sees a few periods in well under a second.
FAST = HealthPolicy(period=0.1, timeout=1.0, failure_threshold=3)
FAILURE_THRESHOLD = FAST.failure_threshold


def fast(_: InstanceRecord) -> HealthPolicy:
    return FAST


@contextlib.asynccontextmanager
async def restarting(b: Bus, policy: HealthPolicy = FAST) -> AsyncIterator[Restarter]:
    """The monitor's restarter, with every model API under `policy`."""
    serving = {str(v): VersionRoute(number=v, id=f"v{v}", entrypoint=ENTRYPOINT) for v in (1, 3)}
    route = RouteRecord(model_id="m1", name="m1", health=policy, versions=serving)
    restarter = Restarter(b, await restarts_bucket(b), lambda _: route)
    task = asyncio.create_task(restarter.run())
    try:
        yield restarter
    finally:
        await cancel_and_wait([task])


M = TypeVar("M", bound=msgspec.Struct)


class Collected:
    """Every message of some types on the bus, as a durable consumer sees them."""

    def __init__(self) -> None:
        self.items: list[msgspec.Struct] = []

    async def add(self, item: msgspec.Struct) -> None:
        self.items.append(item)

    def of(self, kind: type[M]) -> list[M]:
        return [i for i in self.items if isinstance(i, kind)]


@contextlib.asynccontextmanager
async def consuming(b: Bus, types: list[type], durable: str) -> AsyncIterator[Collected]:
    collected = Collected()
    task = asyncio.create_task(b.consume(types, collected.add, durable=durable))
    try:
        yield collected
    finally:
        await cancel_and_wait([task])


@pytest.fixture
async def b(settings: Settings) -> AsyncIterator[Bus]:
    async with bus.connect(settings, "test-monitor") as connected:
        yield connected


async def _put(b: Bus, record: InstanceRecord) -> int:
    kv = await b.kv(INSTANCES_BUCKET)
    return await kv.put(record.instance_id, msgspec.json.encode(record))


async def _stored(b: Bus, instance_id: str) -> InstanceRecord:
    kv = await b.kv(INSTANCES_BUCKET)
    return msgspec.json.decode((await kv.get(instance_id)).value or b"", type=InstanceRecord)


def _record(address: str) -> InstanceRecord:
    return InstanceRecord(instance_id=uuid.uuid4().hex, model_id="m1", version=3, address=address, workers=2)


async def test_starting_instance_becomes_ready_and_is_announced(settings: Settings, b: Bus, tmp_path: Path) -> None:
    async with start_harness(tmp_path, CODE, ENTRYPOINT, files={"healthy.txt": "yes"}) as harness:
        record = _record(harness.address)
        await _put(b, record)
        task = asyncio.create_task(monitor_main(settings))
        try:
            async with consuming(b, [InstanceReady], "t-ready") as seen:
                stored = await until(lambda: _ready(b, record.instance_id))
                events = await until(lambda: seen.of(InstanceReady))
        finally:
            await cancel_and_wait([task])
    # Only the state changed: what the scheduler wrote is kept.
    assert stored == msgspec.structs.replace(record, state="ready")
    assert len(events) == 1
    expected = InstanceReady(id=incarnation_id(record).hex, model_id="m1", version=3, instance_id=record.instance_id)
    assert events[0] == msgspec.structs.replace(expected, at=events[0].at)


async def _ready(b: Bus, instance_id: str) -> InstanceRecord | None:
    stored = await _stored(b, instance_id)
    return stored if stored.state == "ready" else None


async def test_failing_health_marks_unhealthy_after_threshold_failures_and_asks_for_restart(
    b: Bus, tmp_path: Path
) -> None:
    async with (
        start_harness(tmp_path, CODE, ENTRYPOINT, files={"healthy.txt": "yes"}) as harness,
        running(b, policy_for=fast) as prober,
        restarting(b),
        consuming(b, [InstanceUnhealthy], "t-unhealthy") as events,
        consuming(b, [RestartInstance], "t-restart") as commands,
    ):
        record = _record(harness.address)
        await _put(b, record)
        await until(lambda: _ready(b, record.instance_id))

        workdir = harness.log.parent
        (workdir / "healthy.txt").write_text("no")
        await until(lambda: _state_is(b, record.instance_id, "unhealthy"))
        restarts = await until(lambda: commands.of(RestartInstance))
        unhealthy = await until(lambda: events.of(InstanceUnhealthy))
        await until(lambda: record.instance_id not in prober.probing)

        probes = (workdir / "probes.log").read_text().split()
    assert probes.count("False") == FAILURE_THRESHOLD
    assert probes[-FAILURE_THRESHOLD:] == ["False"] * FAILURE_THRESHOLD
    assert [(c.instance_id, "health() returned" in c.reason) for c in restarts] == [(record.instance_id, True)]
    assert [(e.instance_id, e.model_id, e.version) for e in unhealthy] == [(record.instance_id, "m1", 3)]


async def _state_is(b: Bus, instance_id: str, state: str) -> bool:
    return (await _stored(b, instance_id)).state == state


async def test_unreachable_ready_instance_becomes_unhealthy(b: Bus, tmp_path: Path) -> None:
    async with (
        start_harness(tmp_path, CODE, ENTRYPOINT, files={"healthy.txt": "yes"}) as harness,
        running(b, policy_for=fast),
        restarting(b),
        consuming(b, [RestartInstance], "t-restart") as commands,
    ):
        record = _record(harness.address)
        await _put(b, record)
        await until(lambda: _ready(b, record.instance_id))
        harness.proc.kill()
        await until(lambda: _state_is(b, record.instance_id, "unhealthy"))
        restarts = await until(lambda: commands.of(RestartInstance))
    assert restarts[0].instance_id == record.instance_id


async def test_deleted_instance_stops_being_probed(b: Bus, tmp_path: Path) -> None:
    async with (
        start_harness(tmp_path, CODE, ENTRYPOINT, files={"healthy.txt": "no"}) as harness,
        running(b) as prober,
    ):
        record = _record(harness.address)
        revision = await _put(b, record)
        await until(lambda: prober.applied(revision) and record.instance_id in prober.probing)
        kv = await b.kv(INSTANCES_BUCKET)
        await kv.delete(record.instance_id)
        revision = await last_revision(kv)
        await until(lambda: prober.applied(revision))
        assert record.instance_id not in prober.probing


async def test_restarted_instance_is_probed_again(b: Bus, tmp_path: Path) -> None:
    async with (
        start_harness(tmp_path, CODE, ENTRYPOINT, files={"healthy.txt": "yes"}) as harness,
        running(b) as prober,
    ):
        record = msgspec.structs.replace(_record(harness.address), state="unhealthy")
        revision = await _put(b, record)
        await until(lambda: prober.applied(revision))
        assert record.instance_id not in prober.probing
        # A restart in place writes the record again, starting, with a new start time.
        await _put(b, msgspec.structs.replace(record, state="starting", started_at=record.started_at + 1))
        await until(lambda: _ready(b, record.instance_id))
