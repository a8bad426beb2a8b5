"""Stop, restart and terminate a model API (`POST /v1/models/{ref}/stop`, `/restart`,
`DELETE /v1/models/{ref}`), and the purge of model APIs stopped for too long.

- stop: its instances stop and free their GPUs (billing stops); a waiting one leaves the queue.
- restart: every instance of the serving version starts again from the same image, on the GPUs it
  holds (clean working dirs); a stopped one is placed again (and may wait for GPUs).
- terminate: as stop, and the instances' directories are removed; the name is free again.
A `failed` model API accepts only terminate; everything else is a 409 saying so.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import asyncpg
import structlog
from aiohttp import web

from pier.events import RestartInstance, StopModel
from services.api import auth, store
from services.api.errors import Conflict
from services.api.http import Context, json_response
from services.api.lifecycle import Lifecycle

log = structlog.get_logger("api.control")

# How often the purge looks for long-stopped model APIs: hourly, or more often for a limit of a
# fraction of a day (a tenth of the limit, at least a second), so a short limit is kept closely.
PURGE_EVERY = 3600.0
STOPPABLE = ("building", "waiting", "starting", "running")
RESTARTABLE = ("starting", "running", "stopped")


def _refuse(model: asyncpg.Record, what: str) -> None:
    name, state = model["name"], model["state"]
    if state == "failed":
        raise Conflict(f"model API {name!r} is failed: only terminate is accepted ({model['reason']})")
    raise Conflict(f"model API {name!r} is {state}: it cannot be {what} now")


async def stop(lc: Lifecycle, ref: str, actor: str) -> str:
    async with lc.pool.acquire() as conn, conn.transaction():
        model = await store.resolve(conn, ref, lock=True)
        if model["state"] not in STOPPABLE:
            _refuse(model, "stopped")
        await lc.emit(conn, StopModel(model_id=model["id"], reason=f"stopped by {actor}", actor=actor))
        await conn.execute("UPDATE models SET queue_position = NULL WHERE id = $1", model["id"])
        await lc.set_state(conn, model, "stopping")
    await lc.publish_route(model["id"])
    return str(model["id"])


async def restart(lc: Lifecycle, ref: str, actor: str) -> str:
    async with lc.pool.acquire() as conn, conn.transaction():
        model = await store.resolve(conn, ref, lock=True)
        if model["state"] not in RESTARTABLE:
            _refuse(model, "restarted")
        version = model["latest"] or model["target"]
        live = await conn.fetch(
            "SELECT instance_id FROM instances WHERE model_id = $1 AND version = $2 AND state <> 'stopped'"
            " ORDER BY instance_id",
            model["id"],
            version,
        )
        if model["state"] in ("starting", "running") and live:
            # Each instance restarts where it is, on the GPUs it holds: a stop and a new placement
            # would hand its GPUs to whatever waits in line first. Every run gets a fresh work dir.
            for row in live:
                await lc.emit(
                    conn, RestartInstance(instance_id=row["instance_id"], reason=f"restarted by {actor}", actor=actor)
                )
            await lc.set_state(conn, model, "starting")
        else:
            await _place_again(lc, conn, model, version, actor)
    await lc.publish_route(model["id"])
    return str(model["id"])


async def _place_again(
    lc: Lifecycle, conn: asyncpg.Connection, model: asyncpg.Record, version: int, actor: str
) -> None:
    """Restart a model API with no instance running (stopped, or all of them gone): place it anew."""
    built = await conn.fetchval(
        "SELECT image IS NOT NULL FROM versions WHERE model_id = $1 AND number = $2", model["id"], version
    )
    stop_cmd = StopModel(model_id=model["id"], reason=f"restarting (by {actor})", actor=actor)
    await lc.emit(conn, stop_cmd)
    if built:
        # The same image again: every instance gets a fresh working dir from it.
        await lc.place(conn, model, version, stop_cmd)
        await lc.set_state(conn, model, "starting")
    else:
        # Never built yet: the build's success places it, as for a new model API.
        await lc.set_state(conn, model, "building")


async def terminate(lc: Lifecycle, ref: str, actor: str, reason: str = "") -> str:
    async with lc.pool.acquire() as conn, conn.transaction():
        model = await store.resolve(conn, ref, lock=True)
        await _terminate(lc, conn, model, actor, reason or f"terminated by {actor}")
    await lc.publish_route(model["id"])
    return str(model["id"])


async def _terminate(lc: Lifecycle, conn: asyncpg.Connection, model: asyncpg.Record, actor: str, reason: str) -> None:
    await lc.emit(conn, StopModel(model_id=model["id"], reason=reason, purge=True, actor=actor))
    await conn.execute("UPDATE models SET queue_position = NULL WHERE id = $1", model["id"])
    await lc.set_state(conn, model, "terminated", reason)


async def purge_stopped(lc: Lifecycle, older_than_days: float) -> list[str]:
    """Terminate every model API stopped for longer than `older_than_days`; returns their names."""
    purged = []
    async with lc.pool.acquire() as conn:
        rows = await conn.fetch(
            "SELECT id FROM models WHERE state = 'stopped' AND stopped_at < now() - make_interval(secs => $1)",
            older_than_days * 86400.0,
        )
    for row in rows:
        async with lc.pool.acquire() as conn, conn.transaction():
            model = await conn.fetchrow("SELECT * FROM models WHERE id = $1 FOR UPDATE", row["id"])
            if model is None or model["state"] != "stopped":
                continue
            days = f"{older_than_days:g}"
            await _terminate(lc, conn, model, "system", f"purged: stopped for more than {days} days")
        await lc.publish_route(row["id"])
        purged.append(model["name"])
        log.info("stopped model API purged", model_id=row["id"], name=model["name"])
    return purged


class Control:
    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx

    def routes(self) -> list[web.RouteDef]:
        return [
            web.post("/v1/models/{ref}/stop", self.stop),
            web.post("/v1/models/{ref}/restart", self.restart),
            web.delete("/v1/models/{ref}", self.terminate),
        ]

    async def _answer(self, model_id: str, status: int) -> web.Response:
        async with self.ctx.pool.acquire() as conn:
            row = await conn.fetchrow("SELECT * FROM models WHERE id = $1", model_id)
            return json_response(await store.model_out(conn, row, self.ctx.settings.gateway_url), status=status)

    async def stop(self, request: web.Request) -> web.Response:
        model_id = await stop(self.ctx.lifecycle, request.match_info["ref"], request[auth.USER])
        return await self._answer(model_id, 202)

    async def restart(self, request: web.Request) -> web.Response:
        model_id = await restart(self.ctx.lifecycle, request.match_info["ref"], request[auth.USER])
        return await self._answer(model_id, 202)

    async def terminate(self, request: web.Request) -> web.Response:
        model_id = await terminate(self.ctx.lifecycle, request.match_info["ref"], request[auth.USER])
        return await self._answer(model_id, 202)


def routes(ctx: Context) -> list[web.RouteDef]:
    return Control(ctx).routes()


def setup(app: web.Application, ctx: Context) -> None:
    """Purge long-stopped model APIs for as long as the app runs."""

    async def purger(_: web.Application) -> AsyncIterator[None]:
        every = min(PURGE_EVERY, max(1.0, ctx.settings.purge_after_days * 86400.0 / 10))

        async def loop() -> None:
            while True:
                try:
                    await purge_stopped(ctx.lifecycle, ctx.settings.purge_after_days)
                except Exception:
                    log.exception("purge of stopped model APIs failed; retrying later")
                await asyncio.sleep(every)

        task = asyncio.create_task(loop())
        yield
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task

    app.cleanup_ctx.append(purger)
