"""Placement: a PlaceModel becomes a row in `requests` and an entry in the in-memory `Queue`, which decides
what starts (all instances at once, or none). A placement commits its instances and `allocations` rows
together; the allocations' primary key (node, device) is what guarantees that no GPU is ever given to two
instances, whatever crashed when. Stopping releases the GPUs and starts whatever waited."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterable
from typing import Any

import asyncpg
import msgspec

from pier import metrics, outbox
from pier.events import (
    GPUS_BUCKET,
    GPUS_KEY,
    GpuAsk,
    GpuInventory,
    GpuType,
    ModelPlaced,
    ModelWaiting,
    PlacementRejected,
    PlaceModel,
)
from services.scheduler.queue import Placement, Queue, Request, Slot
from services.scheduler.state import LIVE, OUTBOX_CHANNEL, ControllerState, log, new_instance_id

# Served on `pier.metrics.scheduler`, merged into the api's GET /metrics.
PLACEMENTS = metrics.REGISTRY.counter("pier_scheduler_placements_total", "Model versions placed on nodes")
INSTANCES_PLACED = metrics.REGISTRY.counter("pier_scheduler_instances_placed_total", "Instances placed on nodes")


class Placing(ControllerState):
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
                                   gpu_devices, quota, cpu, memory, disk_size, health, volumes)
                               VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, 'starting', $12, $13, $14,
                                   $15, $16, $17, $18, $19)""",
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
                            msgspec.json.encode(cmd.health).decode(),
                            msgspec.json.encode(cmd.volumes).decode(),
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
        # Found out once by the driver (the local one tries an unshare), in a thread the first time.
        volumes_refused = await asyncio.to_thread(self.runtime.volumes_refused)
        record = GpuInventory(
            simulated=self.inventory.simulated,
            types={
                t: GpuType(simulated=self.inventory.simulated, nodes=self.queue.capacity[t], **counts)
                for t, counts in totals.items()
            },
            volumes_refused=volumes_refused,
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

    async def _release(self, conn: asyncpg.Connection, instance_id: str) -> set[str]:
        """Free an instance's GPUs, in the database (with the caller's transaction) and in the queue."""
        rows = await conn.fetch("DELETE FROM allocations WHERE instance_id = $1 RETURNING *", instance_id)
        by_type: dict[str, list[Slot]] = {}
        for r in rows:
            by_type.setdefault(r["gpu_type"], []).append(Slot(node=r["node"], gpu_devices=(r["device"],)))
        for gpu_type, slots in by_type.items():
            self.queue.release(gpu_type, slots)
        return set(by_type)


def _request(cmd: PlaceModel, seq: int) -> Request:
    gpu = cmd.gpu_count > 0 and cmd.gpu_type is not None
    return Request(
        key=cmd.id,
        seq=seq,
        gpu_type=cmd.gpu_type if gpu else None,
        gpu_count=cmd.gpu_count if gpu else 0,
        instances=cmd.instances,
    )
