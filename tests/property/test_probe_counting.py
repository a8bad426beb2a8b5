"""Probe counting against the health policy (docs/health.md): the monitor's real probe loop, on an
event loop whose clock is virtual, so a policy of minutes runs in microseconds and every instant
is exact. For any policy (initial delay, period, timeout, failure threshold) and any run of probe
answers (how long each took, healthy or not) the loop must:

- send the first probe `initial_delay` after the instance started;
- start each next probe one interval after the last one started (the faster starting period
  until the first success, then `period`), or as soon as it ended when it took longer;
- count a probe that takes longer than `timeout` as failed;
- mark the instance ready at its first success, and unhealthy at the `failure_threshold`-th
  failure in a row after that, then stop probing.
"""

from __future__ import annotations

import asyncio
import selectors
import types
from typing import Any
from unittest import mock

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pier.events import InstanceRecord
from services.monitor import prober as prober_module
from services.monitor.policy import STARTING_PERIOD, Policy
from services.monitor.prober import Prober

TIMEOUTS = (0.05, 1.0, 5.0, 12.0)
# No duration equals a timeout: at a tie which of the two fires first is the loop's business.
DURATIONS = (0.001, 0.03, 0.5, 2.0, 7.0, 30.0)


class _Clock:
    now = 0.0


class _VirtualSelector(selectors.DefaultSelector):
    """Where the loop would block for `timeout` seconds, the clock jumps by that much instead."""

    def __init__(self, clock: _Clock) -> None:
        super().__init__()
        self.clock = clock

    def select(self, timeout: float | None = None) -> list[tuple[selectors.SelectorKey, int]]:
        events = super().select(0)
        if events:
            return events
        if timeout is None:
            raise RuntimeError("nothing is scheduled: the loop would wait forever")
        self.clock.now += timeout
        return []


class _VirtualLoop(asyncio.SelectorEventLoop):
    def __init__(self) -> None:
        self.clock = _Clock()
        super().__init__(_VirtualSelector(self.clock))

    def time(self) -> float:
        return self.clock.now


class _Answer:
    def __init__(self, healthy: bool) -> None:
        self.status = 200 if healthy else 503

    async def json(self, content_type: Any = None) -> dict[str, Any]:
        return {"healthy": False, "reason": "not yet"}


class _Session:
    """Answers `/health` from a script of (seconds taken, healthy), then never again."""

    def __init__(self, script: list[tuple[float, bool]], starts: list[float], exhausted: asyncio.Event) -> None:
        self.script, self.starts, self.exhausted = list(script), starts, exhausted

    def get(self, url: str, headers: dict[str, str]) -> Any:
        session = self

        class _Call:
            async def __aenter__(self) -> _Answer:
                loop = asyncio.get_running_loop()
                if not session.script:
                    session.exhausted.set()
                    await asyncio.Event().wait()
                session.starts.append(loop.time())
                took, healthy = session.script.pop(0)
                await asyncio.sleep(took)
                return _Answer(healthy)

            async def __aexit__(self, *_: object) -> None:
                return None

        return _Call()


def _expected(
    policy: Policy, state: str, script: list[tuple[float, bool]]
) -> tuple[list[float], list[tuple[float, str]]]:
    """The rules restated: probe start times and (time, mark) of each state change."""
    now, failures, starts, marks = policy.initial_delay, 0, [], []
    for took, healthy in script:
        starts.append(now)
        ok = healthy and took < policy.timeout
        ended = now + min(took, policy.timeout)
        if ok:
            failures = 0
            if state == "starting":
                state = "ready"
                marks.append((ended, "ready"))
        else:
            failures += 1
            if state == "ready" and failures >= policy.failure_threshold:
                marks.append((ended, "unhealthy"))
                break
        interval = min(STARTING_PERIOD, policy.period) if state == "starting" else policy.period
        now += max(interval, min(took, policy.timeout))
    return starts, marks


async def _run(policy: Policy, state: str, script: list[tuple[float, bool]]) -> tuple[list[float], list[Any]]:
    loop = asyncio.get_running_loop()
    starts: list[float] = []
    marks: list[tuple[float, str]] = []
    exhausted = asyncio.Event()
    prober = Prober(
        types.SimpleNamespace(),  # type: ignore[arg-type]  # the bus: only heartbeats, never due here
        None,  # type: ignore[arg-type]
        _Session(script, starts, exhausted),  # type: ignore[arg-type]
        None,  # type: ignore[arg-type]
        policy_for=lambda _: policy,
        heartbeat_every=float("inf"),
    )

    async def ready(record: InstanceRecord) -> None:
        marks.append((loop.time(), "ready"))

    async def unhealthy(record: InstanceRecord, reason: str) -> None:
        assert str(policy.failure_threshold) in reason
        marks.append((loop.time(), "unhealthy"))

    prober._mark_ready = ready  # type: ignore[method-assign]
    prober._mark_unhealthy = unhealthy  # type: ignore[method-assign]
    record = InstanceRecord(
        instance_id="i", model_id="m", version=1, address="127.0.0.1:1", state=state, started_at=0.0
    )  # type: ignore[arg-type]
    watched = prober_module._Watched(record, prober_module.ProbeCounter(policy, state))  # type: ignore[arg-type]
    task = asyncio.create_task(prober._probe_loop(watched))
    waiter = asyncio.create_task(exhausted.wait())
    await asyncio.wait([task, waiter], return_when=asyncio.FIRST_COMPLETED)
    for pending in (task, waiter):
        pending.cancel()
    await asyncio.gather(task, waiter, return_exceptions=True)
    if task.done() and not task.cancelled() and task.exception() is not None:
        raise task.exception()  # type: ignore[misc]
    return starts, marks


policies = st.builds(
    Policy,
    initial_delay=st.sampled_from((0.0, 0.5, 3.0, 30.0)),
    period=st.sampled_from((0.1, 1.0, 10.0)),
    timeout=st.sampled_from(TIMEOUTS),
    failure_threshold=st.integers(1, 5),
)
scripts = st.lists(st.tuples(st.sampled_from(DURATIONS), st.booleans()), max_size=25)


@given(policy=policies, state=st.sampled_from(("starting", "ready")), script=scripts)
def test_the_probe_loop_follows_the_policy(policy: Policy, state: str, script: list[tuple[float, bool]]) -> None:
    loop = _VirtualLoop()
    try:
        # The initial delay counts from the instance's start, read from the wall clock: the virtual one.
        with mock.patch.object(prober_module, "time", types.SimpleNamespace(time=loop.time)):
            starts, marks = loop.run_until_complete(_run(policy, state, script))
    finally:
        loop.close()
    want_starts, want_marks = _expected(policy, state, script)
    assert starts == pytest.approx(want_starts)
    assert [m for _, m in marks] == [m for _, m in want_marks]
    assert [t for t, _ in marks] == pytest.approx([t for t, _ in want_marks])
