"""The bus and the outbox: messages survive crashes and are handled once."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import asyncpg

from infra.embedded import PostgresServer
from pier import bus, db, events, outbox
from pier.config import Settings
from pier.events import BuildFailed, BuildStarted
from pier.tasks import cancel_and_wait
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
            await cancel_and_wait([relay_task, consumer])
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
            await cancel_and_wait([task])
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
            await cancel_and_wait([task])
    assert seen == [event.id]


async def test_a_consumer_cancelled_once_ends_even_while_a_handler_shrugs_off_a_cancel(settings: Settings) -> None:
    """One cancel() is what a service's shutdown gives its consumer; a handler mid-request (whose
    Python 3.11 wait_for swallowed that cancel) must not keep the consumer, and so the service, alive."""
    started = asyncio.Event()
    cancels: list[int] = []

    async def stubborn(event: BuildStarted) -> None:
        started.set()
        while True:
            try:
                await asyncio.sleep(3600)
            except asyncio.CancelledError:
                cancels.append(1)
                if len(cancels) > 1:
                    raise

    async with bus.connect(settings, "test") as b:
        await b.publish(BuildStarted(model_id="m", version=1))
        task = asyncio.create_task(b.consume([BuildStarted], stubborn, durable="stubborn"))
        try:
            await asyncio.wait_for(started.wait(), timeout=30)
            task.cancel()
            done, _ = await asyncio.wait([task], timeout=30)
            assert done, "the consumer still runs 30 s after its cancel"
        finally:
            await cancel_and_wait([task])
    assert len(cancels) == 2


async def test_the_relay_outlives_a_nats_server_with_no_stream_to_take_its_rows(
    settings: Settings, tmp_path: Path
) -> None:
    """As just after nats-server restarts, before JetStream has loaded its streams: publishing gets
    "no responders". The relay (and with it the api and the scheduler) once died of it."""
    pool = await db.create_pool(settings, "t")
    (tmp_path / "m").mkdir()
    await db.migrate(pool, tmp_path / "m")
    seen: list[str] = []

    async def handler(event: BuildStarted) -> None:
        seen.append(event.id)

    async with bus.connect(settings, "test") as b:
        await b.js.delete_stream(events.EVENTS_STREAM)
        tries: list[str] = []
        publish = b.js.publish

        async def counted(subject: str, *args: Any, **kwargs: Any) -> Any:
            tries.append(subject)
            return await publish(subject, *args, **kwargs)

        b.js.publish = counted  # type: ignore[method-assign]
        event = BuildStarted(model_id="m", version=1)
        async with pool.acquire() as conn, conn.transaction():
            await outbox.enqueue(conn, event, "t_outbox")
        relay = asyncio.create_task(outbox.Relay(pool, b, "t_outbox").run())
        try:
            await until(lambda: tries or relay.done())
            await until(lambda: len(tries) >= 2 or relay.done(), within=15)  # a retry, not a crash
            assert not relay.done(), relay.exception()
            await b.declare()
            consumer = asyncio.create_task(b.consume([BuildStarted], handler, durable="t3"))
            await until(lambda: seen, within=15)
            await cancel_and_wait([consumer])
        finally:
            await cancel_and_wait([relay])
    await db.close_pool(pool)
    assert seen == [event.id]


async def test_the_relay_outlives_its_database_connection_closing_mid_drain(
    settings: Settings, postgres: PostgresServer, tmp_path: Path
) -> None:
    """As when PostgreSQL restarts while the relay holds a transaction open around a publish: the
    transaction's end raises asyncpg's InterfaceError, which the relay (and with it the api) once
    died of. The row stays, and is published on the next try."""
    pool = await db.create_pool(settings, "t")
    (tmp_path / "m").mkdir()
    await db.migrate(pool, tmp_path / "m")
    seen: list[str] = []

    async def handler(event: BuildStarted) -> None:
        seen.append(event.id)

    async with bus.connect(settings, "test") as b:
        publishing, go_on = asyncio.Event(), asyncio.Event()
        publish = b.js.publish

        async def held(subject: str, *args: Any, **kwargs: Any) -> Any:
            if not go_on.is_set():
                publishing.set()
                await go_on.wait()
            return await publish(subject, *args, **kwargs)

        b.js.publish = held  # type: ignore[method-assign]
        event = BuildStarted(model_id="m", version=1)
        async with pool.acquire() as conn, conn.transaction():
            await outbox.enqueue(conn, event, "t_outbox")
        relay = asyncio.create_task(outbox.Relay(pool, b, "t_outbox").run())
        consumer = asyncio.create_task(b.consume([BuildStarted], handler, durable="t4"))
        try:
            await until(publishing.is_set)
            admin = await asyncpg.connect(postgres.url(settings.database_url.rsplit("/", 1)[1]))
            try:
                await admin.execute(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = 'pier-t'"
                )
            finally:
                await admin.close()
            go_on.set()
            await until(lambda: seen or relay.done(), within=15)
            assert not relay.done(), relay.exception()
            assert await until(lambda: _outbox_empty(settings), within=15)
        finally:
            await cancel_and_wait([relay, consumer])
    await db.close_pool(pool)
    assert seen == [event.id]
