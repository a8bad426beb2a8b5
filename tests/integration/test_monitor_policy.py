"""The per-model health policy from the route record, restarts with back-off, `failed` after repeated
crashes, and several monitor replicas sharing the instances."""

from __future__ import annotations

import time
import uuid
from pathlib import Path

import msgspec

from pier.bus import Bus
from pier.events import (
    ROUTES_BUCKET,
    HealthPolicy,
    InstanceRecord,
    InstanceRestarting,
    InstanceStopped,
    ModelFailed,
    RestartInstance,
    RouteRecord,
)
from services.monitor.membership import Membership, owner
from services.monitor.prober import running
from tests.integration.test_gateway import start_harness
from tests.integration.test_monitor import ENTRYPOINT, _put, _ready, _state_is, consuming, restarting
from tests.integration.test_monitor import b as b
from tests.support import until

CODE = """
import time
from pathlib import Path

def predict(x):
    return x

def health():
    mode = Path("healthy.txt").read_text().strip()
    with open("probes.log", "a") as log:
        log.write(f"{time.time()} {mode}\\n")
    if mode == "slow":
        time.sleep(2)
    return mode != "no"
"""


async def _route(b: Bus, model_id: str, policy: HealthPolicy) -> None:
    kv = await b.kv(ROUTES_BUCKET)
    await kv.put(model_id, msgspec.json.encode(RouteRecord(model_id=model_id, name=model_id, health=policy)))


def _probes(workdir: Path) -> list[tuple[float, str]]:
    path = workdir / "probes.log"
    if not path.exists():
        return []
    return [(float(t), mode) for t, mode in (line.split() for line in path.read_text().splitlines())]


async def test_no_probe_before_the_initial_delay(b: Bus, tmp_path: Path) -> None:
    await _route(b, "m1", HealthPolicy(initial_delay=1.5, period=0.1, failure_threshold=3))
    async with start_harness(tmp_path, CODE, ENTRYPOINT, files={"healthy.txt": "yes"}) as harness, running(b):
        record = InstanceRecord(instance_id=uuid.uuid4().hex, model_id="m1", version=1, address=harness.address)
        await _put(b, record)
        await until(lambda: _ready(b, record.instance_id))
        first_probe = _probes(harness.log.parent)[0][0]
    assert first_probe >= record.started_at + 1.5


async def test_a_probe_slower_than_the_timeout_has_failed(b: Bus, tmp_path: Path) -> None:
    await _route(b, "m1", HealthPolicy(period=0.1, timeout=0.3, failure_threshold=2))
    async with start_harness(tmp_path, CODE, ENTRYPOINT, files={"healthy.txt": "yes"}) as harness, running(b):
        record = InstanceRecord(instance_id=uuid.uuid4().hex, model_id="m1", version=1, address=harness.address)
        await _put(b, record)
        await until(lambda: _ready(b, record.instance_id))
        (harness.log.parent / "healthy.txt").write_text("slow")
        await until(lambda: _state_is(b, record.instance_id, "unhealthy"))
    assert [mode for _, mode in _probes(harness.log.parent)].count("slow") == 2


def _crash(instance_id: str, n: int) -> InstanceStopped:
    return InstanceStopped(model_id="m1", version=1, instance_id=instance_id, reason=f"exited with status 1 (#{n})")


async def test_restarts_back_off_then_the_model_api_fails(b: Bus) -> None:
    policy = HealthPolicy(restart_backoff=0.4, restart_backoff_max=10, max_restarts=3)
    instance_id = uuid.uuid4().hex
    async with (
        restarting(b, policy),
        consuming(b, [InstanceRestarting, ModelFailed], "t-restarts") as seen,
        consuming(b, [RestartInstance], "t-restart-cmds") as commands,
    ):
        for n in range(1, 5):
            crash = _crash(instance_id, n)
            await b.publish(crash)
            if n <= 3:
                await until(lambda n=n: len(commands.of(RestartInstance)) == n, within=15)  # type: ignore[misc]
        failed = await until(lambda: seen.of(ModelFailed))
    assert [(r.attempt, r.delay) for r in seen.of(InstanceRestarting)] == [(1, 0), (2, 0.4), (3, 0.8)]
    assert [r.instance_id for r in commands.of(RestartInstance)] == [instance_id] * 3
    assert failed[0].instance_id == instance_id and "3 restarts" in failed[0].reason


async def test_a_redelivered_crash_restarts_once(b: Bus) -> None:
    instance_id = uuid.uuid4().hex
    crash = _crash(instance_id, 1)
    async with restarting(b), consuming(b, [InstanceRestarting], "t-once") as seen:
        await b.publish(crash)
        await until(lambda: seen.of(InstanceRestarting))
        await b.publish(crash)  # the same event again: no second restart
    async with restarting(b), consuming(b, [InstanceRestarting], "t-once-2") as again:
        await b.publish(msgspec.structs.replace(crash, id=uuid.uuid4().hex, at=time.time()))
        # This consumer reads the stream from its start: the first restart, then the new crash's.
        await until(lambda: len(again.of(InstanceRestarting)) >= 2)
    # The repeat made no restart; a new crash is the second in the window: it waits the back-off.
    assert [r.attempt for r in again.of(InstanceRestarting)] == [1, 2]


async def test_monitor_replicas_split_the_instances_and_take_over_from_one_that_leaves(b: Bus) -> None:
    one, two = Membership(b, "one"), Membership(b, "two")
    await one.join()
    await two.join()
    await one.refresh()
    instances = [uuid.uuid4().hex for _ in range(40)]
    assert one.members == two.members == {"one", "two"}
    for i in instances:
        assert one.owns(i) != two.owns(i)  # probed by exactly one
        assert one.owns(i) == (owner({"one", "two"}, i) == "one")
    assert 0 < sum(one.owns(i) for i in instances) < len(instances)
    await two.leave()
    await one.refresh()
    assert all(one.owns(i) for i in instances)


async def test_membership_beats_leave_no_consumers_for_nats_to_keep(b: Bus) -> None:
    # KeyValue.keys() made an ephemeral consumer on every beat, which nats-server kept until it
    # expired: at rest, the costliest thing nats-server did.
    one, two = Membership(b, "one"), Membership(b, "two")
    await one.join()
    await two.join()
    for _ in range(3):
        await one.refresh()
        await two.refresh()
    assert one.members == two.members == {"one", "two"}
    info = await b.js.stream_info("KV_pier_monitors")
    assert info.state.consumer_count == 0
