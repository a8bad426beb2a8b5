"""Instance lifecycle: start, adopt after a scheduler crash, restart, stop, record an exit, reconcile.

PostgreSQL's `instances` table is the desired state; the runtime driver says what actually runs. Every
state change and the event it causes commit together through the outbox."""

from __future__ import annotations

from typing import Any

import asyncpg
import msgspec

from pier import bus as pier_bus
from pier import outbox, volumes
from pier.events import (
    HealthPolicy,
    InstanceRecord,
    InstanceStarted,
    InstanceStopped,
    ModelStopped,
    RestartInstance,
    StopModel,
)
from pier.spec import Entrypoint
from services.scheduler.runtimes.base import Handle, InstanceSpec, StartError
from services.scheduler.state import LIVE, OUTBOX_CHANNEL, ControllerState, log, run_event_id


class Lifecycle(ControllerState):
    async def _stop(self, cmd: StopModel) -> None:
        if await self._seen(cmd.id):
            return
        freed: set[str] = set()
        # A waiting request leaves the line (and holds nothing to release).
        cancelled = await self.pool.fetch(
            "UPDATE requests SET state = 'cancelled', position = NULL"
            " WHERE model_id = $1 AND ($2::int IS NULL OR version = $2) AND state = 'waiting' RETURNING id",
            cmd.model_id,
            cmd.version,
        )
        for row in cancelled:
            gpu_type = self.queue.cancel(row["id"])
            self._commands.pop(row["id"], None)
            self._positions.pop(row["id"], None)
            if gpu_type:
                freed.add(gpu_type)
        if cmd.version is None:
            rows = await self.pool.fetch(
                "SELECT * FROM instances WHERE model_id = $1 AND state <> 'stopped' ORDER BY version, ordinal",
                cmd.model_id,
            )
        else:
            rows = await self.pool.fetch(
                "SELECT * FROM instances WHERE model_id = $1 AND version = $2 AND state <> 'stopped' ORDER BY ordinal",
                cmd.model_id,
                cmd.version,
            )
        for row in rows:
            instance_id = row["instance_id"]
            await self.runtime.stop(instance_id)
            await self._forget(instance_id)
            async with self.pool.acquire() as conn, conn.transaction():
                await conn.execute(
                    "UPDATE instances SET state = 'stopped', reason = $2, pid = NULL, updated_at = now() "
                    "WHERE instance_id = $1",
                    instance_id,
                    cmd.reason,
                )
                freed |= await self._release(conn, instance_id)
                await self._close_runs(conn, instance_id)
                # An instance that had exited was reported then; only running ones stop now.
                if row["state"] in LIVE:
                    stopped = InstanceStopped(
                        id=cmd.derived_id(f"stopped:{instance_id}"),
                        model_id=row["model_id"],
                        version=row["version"],
                        instance_id=instance_id,
                        reason=cmd.reason,
                    )
                    await outbox.enqueue(conn, stopped, OUTBOX_CHANNEL)
        if cmd.purge:
            for row in await self.pool.fetch("SELECT instance_id FROM instances WHERE model_id = $1", cmd.model_id):
                await self.runtime.purge(row["instance_id"])
        async with self.pool.acquire() as conn, conn.transaction():
            await outbox.first_time(conn, cmd.id)
            done = ModelStopped(id=cmd.derived_id("stopped"), model_id=cmd.model_id, version=cmd.version)
            await outbox.enqueue(conn, done, OUTBOX_CHANNEL)
        log.info("model stopped", model_id=cmd.model_id, version=cmd.version, instances=len(rows))
        # What waited for these GPUs starts now, not at some later tick.
        await self._schedule(freed)

    async def _restart(self, cmd: RestartInstance) -> None:
        row = await self.pool.fetchrow("SELECT * FROM instances WHERE instance_id = $1", cmd.instance_id)
        if row is None:
            log.warning("restart of an unknown instance ignored", instance_id=cmd.instance_id)
            return
        if row["state"] == "stopped":
            log.info("restart of a stopped instance ignored", instance_id=cmd.instance_id)
            return
        if await self._seen(cmd.id):
            return
        # Mark it not ready first, so the gateway stops sending it requests while it goes down.
        await pier_bus.kv_update(await self._instances(), cmd.instance_id, _not_ready)
        await self.runtime.stop(cmd.instance_id)
        async with self.pool.acquire() as conn, conn.transaction():
            # A settings change carries the current request timeout: the new run must use it, not the stored one.
            row = (
                await conn.fetchrow(
                    "UPDATE instances SET state = 'starting', pid = NULL, updated_at = now(),"
                    " request_timeout = coalesce($2, request_timeout) WHERE instance_id = $1 RETURNING *",
                    cmd.instance_id,
                    cmd.request_timeout,
                )
                or row
            )
            await self._close_runs(conn, cmd.instance_id)
            stopped = InstanceStopped(
                id=cmd.derived_id("stopped"),
                model_id=row["model_id"],
                version=row["version"],
                instance_id=cmd.instance_id,
                reason=f"restarting: {cmd.reason}",
            )
            await outbox.enqueue(conn, stopped, OUTBOX_CHANNEL)
        await self._start(row, event_id=cmd.derived_id("started"), inbox_id=cmd.id)

    async def _start(self, row: asyncpg.Record, *, event_id: str | None = None, inbox_id: str | None = None) -> None:
        """Start a run of the instance in `row`: fresh work dir, new port, KV record, InstanceStarted."""
        instance_id = row["instance_id"]
        generation = row["generation"] + 1
        # Whatever an earlier run left (a stale pid file, orphaned workers) goes first.
        await self.runtime.stop(instance_id)
        try:
            handle = await self.runtime.start(_spec(row))
        except StartError as exc:
            await self._exited(row, generation, None, f"exited before it started: {exc}", inbox_id=inbox_id)
            return
        record = _record(row, handle)
        kv = await self._instances()
        await kv.put(instance_id, msgspec.json.encode(record))
        started = _started(row, handle, event_id or run_event_id(instance_id, generation, "started"))
        async with self.pool.acquire() as conn, conn.transaction():
            if inbox_id is not None:
                await outbox.first_time(conn, inbox_id)
            await self._record_run(conn, instance_id, handle, generation)
            await outbox.enqueue(conn, started, OUTBOX_CHANNEL)

    async def _adopt(self, row: asyncpg.Record, handle: Handle) -> None:
        """Take over a run that is alive already (started before a scheduler crash)."""
        instance_id = row["instance_id"]
        record = _record(row, handle)

        def keep_or_create(current: bytes | None) -> bytes:
            # The monitor may have marked it ready since: keep its record if it is about this run.
            if current is not None and msgspec.json.decode(current, type=InstanceRecord).address == handle.address:
                return current
            return msgspec.json.encode(record)

        await pier_bus.kv_update(await self._instances(), instance_id, keep_or_create)
        if row["state"] == "running" and row["pid"] == handle.pid and row["start_time"] == handle.start_time:
            return
        # The scheduler died between starting the process and recording it: record it now.
        generation = row["generation"] + 1
        started = _started(row, handle, run_event_id(instance_id, generation, "started"))
        async with self.pool.acquire() as conn, conn.transaction():
            await self._record_run(conn, instance_id, handle, generation)
            await outbox.enqueue(conn, started, OUTBOX_CHANNEL)
        log.info("instance adopted", instance_id=instance_id, pid=handle.pid)

    async def _exited(
        self, row: asyncpg.Record, generation: int, status: int | None, reason: str, *, inbox_id: str | None = None
    ) -> None:
        instance_id = row["instance_id"]
        await self._forget(instance_id)
        event = InstanceStopped(
            id=run_event_id(instance_id, generation, "exited"),
            model_id=row["model_id"],
            version=row["version"],
            instance_id=instance_id,
            reason=reason,
        )
        async with self.pool.acquire() as conn, conn.transaction():
            if inbox_id is not None:
                await outbox.first_time(conn, inbox_id)
            await conn.execute(
                """UPDATE instances SET state = 'exited', exit_status = $2, reason = $3, generation = $4,
                       pid = NULL, updated_at = now()
                   WHERE instance_id = $1""",
                instance_id,
                status,
                reason,
                generation,
            )
            await self._close_runs(conn, instance_id)
            await outbox.enqueue(conn, event, OUTBOX_CHANNEL)
        log.warning("instance exited", instance_id=instance_id, reason=reason)

    async def reconcile(self) -> None:
        """After a crash or a platform restart: adopt the runs still alive, start the dead ones
        again. Pid and start time together decide, so no instance ever runs twice."""
        async with self._lock:
            unplaced = await self.load()
            rows = await self.pool.fetch("SELECT * FROM instances WHERE state = ANY($1) ORDER BY created_at", LIVE)
            adopted = started = 0
            for row in rows:
                handle = self.runtime.find(row["instance_id"])
                if handle is not None:
                    await self._adopt(row, handle)
                    adopted += 1
                else:
                    await self._start(row)
                    started += 1
            for request in unplaced:
                await self._commit(self.queue.submit(request))
            log.info("reconciled", adopted=adopted, started=started, placed=len(unplaced))
            # GPUs freed while no scheduler ran (or an inventory that grew) may let waiting ones start.
            await self._schedule(self.queue.types())


def _started(row: asyncpg.Record, handle: Handle, event_id: str) -> InstanceStarted:
    """The event saying a run of the instance in `row` is up (started, or found alive and adopted)."""
    return InstanceStarted(
        id=event_id,
        model_id=row["model_id"],
        version=row["version"],
        instance_id=row["instance_id"],
        address=handle.address,
        node=row["node"],
        gpu_devices=list(row["gpu_devices"]),
        isolated=handle.uid is not None,
    )


def _spec(row: asyncpg.Record) -> InstanceSpec:
    return InstanceSpec(
        instance_id=row["instance_id"],
        model_id=row["model_id"],
        version=row["version"],
        version_id=row["version_id"],
        image=row["image"],
        entrypoint=msgspec.json.decode(row["entrypoint"], type=Entrypoint),
        workers=row["workers"],
        request_timeout=row["request_timeout"],
        gpu_devices=tuple(row["gpu_devices"]),
        gpu_type=row["gpu_type"],
        cpu=row["cpu"],
        memory=row["memory"],
        disk_size=row["disk_size"],
        quota=row["quota"],
        health=msgspec.json.decode(row["health"], type=HealthPolicy) if row["health"] else HealthPolicy(),
        volumes=tuple(volumes.from_json(row["volumes"])),
    )


def _record(row: asyncpg.Record, handle: Handle) -> InstanceRecord:
    return InstanceRecord(
        instance_id=row["instance_id"],
        model_id=row["model_id"],
        version=row["version"],
        address=handle.address,
        workers=row["workers"],
        state="starting",
        secret=handle.secret,
    )


def _not_ready(current: bytes | None) -> bytes | None:
    if current is None:
        return None
    record: Any = msgspec.json.decode(current, type=InstanceRecord)
    return msgspec.json.encode(msgspec.structs.replace(record, state="starting"))
