"""The scheduler's leader lock on a real PostgreSQL: one leads, a standby waits until the leader's
session ends, and a leader whose lock connection is cut stops leading (services/scheduler/leader.py)."""

from __future__ import annotations

import asyncio

import asyncpg
import pytest

from pier.config import Settings
from services.scheduler import leader
from services.scheduler.leader import Lost, leadership
from tests.support import until


async def _waiting_for_the_lock(settings: Settings) -> int:
    conn = await asyncpg.connect(settings.database_url)
    try:
        return int(
            await conn.fetchval(
                "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted AND objid = $1",
                leader.LOCK_KEY & 0xFFFFFFFF,
            )
        )
    finally:
        await conn.close()


async def test_a_standby_leads_only_once_the_leader_has_gone(settings: Settings) -> None:
    led: list[str] = []

    async def standby() -> None:
        async with leadership(settings):
            led.append("standby")

    async with leadership(settings):
        led.append("first")
        waiting = asyncio.create_task(standby())
        try:
            await until(lambda: _waiting_for_the_lock(settings))
            assert led == ["first"], "the standby led while the leader held the lock"
        except BaseException:
            waiting.cancel()
            raise
    await asyncio.wait_for(waiting, 10)
    assert led == ["first", "standby"]


async def test_a_leader_whose_lock_connection_is_cut_stops(settings: Settings, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(leader, "CHECK_EVERY", 0.05)
    async with leadership(settings) as lead:
        admin = await asyncpg.connect(settings.database_url)
        try:
            cut = await admin.fetchval(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = $1",
                leader.application_name(),
            )
            assert cut
        finally:
            await admin.close()
        with pytest.raises(Lost):
            await asyncio.wait_for(lead.hold(), 10)
    # The lock went with the session: a new leader takes it at once.
    async with asyncio.timeout(10), leadership(settings):
        pass
