"""Which instance takes a call, and where 503s are decided.

Each ready instance runs at most `workers` calls at once (its harness has that many workers). For a
slow function the gateway sends it exactly that many; for a fast one it also lets calls wait *at
the instance*, as many as the version serves within `PIPELINE_BUDGET` seconds (at most
`MAX_PER_WORKER` per worker), so a worker that finishes starts its next call at once instead of
idling for a network round trip through the gateway. The service time that decides it is a call's
round trip divided by the calls it shared the instance with: the round trip alone includes the wait
behind the calls sent ahead, so the deeper the pipeline the slower the function looked, and the
pipeline settled at a few calls, with the instance idle half the time. Measured (both in
docs/performance.md): strict one-call-per-worker admission made the gateway far slower than the
instance alone; the budget keeps a call's hidden wait at an instance to a few milliseconds, so
queueing and shedding still happen here. A call goes to the ready instance with the fewest in
flight. What exceeds the version's capacity waits in a bounded FIFO queue, and is shed (503 +
Retry-After) at once when the queue is full, or when it has waited past the queue timeout: never a
hang. A slot freed by a finished call is handed straight to the oldest waiter, so the queue is fair
and no wake-up is lost.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
from collections import deque
from collections.abc import Container, Iterable

from pier.events import InstanceRecord
from services.gateway.table import Table

# Documented in docs/gateway.md; a model API's route record may set its own.
DEFAULT_QUEUE_LENGTH = 100
DEFAULT_QUEUE_TIMEOUT = 10.0
# How long a call may wait at an instance behind others (seconds), and the most calls per worker
# sent at once: see the module's docstring.
PIPELINE_BUDGET = 0.01
MAX_PER_WORKER = 64
# A version's service time until its first calls finish: slow enough that admission starts strict.
INITIAL_SERVICE_TIME = 0.05


def _per_worker(service_time: float) -> int:
    """Calls sent at once per worker of a version's instances: 1 for slow functions."""
    return min(MAX_PER_WORKER, 1 + int(PIPELINE_BUDGET / max(service_time, 1e-6)))


INITIAL_DEPTH = _per_worker(INITIAL_SERVICE_TIME)


class _Waited(Exception):
    """A queued call's wait reached the queue timeout."""


def _expire(future: asyncio.Future[InstanceRecord | None]) -> None:
    if not future.done():
        future.set_exception(_Waited())


class Shed(Exception):
    """The call is refused for overload; `retry_after` is in whole seconds."""

    def __init__(self, reason: str, retry_after: int) -> None:
        super().__init__(reason)
        self.reason, self.retry_after = reason, retry_after


Key = tuple[str, int]


class _Waiter:
    __slots__ = ("exclude", "future")

    def __init__(self, future: asyncio.Future[InstanceRecord | None], exclude: Container[str]) -> None:
        self.future, self.exclude = future, exclude


class _Group:
    """One version's queue."""

    __slots__ = ("queue",)

    def __init__(self) -> None:
        self.queue: deque[_Waiter] = deque()


class Balancer:
    def __init__(
        self, table: Table, queue_length: int = DEFAULT_QUEUE_LENGTH, queue_timeout: float = DEFAULT_QUEUE_TIMEOUT
    ) -> None:
        self.table = table
        self.queue_length = queue_length
        self.queue_timeout = queue_timeout
        self.in_flight: dict[str, int] = {}
        self._groups: dict[Key, _Group] = {}
        # Seconds a call keeps a worker busy (see `release`), a moving average per version, and the
        # calls per worker it lets through (`_per_worker`), worked out when it changes, not per call.
        self._service: dict[Key, float] = {}
        self._depth: dict[Key, int] = {}
        self._turn = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        table.on_ready_change = self._ready_changed

    # ---- choosing ----------------------------------------------------------------------------

    def _pick(self, key: Key, exclude: Container[str]) -> InstanceRecord | None:
        """The ready instance with a free slot and the fewest calls in flight (ties rotate)."""
        per_worker = self._depth.get(key, INITIAL_DEPTH)
        best: InstanceRecord | None = None
        fewest = 0
        ties = 0
        for instance in self.table.ready(*key):
            if instance.instance_id in exclude:
                continue
            n = self.in_flight.get(instance.instance_id, 0)
            if n >= max(instance.workers, 1) * per_worker:
                continue
            if best is None or n < fewest:
                best, fewest, ties = instance, n, 1
            elif n == fewest:
                # Ties rotate, so sequential callers (all instances idle) still spread over every instance.
                ties += 1
                if (self._turn % ties) == 0:
                    best = instance
        self._turn += 1
        return best

    def _has_candidates(self, key: Key, exclude: Container[str]) -> bool:
        return any(i.instance_id not in exclude for i in self.table.ready(*key))

    async def acquire(
        self,
        model_id: str,
        version: int,
        exclude: Container[str] = (),
        queue_length: int = 0,
        queue_timeout: float = 0.0,
    ) -> InstanceRecord | None:
        """A slot on an instance (release it with `release`), or None when no instance is ready.

        Raises Shed when the version is at capacity and the queue is full or the wait too long."""
        key = (model_id, version)
        instance = self._pick(key, exclude)
        if instance is not None:
            self.in_flight[instance.instance_id] = self.in_flight.get(instance.instance_id, 0) + 1
            return instance
        if not self._has_candidates(key, exclude):
            return None
        group = self._groups.get(key)
        if group is None:
            group = self._groups[key] = _Group()
        limit = queue_length or self.queue_length
        if len(group.queue) >= limit:
            raise Shed(f"the queue is full ({limit} calls wait)", self._retry_after(key, group))
        loop = self._loop or asyncio.get_running_loop()
        self._loop = loop  # asyncio.get_running_loop() is a system call (getpid) per use on 3.11
        future: asyncio.Future[InstanceRecord | None] = loop.create_future()
        waiter = _Waiter(future, exclude)
        group.queue.append(waiter)
        timeout = queue_timeout or self.queue_timeout
        # A bare timer, not asyncio.timeout(): the context manager's bookkeeping showed in profiles.
        timer = loop.call_later(timeout, _expire, future)
        delivered = False
        try:
            granted = await future
            delivered = True
            return granted
        except _Waited:
            raise Shed(f"the call waited {timeout:g} s for capacity", self._retry_after(key, group)) from None
        finally:
            timer.cancel()
            if not delivered:
                if future.done() and not future.cancelled() and future.exception() is None:
                    if (slot := future.result()) is not None:
                        # Granted a slot in the same instant it gave up (the client left): pass it on.
                        self.release(slot, 0.0)
                else:
                    future.cancel()
                    with contextlib.suppress(ValueError):
                        group.queue.remove(waiter)

    def release(self, instance: InstanceRecord, elapsed: float) -> None:
        """A call on `instance` ended after `elapsed` seconds: its slot goes to the oldest waiter."""
        sharing = self.in_flight.get(instance.instance_id, 1)
        left = sharing - 1
        if left > 0:
            self.in_flight[instance.instance_id] = left
        else:
            # Dropped at zero so instances that come and go leave nothing behind.
            self.in_flight.pop(instance.instance_id, None)
        key = (instance.model_id, instance.version)
        if elapsed > 0:
            # Calls in flight at its end stand for those it waited behind (the same, in a steady
            # state); workers serve them side by side.
            per_call = elapsed * max(instance.workers, 1) / sharing
            service_time = self._service.get(key, INITIAL_SERVICE_TIME)
            self._service[key] = service_time = service_time + 0.2 * (per_call - service_time)
            self._depth[key] = _per_worker(service_time)
        group = self._groups.get(key)
        if group is not None:
            self._dispatch(key, group)

    def _dispatch(self, key: Key, group: _Group) -> None:
        while group.queue:
            waiter = group.queue[0]
            if waiter.future.done():  # timed out or cancelled; its own `finally` removes it too
                group.queue.popleft()
                continue
            if not self._has_candidates(key, waiter.exclude):
                group.queue.popleft()
                waiter.future.set_result(None)  # the version lost its instances: answer at once
                continue
            instance = self._pick(key, waiter.exclude)
            if instance is None:
                return
            group.queue.popleft()
            self.in_flight[instance.instance_id] = self.in_flight.get(instance.instance_id, 0) + 1
            waiter.future.set_result(instance)
        if not group.queue:  # no one waits: a queue is made again when a call must wait
            self._groups.pop(key, None)

    def _ready_changed(self, model_id: str, version: int) -> None:
        group = self._groups.get((model_id, version))
        if group is not None:
            self._dispatch((model_id, version), group)

    def _retry_after(self, key: Key, group: _Group) -> int:
        """Seconds until the queue ahead is likely served: its length x service time / workers."""
        workers = sum(max(i.workers, 1) for i in self.table.ready(*key)) or 1
        return max(1, math.ceil(len(group.queue) * self._service.get(key, INITIAL_SERVICE_TIME) / workers))

    # ---- what metrics show ---------------------------------------------------------------------

    def queued(self) -> Iterable[tuple[Key, int]]:
        return [(key, len(group.queue)) for key, group in self._groups.items()]
