"""The transactional outbox (libs/pier/outbox.py) on real PostgreSQL and NATS JetStream: any
interleaving of producers (committing or rolling back), relay runs that crash after publishing
some rows but before deleting them, and consumers that crash before or after committing their
effect (their message then comes back: a nak stands in for the ack wait running out) gives
exactly one effect per committed message, and none for a message whose transaction rolled back."""

from __future__ import annotations

import asyncio
import tempfile
import types
import uuid
from pathlib import Path
from typing import Any

import asyncpg
import nats.errors
from hypothesis import example, given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st

from pier import bus, db, events, outbox
from pier.config import Settings

CHANNEL = "fuzz_outbox"
# Each example commits, publishes and consumes for real: a quarter of the profile's examples, and no
# deadline: a busy machine must not make real I/O flaky (pytest-timeout still bounds the test).
settings_for_io = hypothesis_settings(max_examples=max(8, hypothesis_settings().max_examples // 4), deadline=None)
steps = st.lists(
    st.one_of(
        st.tuples(st.just("produce"), st.booleans()),  # commits?
        st.tuples(st.just("relay"), st.none() | st.integers(0, 3)),  # crashes after this many publishes
        st.tuples(st.just("consume"), st.sampled_from(["ack", "crash before commit", "crash after commit"])),
    ),
    max_size=20,
)


class _Crash(Exception):
    pass


class _CrashingJetStream:
    """Publishes `limit` messages, then dies as the process would: before the relay deletes the rows."""

    def __init__(self, js: Any, limit: int | None) -> None:
        self.js, self.limit = js, limit

    async def publish(self, *args: Any, **kwargs: Any) -> Any:
        if self.limit is not None:
            if self.limit == 0:
                raise _Crash
            self.limit -= 1
        return await self.js.publish(*args, **kwargs)


class _World:
    def __init__(self, pool: asyncpg.Pool, b: bus.Bus) -> None:
        self.pool, self.bus = pool, b

    async def example(self, plan: list[tuple[str, Any]]) -> None:
        subject = f"{events.EVENTS_PREFIX}.fuzz.{uuid.uuid4().hex}"
        sub = await self.bus.js.pull_subscribe(subject, durable=f"fuzz-{uuid.uuid4().hex[:12]}")
        committed: set[str] = set()
        rolled_back: set[str] = set()
        try:
            for step, arg in plan:
                if step == "produce":
                    msg_id = uuid.uuid4().hex
                    await self._produce(msg_id, subject, commit=arg)
                    (committed if arg else rolled_back).add(msg_id)
                elif step == "relay":
                    await self._relay(arg)
                else:
                    await self._consume(sub, arg, wait=0.05)
            # The crashes are over: the relay and the consumer run until nothing is left.
            while await self._relay(None):
                pass
            while await self._consume(sub, "ack", wait=0.5):
                pass
            rows = await self.pool.fetch(
                "SELECT id, count(*) AS n FROM fuzz_effects WHERE id = ANY($1::text[]) GROUP BY id",
                list(committed | rolled_back),
            )
            assert {r["id"]: r["n"] for r in rows} == dict.fromkeys(committed, 1)
        finally:
            await sub.unsubscribe()

    async def _produce(self, msg_id: str, subject: str, commit: bool) -> None:
        async with self.pool.acquire() as conn:
            try:
                async with conn.transaction():
                    await outbox.enqueue_raw(conn, msg_id, subject, msg_id.encode(), CHANNEL)
                    if not commit:
                        raise _Crash
            except _Crash:
                pass

    async def _relay(self, crash_after: int | None) -> int:
        relay = outbox.Relay(self.pool, types.SimpleNamespace(js=_CrashingJetStream(self.bus.js, crash_after)), CHANNEL)  # type: ignore[arg-type]
        try:
            return await relay.drain(batch=3)
        except _Crash:
            return 0

    async def _consume(self, sub: Any, fate: str, wait: float) -> bool:
        try:
            [msg] = await sub.fetch(1, timeout=wait)
        except nats.errors.TimeoutError:
            return False
        msg_id = msg.data.decode()
        async with self.pool.acquire() as conn:
            try:
                async with conn.transaction():
                    if await outbox.first_time(conn, msg_id):
                        await conn.execute("INSERT INTO fuzz_effects (id) VALUES ($1)", msg_id)
                    if fate == "crash before commit":
                        raise _Crash
            except _Crash:
                pass
        await (msg.ack() if fate == "ack" else msg.nak())
        return True


async def _world(settings_: Settings) -> tuple[asyncpg.Pool, Any, Any]:
    pool = await db.create_pool(settings_, "outbox-fuzz")
    with tempfile.TemporaryDirectory() as none:
        await db.migrate(pool, Path(none))  # the shared outbox and inbox tables
    await pool.execute("CREATE TABLE fuzz_effects (id TEXT NOT NULL)")  # no key: a second effect must show
    connection = bus.connect(settings_, "outbox-fuzz")
    return pool, connection, await connection.__aenter__()


def test_any_interleaving_of_publish_crash_and_redeliver_gives_exactly_one_effect(settings: Settings) -> None:
    loop = asyncio.new_event_loop()
    pool, connection, b = loop.run_until_complete(_world(settings))
    world = _World(pool, b)
    try:

        @given(plan=steps)
        @settings_for_io
        # The interleavings that matter most, whatever the search finds: a consumer that dies after
        # its commit (the message comes back), a relay that dies between publish and delete.
        @example(plan=[("produce", True), ("relay", None), ("consume", "crash after commit")])
        @example(plan=[("produce", True), ("produce", True), ("relay", 1), ("consume", "ack"), ("relay", 0)])
        @example(plan=[("produce", False), ("produce", True), ("relay", None), ("consume", "crash before commit")])
        def run(plan: list[tuple[str, Any]]) -> None:
            loop.run_until_complete(world.example(plan))

        run()
    finally:
        loop.run_until_complete(connection.__aexit__(None, None, None))
        loop.run_until_complete(db.close_pool(pool))
        loop.close()
