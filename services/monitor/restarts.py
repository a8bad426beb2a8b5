"""Restarts with back-off, and `failed` after repeated crashes.

A durable consumer of InstanceUnhealthy (from the probes) and InstanceStopped (a run that exited
on its own, reported by the scheduler). Each instance's recent restarts live in the `pier_restarts`
bucket, keyed by the cause's event id, so a redelivered event is counted once and waits only what
is left of its delay. `policy.backoff` decides: restart now, restart later, or give up, which
publishes ModelFailed (the api marks the model API `failed` and stops it). The delay is slept
inside the handler: the message stays in progress, and a replica that dies mid-wait leaves it to
another one.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

import msgspec
import structlog
from nats.js.kv import KeyValue

from pier import metrics
from pier.bus import Bus, kv_update
from pier.events import (
    RESTARTS_BUCKET,
    Event,
    HealthPolicy,
    InstanceRestarting,
    InstanceStopped,
    InstanceUnhealthy,
    ModelFailed,
    RestartInstance,
    RouteRecord,
)
from services.monitor.policy import backoff

log = structlog.get_logger("monitor.restarts")
RESTARTS = metrics.REGISTRY.counter(
    "pier_monitor_restarts_total", "Instances restarted (failed health checks or exits)"
)
GAVE_UP = metrics.REGISTRY.counter(
    "pier_monitor_model_failures_total", "Model APIs marked failed for restarting too often"
)

DURABLE = "monitor-restarts"
_history = msgspec.json.Decoder(dict[str, float])

RouteFor = Callable[[str], RouteRecord | None]


class Restarter:
    def __init__(self, bus: Bus, kv: KeyValue, route_for: RouteFor) -> None:
        self.bus = bus
        self.kv = kv
        self.route_for = route_for

    async def run(self) -> None:
        await self.bus.consume([InstanceUnhealthy, InstanceStopped], self.handle, durable=DURABLE, concurrency=64)

    async def handle(self, event: Event) -> None:
        if not isinstance(event, InstanceUnhealthy | InstanceStopped):
            return
        if isinstance(event, InstanceStopped) and not event.reason.startswith("exited"):
            return  # stopped or restarted on purpose
        route = self.route_for(event.model_id)
        if route is None:
            return  # terminated meanwhile
        if isinstance(event, InstanceStopped) and str(event.version) not in route.versions:
            # A version that never served: its first start failed, and the api fails the deploy.
            return
        policy: HealthPolicy = route.health
        seen_at = time.time()
        history: dict[str, float] = {}

        def record(current: bytes | None) -> bytes:
            nonlocal history
            history = _history.decode(current) if current else {}
            history.setdefault(event.id, seen_at)
            # Only what the window can still count is kept.
            horizon = history[event.id] - policy.restart_window
            history = {cause: t for cause, t in history.items() if t > horizon}
            return msgspec.json.encode(history)

        await kv_update(self.kv, event.instance_id, record)
        decision = backoff(policy, history, event.id, history[event.id])
        bound = log.bind(model_id=event.model_id, instance_id=event.instance_id, attempt=decision.attempt)
        if decision.give_up:
            reason = (
                f"{event.reason} ({decision.attempt - 1} restarts within {policy.restart_window:g} s;"
                f" the limit is {policy.max_restarts})"
            )
            bound.warning("restarted too often; the model API fails", reason=reason)
            GAVE_UP.inc()
            await self.bus.publish(
                ModelFailed(
                    id=event.derived_id("failed"),
                    model_id=event.model_id,
                    version=event.version,
                    instance_id=event.instance_id,
                    reason=reason,
                )
            )
            return
        await self.bus.publish(
            InstanceRestarting(
                id=event.derived_id("restarting"),
                model_id=event.model_id,
                version=event.version,
                instance_id=event.instance_id,
                reason=event.reason,
                delay=decision.delay,
                attempt=decision.attempt,
            )
        )
        # Measured from when the cause was first seen, so a redelivery does not wait twice.
        await asyncio.sleep(max(0.0, history[event.id] + decision.delay - time.time()))
        bound.info("restarting instance", delay=decision.delay)
        await self.bus.publish(
            RestartInstance(
                id=event.derived_id("restart"),
                instance_id=event.instance_id,
                reason=event.reason,
                request_timeout=route.request_timeout,
            )
        )
        RESTARTS.inc()


async def restarts_bucket(bus: Bus) -> KeyValue:
    return await bus.js.create_key_value(bucket=RESTARTS_BUCKET, history=1)
