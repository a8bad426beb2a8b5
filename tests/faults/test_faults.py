"""Faults under load: each service killed with SIGKILL in turn, nats-server and PostgreSQL restarted,
PIER_HOME filled, while the workload (tests/faults/workload.py) calls, deploys, stops and restarts.

For each fault: no call answered other than 200 / 503 / 504; none lost (sent to a gateway that
stayed up, and never answered); every deploy, stop and restart asked for before or during the fault
over within STUCK_BOUND after it; nothing built or started twice, no GPU handed out twice. The
supervisor (`make up`'s, as in production systemd or Kubernetes) restarts a killed service; the
servers are restarted by the test, as an operator would. The table is printed at the end of the run.
"""

from __future__ import annotations

import asyncio
import functools
import os
import signal
import time
from collections.abc import Callable

import pytest

from infra.supervisor import SERVICES, StartFailed
from pier.client import ApiError
from tests.faults.conftest import REPORT
from tests.faults.platform import Faulted
from tests.faults.records import builds_announced, runs_open_twice
from tests.faults.workload import DEPLOYED, Tally

pytestmark = [pytest.mark.faults, pytest.mark.timeout(300)]

STUCK_BOUND = 60.0  # after the fault ends, every operation asked for must be over within this
CALLS_AROUND = 30  # calls the workload makes before a fault and after it, at the least
HELD_FULL = 10.0  # PIER_HOME stays full this long after a deploy is asked for, unless it ends first


def _until(what: str, check: Callable[[], object], within: float = 60.0, every: float = 0.1) -> None:
    deadline = time.monotonic() + within
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(every)


def _calls(tally: Tally) -> int:
    return sum(tally.calls.values())


# The moment each kill waits for (the state of the version being deployed), so that it lands in the
# middle of that service's work: the builder's mid-build, the scheduler's mid-start, and so on.
# The builder's part is the exception: with the workload's image reused, a build is over in tens of
# milliseconds, which polling the api could miss for every deploy in a row; it is killed as soon as
# the api has accepted a deploy (`_accepted_deploy`), while the build is queued or running.
MID_WORK = {
    "api": {"queued", "building", "built", "starting"},
    "scheduler": {"built", "starting"},
    "monitor": {"starting"},
    "gateway": {"queued", "building", "built", "starting"},
}


def _deploying(faulted: Faulted) -> str:
    try:
        model = faulted.client.model(DEPLOYED)
    except (ApiError, OSError):
        return ""
    return str(max(model["versions"], key=lambda v: v["number"])["state"])


def _accepted_deploy(faulted: Faulted, since: float) -> bool:
    """A deploy asked for after `since` that the api has accepted and that is not over yet."""
    ops = faulted.workload.tally.ops
    return any(op.what == "deploy" and op.asked > since and op.version is not None and op.done is None for op in ops)


def _kill_service(faulted: Faulted, *, name: str) -> float:
    service = faulted.platform.services[name]
    assert service.proc is not None
    old = service.proc
    if name == "builder":
        since = time.monotonic()
        _until("a deploy accepted", lambda: _accepted_deploy(faulted, since), within=30, every=0.002)
    else:
        _until(f"a deploy where {name} has work", lambda: _deploying(faulted) in MID_WORK[name], within=30)
    killed = time.monotonic()
    os.kill(old.pid, signal.SIGKILL)
    _until(f"the supervisor to restart {name}", lambda: service.proc is not old and service.proc is not None)
    _until(f"{name} to answer again", lambda: _healthy(faulted))
    return killed


def _asked_since(faulted: Faulted, began: float) -> bool:
    return any(op.asked > began for op in faulted.workload.tally.ops)


def _restart_nats(faulted: Faulted) -> float:
    """Down until a deploy, stop or restart has been asked for meanwhile: the api then has a
    message to publish while there is no server to take it."""
    began = time.monotonic()
    faulted.nats.stop()
    try:
        _until("an operation asked for while nats-server is down", lambda: _asked_since(faulted, began))
    finally:
        faulted.nats.start()
    _until("the services to connect again", lambda: _healthy(faulted))
    return began


def _restart_postgres(faulted: Faulted) -> float:
    began = time.monotonic()
    faulted.postgres.stop()
    try:
        _until("an operation asked for while PostgreSQL is down", lambda: _asked_since(faulted, began))
    finally:
        faulted.postgres.start()
    return began


def _healthy(faulted: Faulted) -> bool:
    """Every service answers its health check (a service that crashed meanwhile is the supervisor's)."""
    try:
        asyncio.run(faulted.platform.wait_healthy(within=5.0))
    except (StartFailed, TimeoutError):
        return False
    return True


def _fill_disk(faulted: Faulted) -> float:
    """PIER_HOME full for a while (deploys keep being asked for), then room again."""
    if faulted.mount_refused:
        pytest.skip(faulted.mount_refused)
    filler = faulted.settings.home / "filler"
    began = time.monotonic()
    with open(filler, "wb") as f:
        chunk = b"\0" * (1 << 20)
        try:
            while True:
                f.write(chunk)
                f.flush()
        except OSError:
            pass
    try:
        tally = faulted.workload.tally
        # Held while a deploy asked for meanwhile gets as far as it can (a build, an instance's work
        # folder to write), for HELD_FULL s at most.
        _until("a deploy asked for while the disk is full", lambda: _asked_since(faulted, began))
        deploy = next(op for op in tally.ops if op.asked > began)
        _until("the deploy to end or time to pass", lambda: deploy.done or time.monotonic() > deploy.asked + HELD_FULL)
        _until("calls made while the disk is full", lambda: _calls(tally) >= 2 * CALLS_AROUND)
    finally:
        filler.unlink()
    return began


FAULTS: dict[str, Callable[[Faulted], float]] = {
    **{f"kill -9 {name}": functools.partial(_kill_service, name=name) for name in SERVICES},
    "restart nats-server": _restart_nats,
    "restart postgres": _restart_postgres,
    "PIER_HOME full": _fill_disk,
}


@pytest.mark.parametrize("fault", list(FAULTS))
def test_no_call_lost_nothing_stuck_or_done_twice(faulted: Faulted, fault: str) -> None:
    workload = faulted.workload
    before = asyncio.run(builds_announced(faulted.settings))
    seen_twice = set(faulted.sampler.started_twice), set(faulted.sampler.gpus_twice)
    processes = {name: service.proc for name, service in faulted.platform.services.items()}
    tally = workload.phase(fault)
    _until("calls before the fault", lambda: _calls(tally) >= CALLS_AROUND)
    began = FAULTS[fault](faulted)
    ended = time.monotonic()
    # Through the fault and out of it: calls after it, and every operation over or given up on.
    _until("calls after the fault", lambda: _calls(tally) >= 3 * CALLS_AROUND, within=120)
    workload.phase(f"after {fault}")
    hit = workload.ops_between(began, ended) + [op for op in tally.ops if op.asked > ended]
    _until(
        "every operation the fault may have hit to be over",
        lambda: all(op.done is not None for op in hit) or time.monotonic() > ended + STUCK_BOUND,
        within=STUCK_BOUND + 30,
    )
    after = asyncio.run(builds_announced(faulted.settings))
    builds_twice = sorted(k for k, n in after.items() if n > 1 and before.get(k, 0) <= 1)
    starts_twice = sorted(
        asyncio.run(runs_open_twice(faulted.settings)) | faulted.sampler.started_twice - seen_twice[0]
    )
    gpus_twice = sorted(faulted.sampler.gpus_twice - seen_twice[1])

    killed = fault.removeprefix("kill -9 ")
    crashed = sorted(
        name
        for name, service in faulted.platform.services.items()
        if service.proc is not processes[name] and name != killed
    )
    # A call in flight on a gateway killed with SIGKILL is cut with it (docs/reliability.md).
    gateway_killed = fault == "kill -9 gateway"
    cut = [f for f in tally.failures if gateway_killed and f[0] <= began + 0.5 and f[1] >= began]
    lost = len(tally.failures) - len(cut)
    stuck = [o for o in hit if o.done is None or o.done > ended + STUCK_BOUND]
    failed = all_failed = [o for o in hit if o.outcome.startswith(("failed", "refused"))]
    # The documented exception: an instance started while PIER_HOME is full cannot get its work
    # folder, and its deploy fails saying so (the version before it goes on serving).
    if fault == "PIER_HOME full":
        failed = [o for o in failed if "No space left on device" not in o.outcome]
    REPORT.append(
        {
            "fault": fault,
            **{k: tally.calls.get(k, 0) for k in ("200", "503", "504", "other", "refused")},
            "cut": len(cut),
            "lost": lost,
            "ops": len(hit),
            "stuck": len(stuck),
            "failed": len(all_failed),
            "builds 2x": len(builds_twice),
            "starts 2x": len(starts_twice),
            "gpus 2x": len(gpus_twice),
            "crashed": len(crashed),
            "notes": "; ".join(
                filter(
                    None,
                    [
                        *tally.other,
                        *(f"{o.what} {o.outcome or 'unfinished'}" for o in stuck + all_failed),
                        *(f"{name} crashed" for name in crashed),
                    ],
                )
            ),
        }
    )
    assert not crashed, f"{crashed} exited on their own; see their logs"
    assert tally.calls.get("other", 0) == 0, tally.other
    assert lost == 0, tally.failures
    assert not stuck, stuck
    assert not failed, failed
    assert not builds_twice
    assert not starts_twice
    assert not gpus_twice
