"""The scheduler's controller: turns place / stop / restart commands into running instances, notices
instances that die, and after a restart of the scheduler adopts what still runs.

PostgreSQL's `instances` table is the desired state; the runtime's pid files say what actually runs.
Every state change and the event it causes commit together through the outbox. One lock serialises
commands, the exit watcher and reconcile, so none of them sees another's half-done work (a restart's
deliberate SIGTERM must not look like a crash to the watcher).
"""

from __future__ import annotations

import asyncio
import secrets
import uuid
from typing import Any, TypeAlias

import asyncpg
import msgspec
import structlog
from nats.js.kv import KeyValue

from pier import bus as pier_bus
from pier import outbox
from pier.bus import Bus
from pier.events import (
    INSTANCES_BUCKET,
    InstanceRecord,
    InstanceStarted,
    InstanceStopped,
    ModelPlaced,
    ModelStopped,
    PlaceModel,
    RestartInstance,
    StopModel,
)
from pier.spec import Entrypoint
from services.scheduler import placement
from services.scheduler.runtimes.local import Handle, InstanceSpec, LocalRuntime, StartError

log = structlog.get_logger("scheduler")

OUTBOX_CHANNEL = "scheduler_outbox"
LIVE = ["starting", "running"]
WATCH_EVERY = 0.5

Command: TypeAlias = PlaceModel | StopModel | RestartInstance


def new_instance_id(model_id: str, version: int, ordinal: int) -> str:
    return f"{model_id[:8]}-v{version}-{ordinal}-{secrets.token_hex(2)}"


def run_event_id(instance_id: str, generation: int, what: str) -> str:
    """A stable id for an event about one run of an instance when no command caused it
    (reconcile, the exit watcher), so a retried publish is de-duplicated."""
    return uuid.uuid5(uuid.NAMESPACE_URL, f"pier:instance/{instance_id}/{generation}/{what}").hex


class Controller:
    def __init__(self, pool: asyncpg.Pool, bus: Bus, runtime: LocalRuntime) -> None:
        self.pool = pool
        self.bus = bus
        self.runtime = runtime
        self._lock = asyncio.Lock()
        self._kv: KeyValue | None = None

    async def handle(self, cmd: Command) -> None:
        async with self._lock:
            with structlog.contextvars.bound_contextvars(command=cmd.tag(), command_id=cmd.id):
                if isinstance(cmd, PlaceModel):
                    await self._place(cmd)
                elif isinstance(cmd, StopModel):
                    await self._stop(cmd)
                else:
                    await self._restart(cmd)

    # ---- commands -------------------------------------------------------------------------------

    async def _place(self, cmd: PlaceModel) -> None:
        slots = placement.place(cmd)
        async with self.pool.acquire() as conn, conn.transaction():
            await conn.execute("SELECT pg_advisory_xact_lock(hashtext($1))", f"place:{cmd.model_id}:{cmd.version}")
            first = await outbox.first_time(conn, cmd.id)
            live = await conn.fetchval(
                "SELECT count(*) FROM instances WHERE model_id = $1 AND version = $2 AND state = ANY($3)",
                cmd.model_id,
                cmd.version,
                LIVE,
            )
            if first and live == 0:
                ids = [new_instance_id(cmd.model_id, cmd.version, n) for n in range(1, len(slots) + 1)]
                entrypoint = msgspec.json.encode(cmd.entrypoint).decode()
                for n, (instance_id, slot) in enumerate(zip(ids, slots, strict=True), start=1):
                    await conn.execute(
                        """INSERT INTO instances (instance_id, model_id, version, version_id, ordinal, image,
                               entrypoint, workers, request_timeout, gpu_type, gpu_count, state)
                           VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, 'starting')""",
                        instance_id,
                        cmd.model_id,
                        cmd.version,
                        cmd.version_id,
                        n,
                        cmd.image,
                        entrypoint,
                        cmd.workers,
                        cmd.request_timeout,
                        cmd.gpu_type,
                        len(slot.gpu_devices),
                    )
                placed = ModelPlaced(
                    id=cmd.derived_id("placed"), model_id=cmd.model_id, version=cmd.version, instances=ids
                )
                await outbox.enqueue(conn, placed, OUTBOX_CHANNEL)
                log.info("model placed", model_id=cmd.model_id, version=cmd.version, instances=ids)
            else:
                log.info("already placed; nothing new", model_id=cmd.model_id, version=cmd.version, live=live)
        # Whether this delivery inserted the rows or an earlier one that died half-way did.
        rows = await self.pool.fetch(
            "SELECT * FROM instances WHERE model_id = $1 AND version = $2 AND state = ANY($3) ORDER BY ordinal",
            cmd.model_id,
            cmd.version,
            LIVE,
        )
        for row in rows:
            handle = self.runtime.find(row["instance_id"])
            if handle is not None:
                await self._adopt(row, handle)
            else:
                await self._start(row, event_id=cmd.derived_id(f"started:{row['instance_id']}"))

    async def _stop(self, cmd: StopModel) -> None:
        if await self._seen(cmd.id):
            return
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
        async with self.pool.acquire() as conn, conn.transaction():
            await outbox.first_time(conn, cmd.id)
            done = ModelStopped(id=cmd.derived_id("stopped"), model_id=cmd.model_id, version=cmd.version)
            await outbox.enqueue(conn, done, OUTBOX_CHANNEL)
        log.info("model stopped", model_id=cmd.model_id, version=cmd.version, instances=len(rows))

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
            await conn.execute(
                "UPDATE instances SET state = 'starting', pid = NULL, updated_at = now() WHERE instance_id = $1",
                cmd.instance_id,
            )
            stopped = InstanceStopped(
                id=cmd.derived_id("stopped"),
                model_id=row["model_id"],
                version=row["version"],
                instance_id=cmd.instance_id,
                reason=f"restarting: {cmd.reason}",
            )
            await outbox.enqueue(conn, stopped, OUTBOX_CHANNEL)
        await self._start(row, event_id=cmd.derived_id("started"), inbox_id=cmd.id)

    # ---- running instances ----------------------------------------------------------------------

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
        started = InstanceStarted(
            id=event_id or run_event_id(instance_id, generation, "started"),
            model_id=row["model_id"],
            version=row["version"],
            instance_id=instance_id,
            address=handle.address,
        )
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
        started = InstanceStarted(
            id=run_event_id(instance_id, generation, "started"),
            model_id=row["model_id"],
            version=row["version"],
            instance_id=instance_id,
            address=handle.address,
        )
        async with self.pool.acquire() as conn, conn.transaction():
            await self._record_run(conn, instance_id, handle, generation)
            await outbox.enqueue(conn, started, OUTBOX_CHANNEL)
        log.info("instance adopted", instance_id=instance_id, pid=handle.pid)

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
            await outbox.enqueue(conn, event, OUTBOX_CHANNEL)
        log.warning("instance exited", instance_id=instance_id, reason=reason)

    async def check_exits(self) -> None:
        """Report every run that died on its own. Restarting it is the monitor's decision."""
        async with self._lock:
            rows = await self.pool.fetch("SELECT * FROM instances WHERE state = 'running' AND pid IS NOT NULL")
            for row in rows:
                handle = Handle(pid=row["pid"], start_time=row["start_time"], port=row["port"])
                ended = self.runtime.poll(row["instance_id"], handle)
                if ended is None:
                    continue
                line = self.runtime.last_line(row["instance_id"])
                reason = f"{ended.describe()}: {line}" if line else ended.describe()
                # Its worker processes may outlive it, and its work dir must not.
                await self.runtime.stop(row["instance_id"])
                await self._exited(row, row["generation"], ended.status, reason)

    async def watch(self, every: float = WATCH_EVERY) -> None:
        while True:
            try:
                await self.check_exits()
            except Exception:
                # A database or bus hiccup: the next round sees the same exits again.
                log.exception("exit watcher round failed")
            await asyncio.sleep(every)

    async def reconcile(self) -> None:
        """After a crash or a platform restart: adopt the runs still alive, start the dead ones
        again. Pid and start time together decide, so no instance ever runs twice."""
        async with self._lock:
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
            log.info("reconciled", adopted=adopted, started=started)

    # ---- helpers --------------------------------------------------------------------------------

    async def _instances(self) -> KeyValue:
        if self._kv is None:
            self._kv = await self.bus.kv(INSTANCES_BUCKET)
        return self._kv

    async def _forget(self, instance_id: str) -> None:
        await pier_bus.kv_update(await self._instances(), instance_id, lambda _: None)

    async def _seen(self, message_id: str) -> bool:
        return bool(await self.pool.fetchval("SELECT 1 FROM inbox WHERE id = $1", message_id))


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
    )


def _record(row: asyncpg.Record, handle: Handle) -> InstanceRecord:
    return InstanceRecord(
        instance_id=row["instance_id"],
        model_id=row["model_id"],
        version=row["version"],
        address=handle.address,
        workers=row["workers"],
        state="starting",
    )


def _not_ready(current: bytes | None) -> bytes | None:
    if current is None:
        return None
    record: Any = msgspec.json.decode(current, type=InstanceRecord)
    return msgspec.json.encode(msgspec.structs.replace(record, state="starting"))
