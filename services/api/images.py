"""Garbage collection of images: an image that only terminated model APIs used is removed from the
artifact store once their instances have stopped (instances run from the image's runtime/ folder).

The api sweeps, since it alone knows which versions use which image. A build reuses an image that
already exists (same code, environment and entrypoint), and the version it builds records that
image only when the api handles its BuildSucceeded: until then the database cannot say the image is
wanted. So a builder touches an image as it reuses it (services/builder/images.py, `reuse`), a new
image is fresh from its commit, and the sweep spares any image used within RECENTLY_USED. The sweep
moves an image aside before it reads that time, and puts it back if it finds it recent, so a touch
and a sweep cannot pass each other unseen: either the touch lands before the move, and the sweep
sees it, or it misses the image, and the builder builds it again. Environments are left alone: they
are shared by hash and cheap to keep compared with rebuilding them.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import time
from collections.abc import AsyncIterator
from pathlib import Path

import asyncpg
import structlog
from aiohttp import web

from pier.artifacts import Store
from services.api.http import Context

log = structlog.get_logger("api.images")
SWEEP_EVERY = 300.0
# Far longer than a build takes from reusing an image to the api recording it on the version.
RECENTLY_USED = 3600.0

_UNUSED = """
SELECT DISTINCT v.image FROM versions v JOIN models m ON m.id = v.model_id
WHERE m.state = 'terminated' AND v.image IS NOT NULL
  AND NOT EXISTS (SELECT 1 FROM instances i WHERE i.model_id = m.id AND i.state <> 'stopped')
  AND NOT EXISTS (
    SELECT 1 FROM versions u JOIN models n ON n.id = u.model_id WHERE u.image = v.image AND n.state <> 'terminated'
  )
"""


async def collect(pool: asyncpg.Pool, store: Store, *, recently_used: float = RECENTLY_USED) -> list[str]:
    """Remove every image nothing alive uses and no build used within `recently_used` seconds;
    returns the digests removed now."""
    async with pool.acquire() as conn:
        digests = [r["image"] for r in await conn.fetch(_UNUSED)]
    cutoff = time.time() - recently_used
    removed = [d for d in digests if await asyncio.to_thread(_remove, store.image(d), cutoff)]
    if removed:
        log.info("unused images removed", count=len(removed))
    return removed


def _remove(image: Path, cutoff: float) -> bool:
    """Remove `image` unless it was used (touched, or committed) after `cutoff`. Blocking.

    Moved aside first, so a half-removed image never looks whole to a builder, and so a builder's
    touch either lands before the move (and is seen here) or finds no image (and builds one).
    """
    trash = image.with_name(f".gc-{image.name}")
    try:
        os.rename(image, trash)
    except FileNotFoundError:
        return False
    if trash.stat().st_mtime >= cutoff:
        try:
            os.rename(trash, image)
        except OSError:
            # A builder committed the same image again meanwhile: that one stays, this copy goes.
            shutil.rmtree(trash, ignore_errors=True)
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
