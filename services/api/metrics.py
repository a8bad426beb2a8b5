"""GET /metrics: the platform's own work in one Prometheus page.

Each replica of each service answers `pier.metrics.<service>` on the bus with its registry's text,
its samples labelled `replica` (pier.service); this page asks every replica at once and puts their
answers on one page, so one scrape target shows builds, placements and probes, per replica
(`sum without (replica)` adds them up). The gateway serves its own /metrics (one port per
replica, each scraped directly). Public, like /metrics everywhere: counts only, no names of secrets.
"""

from __future__ import annotations

import asyncio

from aiohttp import web
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg

from pier import metrics
from services.api.http import Context

SERVICES = ("api", "builder", "scheduler", "monitor")
# A service none of whose replicas answers within this many seconds shows as down, not as a slow
# page; once one has answered, the others have this much longer after each answer.
ASK_TIMEOUT = 1.0
MORE_WITHIN = 0.2


async def gather(nc: NATS, subject: str) -> list[str]:
    """Every answer to one request on `subject` (nats' request takes the first only)."""
    answers: asyncio.Queue[bytes] = asyncio.Queue()

    async def keep(msg: Msg) -> None:
        answers.put_nowait(msg.data)

    inbox = nc.new_inbox()
    sub = await nc.subscribe(inbox, cb=keep)
    try:
        await nc.publish(subject, b"", reply=inbox)
        texts: list[str] = []
        within = ASK_TIMEOUT
        while True:
            try:
                texts.append((await asyncio.wait_for(answers.get(), within)).decode())
            except TimeoutError:
                return texts
            within = MORE_WITHIN
    finally:
        await sub.unsubscribe()


def routes(ctx: Context) -> list[web.RouteDef]:
    async def ask(service: str) -> list[str]:
        try:
            return await gather(ctx.bus.nc, metrics.METRICS_SUBJECT.format(service=service))
        except Exception:  # a NATS hiccup: the service shows as down
            return []

    async def page(_: web.Request) -> web.Response:
        answers = await asyncio.gather(*(ask(service) for service in SERVICES))
        up = [
            "# HELP pier_service_up Replicas of the service that answered this scrape (0: down)",
            "# TYPE pier_service_up gauge",
            *(f'pier_service_up{{service="{s}"}} {len(a)}' for s, a in zip(SERVICES, answers, strict=True)),
        ]
        texts = [text for replicas in answers for text in replicas]
        return web.Response(text=metrics.merge([*texts, "\n".join(up)]), headers={"Content-Type": metrics.CONTENT_TYPE})

    return [web.get("/metrics", page)]
