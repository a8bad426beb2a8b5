"""One scheduler places at a time: the leader holds a PostgreSQL advisory lock, standbys wait for it.

The scheduler decides from state it keeps in memory (the queue, the GPUs in use) and starts
processes, so two deciding at once would hand a GPU out twice or start an instance twice. The
lock is a session lock on a connection of its own: when the leader dies, however it dies, its
connection closes, PostgreSQL releases the lock at once, and the standby waiting in
`pg_advisory_lock` becomes the leader and rebuilds its state from the database (`reconcile`).

A leader whose lock connection fails (PostgreSQL restarted, the network cut) can no longer tell
whether it still leads, so it stops leading (`Lost`: its work is cancelled) and waits for the lock
again as a standby; when it leads again it rebuilds everything from the database, as a fresh start
would. As Kubernetes controllers do when they lose their lease.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import AsyncIterator

import asyncpg
import structlog

from pier import passwords
from pier.config import Settings

log = structlog.get_logger("scheduler.leader")

# Any constant both schedulers agree on; the migrations' locks are hashes of a path, never this.
LOCK_KEY = 0x5049_4552_5343_48  # "PIERSCH"
# How often the leader checks that its lock connection still answers, and how long it may take.
CHECK_EVERY = 1.0
CHECK_TIMEOUT = 5.0


class Lost(Exception):
    """The lock connection failed: this scheduler may no longer lead."""


def application_name() -> str:
    """The lock connection's name in pg_stat_activity: which process leads, for people and tests."""
    return f"pier-scheduler-leader-{os.getpid()}"


class Leader:
    """The lock held on `conn`; `hold()` runs beside the leader's work and raises `Lost` if the
    connection fails."""

    def __init__(self, conn: asyncpg.Connection) -> None:
        self.conn = conn

    async def hold(self) -> None:
        while True:
            await asyncio.sleep(CHECK_EVERY)
            try:
                await asyncio.wait_for(self.conn.fetchval("SELECT 1"), CHECK_TIMEOUT)
            except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError, TimeoutError) as exc:
                log.error("lost the leader lock's connection; stopping", error=repr(exc))
                raise Lost(repr(exc)) from None


async def _connect(settings: Settings) -> asyncpg.Connection:
    """The lock's own connection; while PostgreSQL is down or starting, try again each second."""
    while True:
        try:
            return await asyncpg.connect(
                settings.database_url,
                password=passwords.read(settings.database_password_file),
                server_settings={"application_name": application_name()},
            )
        except (OSError, asyncpg.CannotConnectNowError) as exc:
            log.warning("cannot reach PostgreSQL for the leader lock; trying again", error=repr(exc))
            await asyncio.sleep(CHECK_EVERY)


@contextlib.asynccontextmanager
async def leadership(settings: Settings) -> AsyncIterator[Leader]:
    """Wait until this process holds the lock, then lead for the block."""
    conn = await _connect(settings)
    try:
        if not await conn.fetchval("SELECT pg_try_advisory_lock($1)", LOCK_KEY):
            log.info("standby: another scheduler leads; waiting for its lock")
            await conn.execute("SELECT pg_advisory_lock($1)", LOCK_KEY)
        log.info("leading")
        yield Leader(conn)
    finally:
        # Closing the session releases the lock; a connection already broken closes at once.
        with contextlib.suppress(Exception):
            await asyncio.wait_for(conn.close(), CHECK_TIMEOUT)
