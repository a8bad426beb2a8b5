"""GET /metrics: the platform's own work in one Prometheus page.

Each service answers `pier.metrics.<service>` on the bus with its registry's text (pier.service);
this page asks them all at once and merges the answers with the api's own metrics, so one scrape
target shows builds, placements and probes. The gateway serves its own /metrics (a gateway per
node, each scraped directly). Public, like /metrics everywhere: counts only, no names of secrets.
"""

from __future__ import annotations

import asyncio

from aiohttp import web

from pier import metrics
from services.api.http import Context

SERVICES = ("builder", "scheduler", "monitor")
# A service that does not answer within this many seconds shows as down, not as a slow page.
ASK_TIMEOUT = 1.0


def merge(texts: list[str]) -> str:
    """Concatenate exposition texts, keeping the first family of each metric name (a service
    sharing the api's process answers with the same registry: no family may appear twice)."""
    seen: set[str] = set()
    lines: list[str] = []
    keep = True
    for text in texts:
        for line in text.splitlines():
            if line.startswith("# HELP "):
                name = line.split(" ", 3)[2]
                keep = name not in seen
                seen.add(name)
            if keep and line:
                lines.append(line)
    return "\n".join(lines) + "\n"


def routes(ctx: Context) -> list[web.RouteDef]:
    async def ask(service: str) -> str | None:
        try:
            reply = await ctx.bus.nc.request(metrics.METRICS_SUBJECT.format(service=service), b"", timeout=ASK_TIMEOUT)
        except Exception:  # no responder, a timeout, a NATS hiccup: the service shows as down
            return None
        return reply.data.decode()

    async def page(_: web.Request) -> web.Response:
        answers = await asyncio.gather(*(ask(service) for service in SERVICES))
        up = [
            "# HELP pier_service_up Whether the service answered this scrape (1) or not (0)",
            "# TYPE pier_service_up gauge",
            *(
                f'pier_service_up{{service="{s}"}} {0 if a is None else 1}'
                for s, a in zip(SERVICES, answers, strict=True)
            ),
        ]
        texts = [metrics.REGISTRY.render(), *(a for a in answers if a is not None), "\n".join(up)]
        return web.Response(text=merge(texts), headers={"Content-Type": metrics.CONTENT_TYPE})

    return [web.get("/metrics", page)]
