"""Metering: usage is counted per run of an instance (`runs`), from the moment it is recorded as
running to the moment it stops or exits, so time spent waiting for GPUs is never counted."""

from __future__ import annotations

import time

import asyncpg

from pier import outbox
from pier.events import UsageRecorded
from services.scheduler.runtimes.base import Handle
from services.scheduler.state import OUTBOX_CHANNEL, ControllerState, run_event_id


class Metering(ControllerState):
    async def _record_run(self, conn: asyncpg.Connection, instance_id: str, handle: Handle, generation: int) -> None:
        await conn.execute(
            """UPDATE instances SET state = 'running', pid = $2, start_time = $3, port = $4, address = $5,
                   generation = $6, exit_status = NULL, reason = NULL, log_open = true, updated_at = now()
               WHERE instance_id = $1""",
            instance_id,
            handle.pid,
            handle.start_time,
            handle.port,
            handle.address,
            generation,
        )
        # Metering starts with the run: a run adopted after a crash keeps its original start.
        await conn.execute(
            """INSERT INTO runs (instance_id, generation, model_id, version, gpu_count, started_at)
               SELECT instance_id, $2, model_id, version, cardinality(gpu_devices), $3 FROM instances
               WHERE instance_id = $1
               ON CONFLICT DO NOTHING""",
            instance_id,
            generation,
            time.time(),
        )

    async def _close_runs(self, conn: asyncpg.Connection, instance_id: str) -> None:
        """End the metering of an instance's current run and report what it used."""
        now = time.time()
        rows = await conn.fetch(
            "UPDATE runs SET ended_at = $2 WHERE instance_id = $1 AND ended_at IS NULL RETURNING *", instance_id, now
        )
        for r in rows:
            seconds = max(0.0, r["ended_at"] - r["started_at"])
            usage = UsageRecorded(
                id=run_event_id(instance_id, r["generation"], "usage"),
                model_id=r["model_id"],
                version=r["version"],
                instance_id=instance_id,
                started_at=r["started_at"],
                ended_at=r["ended_at"],
                gpu_count=r["gpu_count"],
                instance_seconds=seconds,
                gpu_seconds=seconds * r["gpu_count"],
            )
            await outbox.enqueue(conn, usage, OUTBOX_CHANNEL)
