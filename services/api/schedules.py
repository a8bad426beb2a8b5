"""Scheduled rebuilds: a cron schedule runs a command in a fresh copy of a model API's serving source,
and the files as the command left them become a new version, built and deployed.

The api owns firing. Each slot is claimed by inserting the run row keyed (schedule, slot), so
however many api replicas look at the clock, one insert wins and the slot runs once. Only the
latest due slot is ever claimed: a platform that was down across several slots runs once when it
comes back, not once per missed slot. The builder runs the command (RunSchedule) and answers
ScheduleRunSucceeded or ScheduleRunFailed, which `run_finished` folds.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
from collections.abc import AsyncIterator, Callable
from typing import TYPE_CHECKING, Annotated

import asyncpg
import msgspec
import structlog
from aiohttp import web
from croniter import CroniterBadCronError, croniter

from pier import events, outbox
from pier.events import RunSchedule, ScheduleRunFailed, ScheduleRunSucceeded
from pier.spec import Entrypoint
from services.api import auth, environments
from services.api.channel import CHANNEL
from services.api.errors import Conflict, Invalid, NotFound
from services.api.http import Context, json_response, read_body
from services.api.sources import CodeOrigin
from services.api.store import resolve

if TYPE_CHECKING:
    # Only a type: lifecycle imports this module to fold run outcomes.
    from services.api.lifecycle import Lifecycle

log = structlog.get_logger("api")
# How often the api looks for due slots: cron's finest grain is a minute.
TICK = 5.0
LOG_LINES = 200


class CreateSchedule(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    cron: str
    command: str
    timeout: Annotated[float, msgspec.Meta(gt=0, le=24 * 3600)] = 3600.0


class RunOut(msgspec.Struct, kw_only=True):
    id: str
    schedule_id: str
    slot: str | None
    state: str
    reason: str
    log: list[str]
    version: int | None
    created_at: str
    finished_at: str | None


class ScheduleOut(msgspec.Struct, kw_only=True):
    id: str
    model_id: str
    cron: str
    command: str
    timeout: float
    created_by: str
    created_at: str
    next_run: str
    runs: list[RunOut] = msgspec.field(default_factory=list)


def _iso(value: dt.datetime | None) -> str | None:
    return value.isoformat() if value else None


def _run_out(row: asyncpg.Record) -> RunOut:
    return RunOut(
        id=row["id"],
        schedule_id=row["schedule_id"],
        slot=_iso(row["slot"]),
        state=row["state"],
        reason=row["reason"],
        log=msgspec.json.decode(row["log"], type=list[str]),
        version=row["version"],
        created_at=row["created_at"].isoformat(),
        finished_at=_iso(row["finished_at"]),
    )


def _check_cron(cron: str) -> None:
    try:
        croniter(cron)
    except (CroniterBadCronError, ValueError, KeyError) as exc:
        raise Invalid(
            f"cron: {cron!r} is not a cron expression ({exc})", [("cron", "is not a cron expression")]
        ) from None


def latest_slot(cron: str, now: dt.datetime) -> dt.datetime:
    """The most recent time at or before `now` that `cron` names."""
    it = croniter(cron, now + dt.timedelta(microseconds=1))
    slot: dt.datetime = it.get_prev(dt.datetime)
    return slot


async def start_run(
    conn: asyncpg.Connection, schedule: asyncpg.Record, slot: dt.datetime | None, actor: str
) -> str | None:
    """Claim a run (for `slot`, or by hand when None) and queue its command; None when the slot is
    already claimed or the model API has nothing serving to run from."""
    run_id = events.new_id()
    inserted = await conn.fetchval(
        "INSERT INTO schedule_runs (id, schedule_id, model_id, slot, state) VALUES ($1, $2, $3, $4, 'queued')"
        " ON CONFLICT (schedule_id, slot) DO NOTHING RETURNING id",
        run_id,
        schedule["id"],
        schedule["model_id"],
        slot,
    )
    if inserted is None:
        return None
    serving = await conn.fetchrow(
        "SELECT v.* FROM versions v JOIN models m ON m.id = v.model_id AND m.latest = v.number WHERE m.id = $1",
        schedule["model_id"],
    )
    if serving is None or not serving["image"]:
        await conn.execute(
            "UPDATE schedule_runs SET state = 'failed', reason = $2, finished_at = now() WHERE id = $1",
            run_id,
            "the model API has no serving version to run from",
        )
        return run_id
    await outbox.enqueue(
        conn,
        RunSchedule(
            id=run_id,
            model_id=schedule["model_id"],
            schedule_id=schedule["id"],
            run_id=run_id,
            command=schedule["command"],
            source=serving["source"],
            image=serving["image"],
            timeout=schedule["timeout"],
            actor=actor,
        ),
        CHANNEL,
    )
    return run_id


async def fire_due(pool: asyncpg.Pool, now: dt.datetime | None = None) -> int:
    """Claim and queue the latest due slot of every schedule; returns how many runs started."""
    now = now or dt.datetime.now(dt.UTC)
    started = 0
    async with pool.acquire() as conn:
        # A terminated model API's schedules stay listed but never fire.
        for schedule in await conn.fetch(
            "SELECT s.* FROM schedules s JOIN models m ON m.id = s.model_id WHERE m.state <> 'terminated'"
        ):
            slot = latest_slot(schedule["cron"], now)
            if slot <= schedule["created_at"]:
                continue  # the schedule did not exist yet at that slot
            async with conn.transaction():
                if await start_run(conn, schedule, slot, "schedule"):
                    started += 1
                    log.info("schedule fired", schedule_id=schedule["id"], slot=slot.isoformat())
    return started


def firing(ctx: Context, tick: float = TICK) -> Callable[[web.Application], AsyncIterator[None]]:
    """An aiohttp cleanup context: fires due slots while the api runs (once at start, then every tick)."""

    async def loop() -> None:
        while True:
            try:
                await fire_due(ctx.pool)
            except (asyncpg.PostgresError, OSError):
                log.exception("firing schedules failed; trying again")
            await asyncio.sleep(tick)

    async def context(_: web.Application) -> AsyncIterator[None]:
        task = asyncio.create_task(loop())
        yield
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task

    return context


async def run_finished(
    lifecycle: Lifecycle,
    conn: asyncpg.Connection,
    model: asyncpg.Record,
    event: ScheduleRunSucceeded | ScheduleRunFailed,
) -> None:
    """Fold a run's outcome: a failure is recorded and nothing else changes; a success becomes a new
    version from the files the command left, with the serving version's entrypoint and environment."""
    if isinstance(event, ScheduleRunFailed):
        await conn.execute(
            "UPDATE schedule_runs SET state = 'failed', reason = $2, log = $3, finished_at = now() WHERE id = $1",
            event.run_id,
            event.reason,
            msgspec.json.encode(event.log[-LOG_LINES:]).decode(),
        )
        return
    serving = await conn.fetchrow(
        "SELECT * FROM versions WHERE model_id = $1 AND number = $2", model["id"], model["latest"]
    )
    if serving is None or model["state"] in ("failed", "terminated", "stopping", "stopped"):
        await conn.execute(
            "UPDATE schedule_runs SET state = 'failed', reason = $2, log = $3, finished_at = now() WHERE id = $1",
            event.run_id,
            f"the model API is {model['state']}; no version was made",
            msgspec.json.encode(event.log[-LOG_LINES:]).decode(),
        )
        return
    base = await environments.base_for(conn, serving["environment"], serving["python_version"])
    entrypoint = msgspec.json.decode(serving["entrypoint"], type=Entrypoint)
    origin = CodeOrigin(source=event.source, environment=base)
    number = await lifecycle.add_version(
        conn, model, origin, entrypoint, f"schedule:{event.schedule_id}", version_id=event.derived_id("version")
    )
    await conn.execute(
        "UPDATE schedule_runs SET state = 'succeeded', version = $2, log = $3, finished_at = now() WHERE id = $1",
        event.run_id,
        number,
        msgspec.json.encode(event.log[-LOG_LINES:]).decode(),
    )


class Schedules:
    def __init__(self, ctx: Context) -> None:
        self.pool = ctx.pool

    def routes(self) -> list[web.RouteDef]:
        base = "/v1/models/{ref}/schedules"
        return [
            web.get(base, self.list),
            web.post(base, self.create),
            web.delete(base + "/{id}", self.delete),
            web.get(base + "/{id}/runs", self.runs),
            web.post(base + "/{id}/runs", self.run_now),
        ]

    async def _out(self, conn: asyncpg.Connection, row: asyncpg.Record, runs: int = 10) -> ScheduleOut:
        recent = await conn.fetch(
            "SELECT * FROM schedule_runs WHERE schedule_id = $1 ORDER BY created_at DESC LIMIT $2", row["id"], runs
        )
        upcoming: dt.datetime = croniter(row["cron"], dt.datetime.now(dt.UTC)).get_next(dt.datetime)
        return ScheduleOut(
            id=row["id"],
            model_id=row["model_id"],
            cron=row["cron"],
            command=row["command"],
            timeout=row["timeout"],
            created_by=row["created_by"],
            created_at=row["created_at"].isoformat(),
            next_run=upcoming.isoformat(),
            runs=[_run_out(r) for r in recent],
        )

    async def _schedule(self, conn: asyncpg.Connection, request: web.Request) -> asyncpg.Record:
        model = await resolve(conn, request.match_info["ref"])
        row = await conn.fetchrow(
            "SELECT * FROM schedules WHERE id = $1 AND model_id = $2", request.match_info["id"], model["id"]
        )
        if row is None:
            raise NotFound(f"model API {model['name']!r} has no schedule {request.match_info['id']!r}")
        return row

    async def list(self, request: web.Request) -> web.Response:
        async with self.pool.acquire() as conn:
            model = await resolve(conn, request.match_info["ref"])
            rows = await conn.fetch("SELECT * FROM schedules WHERE model_id = $1 ORDER BY created_at", model["id"])
            return json_response([await self._out(conn, r) for r in rows])

    async def create(self, request: web.Request) -> web.Response:
        spec = await read_body(request, CreateSchedule)
        _check_cron(spec.cron)
        if not spec.command.strip():
            raise Invalid("command: must not be empty", [("command", "is empty")])
        async with self.pool.acquire() as conn:
            model = await resolve(conn, request.match_info["ref"])
            if model["state"] == "terminated":
                raise Conflict(f"model API {model['name']!r} is terminated")
            row = await conn.fetchrow(
                "INSERT INTO schedules (id, model_id, cron, command, timeout, created_by)"
                " VALUES ($1, $2, $3, $4, $5, $6) RETURNING *",
                events.new_id()[:12],
                model["id"],
                spec.cron,
                spec.command,
                spec.timeout,
                request[auth.USER],
            )
            return json_response(await self._out(conn, row), status=201)

    async def delete(self, request: web.Request) -> web.Response:
        async with self.pool.acquire() as conn:
            row = await self._schedule(conn, request)
            await conn.execute("DELETE FROM schedules WHERE id = $1", row["id"])
        return web.Response(status=204)

    async def runs(self, request: web.Request) -> web.Response:
        async with self.pool.acquire() as conn:
            row = await self._schedule(conn, request)
            return json_response((await self._out(conn, row, runs=100)).runs)

    async def run_now(self, request: web.Request) -> web.Response:
        async with self.pool.acquire() as conn, conn.transaction():
            row = await self._schedule(conn, request)
            run_id = await start_run(conn, row, None, request[auth.USER])
            run = await conn.fetchrow("SELECT * FROM schedule_runs WHERE id = $1", run_id)
        return json_response(_run_out(run), status=202)


def routes(ctx: Context) -> list[web.RouteDef]:
    return Schedules(ctx).routes()


def setup(app: web.Application, ctx: Context) -> None:
    app.cleanup_ctx.append(firing(ctx))
