"""Probing instances' `/health` and turning the results into instance state, events and restarts.

One task per instance in `pier_instances`, started and cancelled by the KV watch. The rules
that decide what a probe result means live in policy.py; this module does the I/O. Each model
API's policy comes from its route record (`pier_routes`), read at every probe, so a change
applies at once. With several monitor replicas each probes only the instances it owns
(membership.py); the others keep following the records, ready to take over.
Restarting an unhealthy instance is restarts.py's business: this module only reports it.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Literal

import aiohttp
import msgspec
import structlog
from nats.js.kv import KeyValue

from pier import metrics
from pier.bus import Bus, kv_update, watch
from pier.events import INSTANCES_BUCKET, ROUTES_BUCKET, InstanceReady, InstanceRecord, InstanceUnhealthy, RouteRecord
from pier.http import SECRET_HEADER
from pier.tasks import cancel_and_wait
from services.monitor.membership import Membership
from services.monitor.policy import DEFAULT_POLICY, Action, Policy, ProbeCounter

# Served on `pier.metrics.monitor`, merged into the api's GET /metrics.
PROBES = metrics.REGISTRY.counter("pier_monitor_probes_total", "Health probes of instances, by outcome", ("outcome",))

log = structlog.get_logger("monitor.prober")

PolicyFor = Callable[[InstanceRecord], Policy]
# A ready instance writes a deployment log line this often, so a quiet log still says it is alive.
HEARTBEAT_EVERY = 60.0
# Fixed, so every monitor replica derives the same event ids and JetStream drops the copies.
_NAMESPACE = uuid.UUID("6f1f7a52-2d0e-4c55-9d6e-5f0e3c1b8a41")
_decoder = msgspec.json.Decoder(InstanceRecord)
_route_decoder = msgspec.json.Decoder(RouteRecord)


def incarnation_id(record: InstanceRecord) -> uuid.UUID:
    """One run of one instance: the same instance restarted in place has a new `started_at`."""
    return uuid.uuid5(_NAMESPACE, f"{record.instance_id}/{record.started_at!r}")


def ready_event(record: InstanceRecord) -> InstanceReady:
    return InstanceReady(
        id=incarnation_id(record).hex, model_id=record.model_id, version=record.version, instance_id=record.instance_id
    )


def default_policy(_: InstanceRecord) -> Policy:
    return DEFAULT_POLICY


class _NoWrite(Exception):
    """Raised inside a compare-and-set to leave the key as it is; `done` says whether the state is already right."""

    def __init__(self, done: bool) -> None:
        self.done = done


class _Watched:
    def __init__(self, record: InstanceRecord, counter: ProbeCounter) -> None:
        self.record = record
        self.counter = counter
        self.task: asyncio.Task[None] | None = None


class Prober:
    def __init__(
        self,
        bus: Bus,
        kv: KeyValue,
        session: aiohttp.ClientSession,
        tg: asyncio.TaskGroup,
        policy_for: PolicyFor | None = None,
        membership: Membership | None = None,
        heartbeat_every: float = HEARTBEAT_EVERY,
    ) -> None:
        self.bus = bus
        self.kv = kv
        self.session = session
        self.tg = tg
        self.routes: dict[str, RouteRecord] = {}
        self.policy_for = policy_for or self.route_policy
        self.membership = membership
        self.heartbeat_every = heartbeat_every
        self._watched: dict[str, _Watched] = {}
        self._revision = 0

    def route_policy(self, record: InstanceRecord) -> Policy:
        route = self.routes.get(record.model_id)
        return route.health if route is not None else DEFAULT_POLICY

    def owns(self, instance_id: str) -> bool:
        return self.membership is None or self.membership.owns(instance_id)

    async def follow_routes(self, kv: KeyValue, loaded: asyncio.Event) -> None:
        async for change in watch(kv, loaded):
            if change.value is None:
                self.routes.pop(change.key, None)
                continue
            try:
                self.routes[change.key] = _route_decoder.decode(change.value)
            except msgspec.DecodeError as exc:
                log.error("undecodable route record ignored", model_id=change.key, error=str(exc))

    @property
    def probing(self) -> set[str]:
        """Ids of the instances being probed now."""
        return {key for key, w in self._watched.items() if w.task is not None and not w.task.done()}

    def applied(self, revision: int) -> bool:
        return self._revision >= revision

    async def follow(self, loaded: asyncio.Event) -> None:
        async for change in watch(self.kv, loaded):
            self.apply(change.key, change.value, change.revision)

    def apply(self, key: str, value: bytes | None, revision: int) -> None:
        self._revision = max(self._revision, revision)
        watched = self._watched.get(key)
        if value is None:
            if watched is not None:
                self._forget(key)
            return
        try:
            record = _decoder.decode(value)
        except msgspec.DecodeError as exc:
            log.error("undecodable instance record ignored", instance_id=key, error=str(exc))
            return
        if watched is not None and _same_incarnation(watched.record, record) and watched.counter.state == record.state:
            # Our own write coming back, or a change of a field probing does not depend on.
            watched.record = record
            return
        if watched is not None:
            self._forget(key)
        watched = _Watched(record, ProbeCounter(self.policy_for(record), record.state))
        # An unhealthy instance waits for its restart, which arrives as a new record.
        if record.state != "unhealthy":
            watched.task = self.tg.create_task(self._probe_loop(watched), name=f"probe {key}")
        self._watched[key] = watched

    def _forget(self, key: str) -> None:
        watched = self._watched.pop(key)
        if watched.task is not None:
            watched.task.cancel()

    def stop(self) -> None:
        for key in list(self._watched):
            self._forget(key)

    async def _probe_loop(self, watched: _Watched) -> None:
        record, counter = watched.record, watched.counter
        bound = log.bind(instance_id=record.instance_id, model_id=record.model_id, version=record.version)
        # No probe before the initial delay, counted from the start of this run of the instance.
        await asyncio.sleep(max(0.0, record.started_at + counter.policy.initial_delay - time.time()))
        loop = asyncio.get_running_loop()
        last_heartbeat = loop.time()
        while True:
            began = loop.time()
            counter.policy = policy = self.policy_for(record)
            if not self.owns(record.instance_id):
                # Another replica probes it; we follow its record and take over if that replica goes.
                await asyncio.sleep(counter.interval())
                continue
            healthy, reason = await self._probe(record, policy.timeout)
            PROBES.inc("healthy" if healthy else "unhealthy")
            action = counter.on_success() if healthy else counter.on_failure()
            if not healthy:
                bound.debug("probe failed", state=counter.state, failures=counter.failures, reason=reason)
            if action is Action.MARK_READY:
                await _until_done(functools.partial(self._mark_ready, record), bound)
                bound.info("instance ready")
            elif action is Action.MARK_UNHEALTHY:
                why = f"{counter.failures} health checks failed in a row; the last: {reason}"
                await _until_done(functools.partial(self._mark_unhealthy, record, why), bound)
                bound.warning("instance unhealthy", reason=why)
                return
            elif healthy and counter.state == "ready" and began - last_heartbeat >= self.heartbeat_every:
                last_heartbeat = began
                with contextlib.suppress(Exception):  # a heartbeat lost to a NATS hiccup is not worth a retry
                    await self.bus.log(
                        record.model_id,
                        "deployment",
                        f"heartbeat: instance {record.instance_id} ready, health checks passing",
                        version=record.version,
                        instance_id=record.instance_id,
                    )
            await asyncio.sleep(max(0.0, counter.interval() - (loop.time() - began)))

    async def _probe(self, record: InstanceRecord, timeout: float) -> tuple[bool, str]:
        url, headers = f"http://{record.address}/health", {SECRET_HEADER: record.secret}
        try:
            async with asyncio.timeout(timeout), self.session.get(url, headers=headers) as response:
                if response.status == 200:
                    return True, ""
                return False, await _reason(response)
        except TimeoutError:
            return False, f"no answer within {timeout:g} s"
        except aiohttp.ClientError as exc:
            return False, f"{type(exc).__name__}: {exc}"

    async def _mark_ready(self, record: InstanceRecord) -> None:
        if await self._set_state(record, "ready"):
            await self.bus.publish(ready_event(record))

    async def _mark_unhealthy(self, record: InstanceRecord, reason: str) -> None:
        # KV first: the gateway stops routing to the instance as soon as it sees the change.
        if not await self._set_state(record, "unhealthy"):
            return
        cause = incarnation_id(record)
        event = InstanceUnhealthy(
            id=uuid.uuid5(cause, "unhealthy").hex,
            model_id=record.model_id,
            version=record.version,
            instance_id=record.instance_id,
            reason=reason,
        )
        # restarts.py turns the event into a restart, with back-off.
        await self.bus.publish(event)

    async def _set_state(self, record: InstanceRecord, state: Literal["ready", "unhealthy"]) -> bool:
        """Compare-and-set the state of this incarnation; False when the key is gone or holds another one."""

        def change(current: bytes | None) -> bytes | None:
            if current is None:
                return None  # deleted meanwhile: nothing to mark
            stored = _decoder.decode(current)
            if not _same_incarnation(stored, record):
                raise _NoWrite(done=False)  # another run of the instance: not ours to mark
            if stored.state == state:
                raise _NoWrite(done=True)  # another monitor replica got there first
            return msgspec.json.encode(msgspec.structs.replace(stored, state=state))

        written = False

        def tracking(current: bytes | None) -> bytes | None:
            nonlocal written
            new = change(current)
            written = new is not None
            return new

        try:
            await kv_update(self.kv, record.instance_id, tracking)
        except _NoWrite as skipped:
            return skipped.done
        return written


def _same_incarnation(a: InstanceRecord, b: InstanceRecord) -> bool:
    return a.started_at == b.started_at and a.address == b.address


async def _reason(response: aiohttp.ClientResponse) -> str:
    with contextlib.suppress(Exception):
        body = await response.json(content_type=None)
        if isinstance(body, dict) and body.get("reason"):
            return str(body["reason"])
    return f"/health answered HTTP {response.status}"


async def _until_done(action: Callable[[], Awaitable[None]], bound: structlog.stdlib.BoundLogger) -> None:
    """Retry a state change until NATS takes it: giving up would leave the instance in the wrong state."""
    delay = 0.2
    while True:
        try:
            await action()
            return
        except Exception:
            bound.exception("could not record a health change; retrying", retry_in=delay)
            await asyncio.sleep(delay)
            delay = min(delay * 2, 5.0)


@asynccontextmanager
async def running(
    bus: Bus,
    policy_for: PolicyFor | None = None,
    membership: Membership | None = None,
    heartbeat_every: float = HEARTBEAT_EVERY,
) -> AsyncIterator[Prober]:
    """Probe every instance in the bucket until the block ends; returns once the initial ones are known."""
    kv = await bus.kv(INSTANCES_BUCKET)
    routes = await bus.kv(ROUTES_BUCKET)
    # A fresh connection per probe, as kubelet does: a probe then also proves the instance still accepts them.
    connector = aiohttp.TCPConnector(limit=0, force_close=True)
    async with aiohttp.ClientSession(connector=connector) as session, asyncio.TaskGroup() as tg:
        prober = Prober(bus, kv, session, tg, policy_for, membership, heartbeat_every)
        routes_loaded, loaded = asyncio.Event(), asyncio.Event()
        # Policies first, so no instance is probed under the defaults by mistake.
        route_watch = tg.create_task(prober.follow_routes(routes, routes_loaded), name="follow routes")
        await routes_loaded.wait()
        watch = tg.create_task(prober.follow(loaded), name="follow instances")
        try:
            await loaded.wait()
            yield prober
        finally:
            # Both watches end before the probes stop, so no probe loop starts after stop().
            await cancel_and_wait([watch, route_watch])
            probes = [w.task for w in prober._watched.values() if w.task is not None]
            prober.stop()
            await cancel_and_wait(probes)
