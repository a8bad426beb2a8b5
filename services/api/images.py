"""Garbage collection of images: an image that only terminated model APIs used is removed from the
artifact store once their instances have stopped (instances run from the image's runtime/ folder).

The api sweeps, since it alone knows which versions use which image. A build reuses an image that
already exists (same code, environment and entrypoint), so a sweep is skipped while any build is in
flight: the image it is about to reuse must not disappear under it. Environments are left alone:
they are shared by hash and cheap to keep compared with rebuilding them.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
from collections.abc import AsyncIterator
from pathlib import Path

import asyncpg
import structlog
from aiohttp import web

from pier.artifacts import Store
from services.api.http import Context

log = structlog.get_logger("api.images")
SWEEP_EVERY = 300.0

_UNUSED = """
SELECT DISTINCT v.image FROM versions v JOIN models m ON m.id = v.model_id
WHERE m.state = 'terminated' AND v.image IS NOT NULL
  AND NOT EXISTS (SELECT 1 FROM instances i WHERE i.model_id = m.id AND i.state <> 'stopped')
  AND NOT EXISTS (
    SELECT 1 FROM versions u JOIN models n ON n.id = u.model_id WHERE u.image = v.image AND n.state <> 'terminated'
  )
"""


async def collect(pool: asyncpg.Pool, store: Store) -> list[str]:
    """Remove every image nothing alive uses; returns the digests removed now."""
    async with pool.acquire() as conn:
        if await conn.fetchval("SELECT EXISTS (SELECT 1 FROM versions WHERE state IN ('queued', 'building'))"):
            return []
        digests = [r["image"] for r in await conn.fetch(_UNUSED)]
    removed = [d for d in digests if await asyncio.to_thread(_remove, store.image(d))]
    if removed:
        log.info("unused images removed", count=len(removed))
    return removed


def _remove(image: Path) -> bool:
    """Rename first, so a half-removed image never looks whole to a builder. Blocking."""
    trash = image.with_name(f".gc-{image.name}")
    try:
        os.rename(image, trash)
    except FileNotFoundError:
        return False
    shutil.rmtree(trash, ignore_errors=True)
    return True


def routes(_: Context) -> list[web.RouteDef]:
    return []


def setup(app: web.Application, ctx: Context) -> None:
    """Sweep for as long as the app runs."""
    store = Store(ctx.settings.artifacts)

    async def sweeper(_: web.Application) -> AsyncIterator[None]:
        async def loop() -> None:
            while True:
                try:
                    await collect(ctx.pool, store)
                except (asyncpg.PostgresError, OSError):
                    log.exception("image collection failed; retrying later")
                await asyncio.sleep(SWEEP_EVERY)

        task = asyncio.create_task(loop())
        yield
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task

    app.cleanup_ctx.append(sweeper)
