"""The scheduler's controller: turns place / stop / restart commands into running instances, notices
instances that die, and after a restart of the scheduler adopts what still runs.

PostgreSQL's `instances` table is the desired state; the runtime's pid files say what actually runs.
Every state change and the event it causes commit together through the outbox. One lock serialises
commands, the exit watcher and reconcile, so none of them sees another's half-done work (a restart's
deliberate SIGTERM must not look like a crash to the watcher).

GPUs: a PlaceModel becomes a row in `requests` and an entry in the in-memory `Queue`, which decides
what starts (all instances at once, or none). A placement commits its instances and `allocations`
rows together; the allocations' primary key (node, device) is what guarantees that no GPU is ever
given to two instances, whatever crashed when. Stopping releases the GPUs and starts whatever waited.
Usage is metered per run of an instance (`runs`), so waiting is never counted.
"""

from __future__ import annotations

import asyncio
import secrets
import time
import uuid
from collections.abc import Iterable
from typing import Any, TypeAlias

import asyncpg
import msgspec
import structlog
from nats.js.kv import KeyValue

from pier import bus as pier_bus
from pier import metrics, outbox
from pier.bus import Bus
from pier.events import (
    GPUS_BUCKET,
    GPUS_KEY,
    INSTANCES_BUCKET,
    GpuAsk,
    GpuInventory,
    GpuType,
    InstanceRecord,
    InstanceStarted,
    InstanceStopped,
    ModelPlaced,
    ModelStopped,
    ModelWaiting,
    PlacementRejected,
    PlaceModel,
    RestartInstance,
    StopModel,
    UsageRecorded,
)
from pier.spec import Entrypoint
from services.scheduler.inventory import Inventory
from services.scheduler.queue import Placement, Queue, Request, Slot
from services.scheduler.runtimes.local import Handle, InstanceSpec, LocalRuntime, StartError

log = structlog.get_logger("scheduler")
# Served on `pier.metrics.scheduler`, merged into the api's GET /metrics.
PLACEMENTS = metrics.REGISTRY.counter("pier_scheduler_placements_total", "Model versions placed on nodes")
INSTANCES_PLACED = metrics.REGISTRY.counter("pier_scheduler_instances_placed_total", "Instances placed on nodes")

OUTBOX_CHANNEL = "scheduler_outbox"
LIVE = ["starting", "running"]
WATCH_EVERY = 0.5
# Work dirs are measured against their disk_size every this many watcher rounds (du is not free).
DISK_EVERY = 4

Command: TypeAlias = PlaceModel | StopModel | RestartInstance


def new_instance_id(model_id: str, version: int, ordinal: int) -> str:
    return f"{model_id[:8]}-v{version}-{ordinal}-{secrets.token_hex(2)}"


def run_event_id(instance_id: str, generation: int, what: str) -> str:
    """A stable id for an event about one run of an instance when no command caused it
    (reconcile, the exit watcher), so a retried publish is de-duplicated."""
    return uuid.uuid5(uuid.NAMESPACE_URL, f"pier:instance/{instance_id}/{generation}/{what}").hex


class Controller:
    def __init__(self, pool: asyncpg.Pool, bus: Bus, runtime: LocalRuntime, inventory: Inventory | None = None) -> None:
        self.pool = pool
        self.bus = bus
        self.runtime = runtime
        self.inventory = inventory or Inventory()
        self.queue = Queue(self.inventory)
        # The waiting requests' commands and last announced places in line, by request id.
        self._commands: dict[str, PlaceModel] = {}
        self._positions: dict[str, int] = {}
        self._lock = asyncio.Lock()
        self._kv: KeyValue | None = None
        self._gpus_kv: KeyValue | None = None
        self._rounds = 0

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
        rejected: str | None = None
        async with self.pool.acquire() as conn, conn.transaction():
            await conn.execute("SELECT pg_advisory_xact_lock(hashtext($1))", f"place:{cmd.model_id}:{cmd.version}")
            first = await outbox.first_time(conn, cmd.id)
            busy = await conn.fetchval(
                "SELECT (SELECT count(*) FROM instances WHERE model_id = $1 AND version = $2 AND state = ANY($3))"
                " + (SELECT count(*) FROM requests WHERE model_id = $1 AND version = $2 AND state = 'waiting')",
                cmd.model_id,
                cmd.version,
                LIVE,
            )
            new = first and busy == 0
            if new:
                rejected = self.queue.impossible(cmd.gpu_type, cmd.gpu_count, cmd.instances)
                seq = await conn.fetchval(
                    """INSERT INTO requests (id, model_id, version, gpu_type, gpu_count, instances, command, state)
                       VALUES ($1, $2, $3, $4, $5, $6, $7, $8) RETURNING seq""",
                    cmd.id,
                    cmd.model_id,
                    cmd.version,
                    cmd.gpu_type if cmd.gpu_count > 0 else None,
                    cmd.gpu_count,
                    cmd.instances,
                    msgspec.json.encode(cmd).decode(),
                    "rejected" if rejected else "waiting",
                )
                if rejected:
                    event = PlacementRejected(
                        id=cmd.derived_id("rejected"), model_id=cmd.model_id, version=cmd.version, reason=rejected
                    )
                    await outbox.enqueue(conn, event, OUTBOX_CHANNEL)
                    log.warning("placement rejected", model_id=cmd.model_id, version=cmd.version, reason=rejected)
            else:
                log.info("already placed or waiting; nothing new", model_id=cmd.model_id, version=cmd.version)
        if new and not rejected:
            self._commands[cmd.id] = cmd
            request = _request(cmd, seq)
            await self._commit(self.queue.submit(request))
            await self._announce([request.gpu_type] if request.gpu_type else [])
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

    async def _commit(self, placements: list[Placement]) -> None:
        """Record each placement (instances + allocations, one transaction each), then start it."""
        for placement in placements:
            cmd = self._commands.pop(placement.request.key)
            self._positions.pop(placement.request.key, None)
            ids = [new_instance_id(cmd.model_id, cmd.version, n) for n in range(1, len(placement.slots) + 1)]
            entrypoint = msgspec.json.encode(cmd.entrypoint).decode()
            try:
                async with self.pool.acquire() as conn, conn.transaction():
                    for n, (instance_id, slot) in enumerate(zip(ids, placement.slots, strict=True), start=1):
                        await conn.execute(
                            """INSERT INTO instances (instance_id, model_id, version, version_id, ordinal, image,
                                   entrypoint, workers, request_timeout, gpu_type, gpu_count, state, node,
                                   gpu_devices, quota, cpu, memory, disk_size)
                               VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, 'starting', $12, $13, $14,
                                   $15, $16, $17)""",
                            instance_id,
                            cmd.model_id,
                            cmd.version,
                            cmd.version_id,
                            n,
                            cmd.image,
                            entrypoint,
                            cmd.workers,
                            cmd.request_timeout,
                            cmd.gpu_type if slot.gpu_devices else None,
                            len(slot.gpu_devices),
                            slot.node,
                            list(slot.gpu_devices),
                            cmd.quota,
                            cmd.cpu,
                            cmd.memory,
                            cmd.disk_size,
                        )
                        for device in slot.gpu_devices:
                            await conn.execute(
                                "INSERT INTO allocations (node, device, gpu_type, instance_id) VALUES ($1, $2, $3, $4)",
                                slot.node,
                                device,
                                cmd.gpu_type,
                                instance_id,
                            )
                    await conn.execute("UPDATE requests SET state = 'placed', position = NULL WHERE id = $1", cmd.id)
                    placed = ModelPlaced(
                        id=cmd.derived_id("placed"), model_id=cmd.model_id, version=cmd.version, instances=ids
                    )
                    await outbox.enqueue(conn, placed, OUTBOX_CHANNEL)
            except asyncpg.UniqueViolationError:
                # The database says a GPU is taken that memory thought free: trust the database.
                log.error("allocation conflict; reloading the GPU state", model_id=cmd.model_id)
                await self.load()
                continue
            PLACEMENTS.inc()
            INSTANCES_PLACED.inc(by=len(ids))
            log.info(
                "model placed",
                model_id=cmd.model_id,
                version=cmd.version,
                instances=ids,
                gpus=[f"{s.node}:{','.join(s.gpu_devices)}" for s in placement.slots if s.gpu_devices],
            )
            rows = await self.pool.fetch("SELECT * FROM instances WHERE instance_id = ANY($1) ORDER BY ordinal", ids)
            for row in rows:
                await self._start(row, event_id=cmd.derived_id(f"started:{row['instance_id']}"))

    async def _announce(self, gpu_types: Iterable[str]) -> None:
        """Tell each waiting request of these types its new place in line, and republish the inventory."""
        for gpu_type in set(gpu_types):
            for position, req in enumerate(self.queue.waiting.get(gpu_type, []), start=1):
                if self._positions.get(req.key) == position:
                    continue
                self._positions[req.key] = position
                cmd = self._commands[req.key]
                ahead = "first in line" if position == 1 else f"{position - 1} ahead"
                event = ModelWaiting(
                    id=uuid.uuid5(uuid.UUID(cmd.id), f"waiting:{position}").hex,
                    model_id=cmd.model_id,
                    version=cmd.version,
                    gpu_type=gpu_type,
                    position=position,
                    reason=f"waiting for {req.instances} x {req.gpu_count} {gpu_type} GPUs ({ahead})",
                )
                async with self.pool.acquire() as conn, conn.transaction():
                    await conn.execute("UPDATE requests SET position = $2 WHERE id = $1", req.key, position)
                    await outbox.enqueue(conn, event, OUTBOX_CHANNEL)
        await self.publish_inventory()

    async def publish_inventory(self) -> None:
        if self._gpus_kv is None:
            self._gpus_kv = await self.bus.js.create_key_value(bucket=GPUS_BUCKET, history=1)
        totals = self.queue.totals()
        record = GpuInventory(
            simulated=self.inventory.simulated,
            types={
                t: GpuType(simulated=self.inventory.simulated, nodes=self.queue.capacity[t], **counts)
                for t, counts in totals.items()
            },
        )
        await self._gpus_kv.put(GPUS_KEY, msgspec.json.encode(record))

    def plan(self, ask: GpuAsk) -> Any:
        return self.queue.plan(ask.gpu_type, ask.gpu_count, ask.instances)

    async def serve_plans(self) -> None:
        """Answer `pier.scheduler.plan` requests (the api's POST /v1/plan) from the queue in memory."""
        from pier.events import PLAN_SUBJECT

        async def answer(msg: Any) -> None:
            try:
                ask = msgspec.json.decode(msg.data, type=GpuAsk)
                await msg.respond(msgspec.json.encode(self.plan(ask)))
            except msgspec.DecodeError as exc:
                await msg.respond(msgspec.json.encode({"decision": "impossible", "reason": f"bad request: {exc}"}))

        await self.bus.nc.subscribe(PLAN_SUBJECT, queue="scheduler", cb=answer)

    async def load(self) -> list[Request]:
        """Rebuild the queue from the database: GPUs allocated, requests waiting, in their order.
        Returns the CPU requests found waiting, for the caller to place: a CPU request is placed as
        soon as it is accepted, so one still waiting was accepted by a scheduler killed before it
        placed it, and the wait queue (GPU types only) has no place for it."""
        unplaced: list[Request] = []
        used = await self.pool.fetch("SELECT node, device FROM allocations")
        self.queue = Queue(self.inventory, [(r["node"], r["device"]) for r in used])
        self._commands.clear()
        self._positions.clear()
        for row in await self.pool.fetch("SELECT * FROM requests WHERE state = 'waiting' ORDER BY seq"):
            cmd = msgspec.json.decode(row["command"], type=PlaceModel)
            why = self.queue.impossible(cmd.gpu_type, cmd.gpu_count, cmd.instances)
            if why is not None:
                # The inventory shrank since it was queued.
                async with self.pool.acquire() as conn, conn.transaction():
                    await conn.execute("UPDATE requests SET state = 'rejected' WHERE id = $1", cmd.id)
                    event = PlacementRejected(
                        id=cmd.derived_id("rejected"), model_id=cmd.model_id, version=cmd.version, reason=why
                    )
                    await outbox.enqueue(conn, event, OUTBOX_CHANNEL)
                continue
            self._commands[cmd.id] = cmd
            if row["position"] is not None:
                self._positions[cmd.id] = row["position"]
            request = _request(cmd, row["seq"])
            if request.gpu_type is None or request.gpu_count <= 0:
                unplaced.append(request)
            else:
                self.queue.restore(request)
        return unplaced

    async def _schedule(self, gpu_types: Iterable[str]) -> None:
        types = [t for t in set(gpu_types) if t]
        for gpu_type in types:
            await self._commit(self.queue.schedule(gpu_type))
        await self._announce(types)

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

    async def _release(self, conn: asyncpg.Connection, instance_id: str) -> set[str]:
        """Free an instance's GPUs, in the database (with the caller's transaction) and in the queue."""
        rows = await conn.fetch("DELETE FROM allocations WHERE instance_id = $1 RETURNING *", instance_id)
        by_type: dict[str, list[Slot]] = {}
        for r in rows:
            by_type.setdefault(r["gpu_type"], []).append(Slot(node=r["node"], gpu_devices=(r["device"],)))
        for gpu_type, slots in by_type.items():
            self.queue.release(gpu_type, slots)
        return set(by_type)

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
            node=row["node"],
            gpu_devices=list(row["gpu_devices"]),
            isolated=handle.uid is not None,
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
            node=row["node"],
            gpu_devices=list(row["gpu_devices"]),
            isolated=handle.uid is not None,
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

    async def check_exits(self) -> None:
        """Report every run that died on its own. Restarting it is the monitor's decision."""
        async with self._lock:
            rows = await self.pool.fetch("SELECT * FROM instances WHERE state = 'running' AND pid IS NOT NULL")
            for row in rows:
                handle = Handle(pid=row["pid"], start_time=row["start_time"], port=row["port"])
                ended = self.runtime.poll(row["instance_id"], handle)
                if ended is None:
                    continue
                line = await self.runtime.last_words(row["instance_id"], handle)
                reason = f"{ended.describe()}: {line}" if line else ended.describe()
                # Its worker processes may outlive it, and its work dir must not.
                await self.runtime.stop(row["instance_id"])
                await self._exited(row, row["generation"], ended.status, reason)
            self._rounds += 1
            if self._rounds % DISK_EVERY == 0:
                await self._check_disk(rows)

    async def _check_disk(self, rows: list[asyncpg.Record]) -> None:
        """Fail every run whose work dir grew past its model API's disk_size."""
        for row in rows:
            if row["disk_size"] <= 0:
                continue
            used = await asyncio.to_thread(self.runtime.disk_usage, row["instance_id"])
            if used <= row["disk_size"]:
                continue
            reason = f"disk use of {used} bytes is over its disk_size of {row['disk_size']} bytes"
            self.runtime.note(row["instance_id"], f"pier: stopping the instance: {reason}")
            await self.runtime.stop(row["instance_id"])
            await self._exited(row, row["generation"], None, f"exited: {reason}")

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
        gpu_devices=tuple(row["gpu_devices"]),
        cpu=row["cpu"],
        memory=row["memory"],
        disk_size=row["disk_size"],
        quota=row["quota"],
    )


def _request(cmd: PlaceModel, seq: int) -> Request:
    gpu = cmd.gpu_count > 0 and cmd.gpu_type is not None
    return Request(
        key=cmd.id,
        seq=seq,
        gpu_type=cmd.gpu_type if gpu else None,
        gpu_count=cmd.gpu_count if gpu else 0,
        instances=cmd.instances,
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
