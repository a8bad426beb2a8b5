"""GPUs as users see them: the inventory (`GET /v1/gpus`), the review of a spec before deploying it
(`POST /v1/plan`), a model API's usage (`GET /v1/models/{ref}/usage`), and the create-time checks of
what a model API asks for (GPU type and count, quota, disk size).

The scheduler owns the inventory and the queue: it republishes a summary to the `pier_gpus` bucket at
every change and answers plans over NATS request/reply, so these answers are the scheduler's own.
"""

from __future__ import annotations

import time
from typing import Annotated

import asyncpg
import msgspec
import nats.errors
import nats.js.errors
from aiohttp import web

from pier import config
from pier.bus import Bus
from pier.config import Settings
from pier.events import GPUS_BUCKET, GPUS_KEY, PLAN_SUBJECT, GpuAsk, GpuInventory
from services.api import store
from services.api.errors import Invalid, Problem
from services.api.http import Context, json_response, read_body

PLAN_TIMEOUT = 5.0


class Unavailable(Problem):
    status, title = 503, "Service Unavailable"


class Resources(msgspec.Struct, kw_only=True):
    """What one model API asks for, checked against the inventory and the quotas."""

    gpu_type: str | None
    gpu_count: int
    quota: str | None
    cpu: float
    memory: int
    disk_size: int


class PlanIn(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """A model API's spec as `POST /v1/models` takes it; only what decides placement matters here."""

    gpu_type: str | None = None
    gpu_count: Annotated[int, msgspec.Meta(ge=0, le=4)] = 0
    instances: Annotated[int, msgspec.Meta(ge=1, le=32)] = 2
    quota: str | None = None
    disk_size: str | None = None


class PlanOut(msgspec.Struct, kw_only=True):
    decision: str  # start | wait | impossible
    reason: str
    position: int | None = None
    ahead: int = 0
    simulated: bool = True
    gpu_type: str | None = None
    gpu_count: int = 0
    instances: int = 1
    quota: str | None = None


class UsageOut(msgspec.Struct, kw_only=True):
    model_id: str
    instance_seconds: float
    gpu_seconds: float
    running_instances: int


async def inventory(bus: Bus) -> GpuInventory | None:
    """The scheduler's last published inventory, or None before any scheduler ever ran."""
    try:
        kv = await bus.js.key_value(GPUS_BUCKET)
        entry = await kv.get(GPUS_KEY)
    except (nats.js.errors.BucketNotFoundError, nats.js.errors.KeyNotFoundError, nats.js.errors.NotFoundError):
        return None
    if not entry.value:
        return None
    return msgspec.json.decode(entry.value, type=GpuInventory)


async def check(
    bus: Bus,
    settings: Settings,
    gpu_type: str | None,
    gpu_count: int,
    instances: int,
    quota: str | None,
    disk: str | None,
) -> Resources:
    """Validate what a model API asks for; each problem is a 400 naming its field."""
    problems: list[tuple[str, str]] = []
    if gpu_count > 0:
        known = await inventory(bus)
        types = sorted(known.types) if known else []
        if gpu_type is None:
            problems.append(("gpu_type", f"is required when gpu_count > 0; there are: {', '.join(types) or 'none'}"))
        elif known is None:
            raise Unavailable("the scheduler has not published the GPU inventory yet; try again in a moment")
        elif gpu_type not in known.types:
            problems.append(("gpu_type", f"no GPUs of type {gpu_type!r}; there are: {', '.join(types) or 'none'}"))
        else:
            fits = sum(c // gpu_count for c in known.types[gpu_type].nodes.values())
            if fits < instances:
                problems.append(
                    (
                        "instances",
                        f"{instances} instances x {gpu_count} {gpu_type} GPUs (on one node each) can never fit: "
                        f"at most {fits}",
                    )
                )
    elif gpu_type is not None and gpu_count == 0:
        gpu_type = None  # CPU only: a type without a count asks for nothing
    quotas = config.parse_quotas(settings.quotas)
    chosen = None
    if quota is not None:
        chosen = quotas.get(quota)
        if chosen is None:
            problems.append(("quota", f"no quota named {quota!r}; there are: {', '.join(sorted(quotas)) or 'none'}"))
    else:
        chosen = quotas.get("default")
    disk_size = 0
    if disk is not None:
        try:
            disk_size = config.parse_size(disk)
        except ValueError as exc:
            problems.append(("disk_size", str(exc)))
    if problems:
        raise Invalid("; ".join(f"{f}: {p}" for f, p in problems), problems)
    return Resources(
        gpu_type=gpu_type,
        gpu_count=gpu_count,
        quota=chosen.name if chosen else None,
        cpu=chosen.cpu if chosen else 0.0,
        memory=chosen.memory if chosen else 0,
        disk_size=disk_size,
    )


async def store_resources(conn: asyncpg.Connection, model_id: str, res: Resources) -> None:
    await conn.execute(
        "UPDATE models SET gpu_type = $2, gpu_count = $3, quota = $4, cpu = $5, memory = $6, disk_size = $7"
        " WHERE id = $1",
        model_id,
        res.gpu_type,
        res.gpu_count,
        res.quota,
        res.cpu,
        res.memory,
        res.disk_size,
    )


async def usage(conn: asyncpg.Connection, model_id: str, now: float | None = None) -> UsageOut:
    """Ended runs plus the runs going on now, counted up to `now`."""
    now = time.time() if now is None else now
    ended = await conn.fetchrow(
        "SELECT coalesce(sum(instance_seconds), 0) AS i, coalesce(sum(gpu_seconds), 0) AS g FROM usage"
        " WHERE model_id = $1",
        model_id,
    )
    running = await conn.fetch("SELECT * FROM usage_open WHERE model_id = $1", model_id)
    open_i = sum(max(0.0, now - r["started_at"]) for r in running)
    open_g = sum(max(0.0, now - r["started_at"]) * r["gpu_count"] for r in running)
    return UsageOut(
        model_id=model_id,
        instance_seconds=float(ended["i"]) + open_i,
        gpu_seconds=float(ended["g"]) + open_g,
        running_instances=len(running),
    )


class Gpus:
    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx

    def routes(self) -> list[web.RouteDef]:
        return [
            web.get("/v1/gpus", self.list_gpus),
            web.post("/v1/plan", self.plan),
            web.get("/v1/models/{ref}/usage", self.usage),
        ]

    async def list_gpus(self, _: web.Request) -> web.Response:
        known = await inventory(self.ctx.bus)
        if known is None:
            raise Unavailable("the scheduler has not published the GPU inventory yet; try again in a moment")
        return json_response(known)

    async def plan(self, request: web.Request) -> web.Response:
        spec = await read_body(request, PlanIn)
        res = await check(
            self.ctx.bus, self.ctx.settings, spec.gpu_type, spec.gpu_count, spec.instances, spec.quota, spec.disk_size
        )
        ask = GpuAsk(gpu_type=res.gpu_type, gpu_count=res.gpu_count, instances=spec.instances)
        try:
            reply = await self.ctx.bus.nc.request(PLAN_SUBJECT, msgspec.json.encode(ask), timeout=PLAN_TIMEOUT)
        except (nats.errors.TimeoutError, nats.errors.NoRespondersError):
            raise Unavailable("the scheduler did not answer; is it running?") from None
        answer = msgspec.json.decode(reply.data)
        known = await inventory(self.ctx.bus)
        return json_response(
            PlanOut(
                decision=answer["decision"],
                reason=answer["reason"],
                position=answer.get("position"),
                ahead=answer.get("ahead", 0),
                simulated=known.simulated if known else True,
                gpu_type=res.gpu_type,
                gpu_count=res.gpu_count,
                instances=spec.instances,
                quota=res.quota,
            )
        )

    async def usage(self, request: web.Request) -> web.Response:
        async with self.ctx.pool.acquire() as conn:
            row = await store.resolve(conn, request.match_info["ref"])
            return json_response(await usage(conn, row["id"]))


def routes(ctx: Context) -> list[web.RouteDef]:
    return Gpus(ctx).routes()
