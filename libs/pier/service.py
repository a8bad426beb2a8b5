"""The one runner every service uses: settings, logging, signals, readiness, graceful stop."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import sys
from collections.abc import Callable, Coroutine
from typing import Any

import structlog
import uvloop

from pier import config, metrics, telemetry
from pier.bus import Bus
from pier.config import Settings

HEALTH_SUBJECT = "pier.health.{service}"


async def announce_ready(bus: Bus, service: str) -> None:
    """Answer health requests on `pier.health.<service>` from now on: the supervisor and
    `pier status` ask there, and any replica may answer. Answer `pier.metrics.<service>` with
    the process's metrics (Prometheus text, labelled with this replica), which the api gathers
    from every replica into its GET /metrics."""

    async def answer(msg: object) -> None:
        await msg.respond(b"ok")  # type: ignore[attr-defined]

    replica = f"{socket.gethostname()}-{os.getpid()}"

    async def answer_metrics(msg: object) -> None:
        text = metrics.with_label(metrics.REGISTRY.render(), metrics.REPLICA_LABEL, replica)
        await msg.respond(text.encode())  # type: ignore[attr-defined]

    await bus.nc.subscribe(HEALTH_SUBJECT.format(service=service), cb=answer)
    await bus.nc.subscribe(metrics.METRICS_SUBJECT.format(service=service), cb=answer_metrics)
    structlog.get_logger(service).info("ready")


def run(service: str, main: Callable[[Settings], Coroutine[Any, Any, None]]) -> None:
    """Run `main` until it returns or SIGTERM/SIGINT/SIGHUP arrives; cancellation is the stop signal,
    so `main` cleans up in its `finally` and `async with` blocks."""
    settings = config.load()
    log = telemetry.setup(service, settings)

    async def guarded() -> None:
        task = asyncio.create_task(main(settings))
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):  # SIGHUP: the terminal closed
            loop.add_signal_handler(sig, task.cancel)
        try:
            await task
        except asyncio.CancelledError:
            log.info("stopped")

    try:
        uvloop.run(guarded())
    except Exception:
        log.exception("crashed")
        sys.exit(1)
