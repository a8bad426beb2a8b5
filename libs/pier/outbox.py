"""Transactional outbox and inbox: state changes and the messages they cause commit together.

`enqueue` writes a message in the caller's transaction; the relay publishes committed rows with
their id as Nats-Msg-Id and deletes them, so a crash at any point republishes at worst, and
JetStream's de-duplication and idempotent consumers absorb the repeat. `first_time` records a
handled message id in the same transaction as its effects.
"""

from __future__ import annotations

import asyncio
import contextlib

import asyncpg
import msgspec
import nats.errors
import structlog

from pier import events, telemetry
from pier.bus import Bus
from pier.events import Message

log = structlog.get_logger("outbox")


async def enqueue(conn: asyncpg.Connection, msg: Message, channel: str) -> None:
    await enqueue_raw(conn, msg.id, msg.subject(), events.encode(msg), channel)


async def enqueue_raw(conn: asyncpg.Connection, msg_id: str, subject: str, payload: bytes, channel: str) -> None:
    """Enqueue a message whose subject is not its type's (audit events: one per model API and action)."""
    headers = telemetry.inject({})
    await conn.execute(
        "INSERT INTO outbox (id, subject, payload, headers) VALUES ($1, $2, $3, $4) ON CONFLICT (id) DO NOTHING",
        msg_id,
        subject,
        payload,
        msgspec.json.encode(headers).decode(),
    )
    await conn.execute("SELECT pg_notify($1, '')", channel)


async def first_time(conn: asyncpg.Connection, message_id: str) -> bool:
    """True the first time a message id is seen; call inside the transaction that applies it."""
    row = await conn.fetchval("INSERT INTO inbox (id) VALUES ($1) ON CONFLICT (id) DO NOTHING RETURNING id", message_id)
    return row is not None


class Relay:
    """Publishes committed outbox rows, woken by NOTIFY and, as a safety net, once a second."""

    def __init__(self, pool: asyncpg.Pool, bus: Bus, channel: str) -> None:
        self.pool = pool
        self.bus = bus
        self.channel = channel
        self._wake = asyncio.Event()

    async def run(self) -> None:
        listener: asyncpg.Connection = await self.pool.acquire()
        await listener.add_listener(self.channel, self._notified)
        try:
            while True:
                self._wake.clear()
                try:
                    while await self.drain():
                        pass
                # NATS errors too: just after nats-server restarts, before JetStream has loaded its
                # streams, a publish gets "no responders"; and asyncpg's InterfaceError, which ends
                # a transaction whose connection PostgreSQL closed (a restart). The rows wait.
                except (asyncpg.PostgresError, asyncpg.InterfaceError, nats.errors.Error, OSError, TimeoutError) as exc:
                    log.warning("outbox relay will retry", error=repr(exc))
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(1.0):
                        await self._wake.wait()
        finally:
            with contextlib.suppress(Exception):
                await listener.remove_listener(self.channel, self._notified)
            await self.pool.release(listener)

    def _notified(self, *_: object) -> None:
        self._wake.set()

    async def drain(self, batch: int = 100) -> int:
        """Publish up to `batch` rows in order; return how many were sent."""
        async with self.pool.acquire() as conn, conn.transaction():
            rows = await conn.fetch(
                "SELECT seq, id, subject, payload, headers FROM outbox ORDER BY seq LIMIT $1 FOR UPDATE SKIP LOCKED",
                batch,
            )
            for row in rows:
                headers = msgspec.json.decode(row["headers"]) if row["headers"] else {}
                headers["Nats-Msg-Id"] = row["id"]
                await self.bus.js.publish(row["subject"], bytes(row["payload"]), headers=headers, timeout=5.0)
            if rows:
                await conn.execute("DELETE FROM outbox WHERE seq = ANY($1::bigint[])", [r["seq"] for r in rows])
            return len(rows)
