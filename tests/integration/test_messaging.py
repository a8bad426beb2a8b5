"""The bus and the outbox: messages survive crashes and are handled once."""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path

from pier import bus, db, outbox
from pier.config import Settings
from pier.events import BuildFailed, BuildStarted
from tests.support import until


async def test_outbox_row_committed_with_state_reaches_consumer_once(settings: Settings, tmp_path: Path) -> None:
    pool = await db.create_pool(settings, "t")
    (tmp_path / "m").mkdir()
    await db.migrate(pool, tmp_path / "m")
    seen: list[str] = []

    async def handler(event: BuildStarted) -> None:
        seen.append(event.id)

    async with bus.connect(settings, "test") as b:
        event = BuildStarted(model_id="m", version=1)
        async with pool.acquire() as conn, conn.transaction():
            await outbox.enqueue(conn, event, "t_outbox")
        relay = outbox.Relay(pool, b, "t_outbox")
        # The same row published twice (a relay that crashed before deleting it) arrives once.
        await b.publish(event)
        async with asyncio.TaskGroup() as tg:
            relay_task = tg.create_task(relay.run())
            consumer = tg.create_task(b.consume([BuildStarted], handler, durable="t"))
            await until(lambda: seen)
            await asyncio.sleep(0.3)
            relay_task.cancel()
            consumer.cancel()
    await db.close_pool(pool)
    assert seen == [event.id]
    assert await _outbox_empty(settings)


async def _outbox_empty(settings: Settings) -> bool:
    pool = await db.create_pool(settings, "t")
    try:
        return await pool.fetchval("SELECT count(*) FROM outbox") == 0
    finally:
        await db.close_pool(pool)


async def test_message_is_redelivered_when_handler_dies_mid_message(settings: Settings) -> None:
    attempts: list[int] = []

    async def crashing(event: BuildFailed) -> None:
        attempts.append(1)
        if len(attempts) == 1:
            raise RuntimeError("simulated crash in the middle of handling")

    async with bus.connect(settings, "test") as b:
        await b.publish(BuildFailed(model_id="m", version=1, reason="x"))
        task = asyncio.create_task(b.consume([BuildFailed], crashing, durable="t2"))
        try:
            await until(lambda: len(attempts) >= 2)
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
    assert len(attempts) == 2


async def test_migrations_apply_once(settings: Settings, tmp_path: Path) -> None:
    pool = await db.create_pool(settings, "m")
    (tmp_path / "sql").mkdir()
    (tmp_path / "sql" / "001_a.sql").write_text("CREATE TABLE a (x int);")
    first = await db.migrate(pool, tmp_path / "sql")
    second = await db.migrate(pool, tmp_path / "sql")
    await db.close_pool(pool)
    assert "001_a.sql" in first
    assert second == []


async def test_an_idle_batch_consumer_keeps_running(settings: Settings) -> None:
    """Fetching from an empty stream times out every few seconds; the consumer carries on."""
    seen: list[str] = []

    async def handler(event: BuildStarted) -> None:
        seen.append(event.id)

    async with bus.connect(settings, "test") as b:
        task = asyncio.create_task(b.consume([BuildStarted], handler, durable="idle", concurrency=2))
        try:
            await asyncio.sleep(6)  # longer than one empty fetch: the thing under test is idling
            assert not task.done()
            event = BuildStarted(model_id="m", version=1)
            await b.publish(event)
            await until(lambda: seen)
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
    assert seen == [event.id]
