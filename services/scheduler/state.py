"""What the controller's parts share: the pool, the bus, the runtime driver, the queue in memory and the
one lock that serialises commands, the exit watcher and reconcile (see controller.py)."""

from __future__ import annotations

import asyncio
import secrets
import uuid
from collections.abc import Iterable
from typing import TYPE_CHECKING, TypeAlias

import asyncpg
import structlog
from nats.js.kv import KeyValue

from pier import bus as pier_bus
from pier.bus import Bus
from pier.events import INSTANCES_BUCKET, PlaceModel, RestartInstance, StopModel
from services.scheduler.inventory import Inventory
from services.scheduler.queue import Placement, Queue, Request
from services.scheduler.runtimes.base import Handle, Runtime

log = structlog.get_logger("scheduler")

OUTBOX_CHANNEL = "scheduler_outbox"
LIVE = ["starting", "running"]

Command: TypeAlias = PlaceModel | StopModel | RestartInstance


def new_instance_id(model_id: str, version: int, ordinal: int) -> str:
    return f"{model_id[:8]}-v{version}-{ordinal}-{secrets.token_hex(2)}"


def run_event_id(instance_id: str, generation: int, what: str) -> str:
    """A stable id for an event about one run of an instance when no command caused it
    (reconcile, the exit watcher), so a retried publish is de-duplicated."""
    return uuid.uuid5(uuid.NAMESPACE_URL, f"pier:instance/{instance_id}/{generation}/{what}").hex


class ControllerState:
    def __init__(self, pool: asyncpg.Pool, bus: Bus, runtime: Runtime, inventory: Inventory | None = None) -> None:
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

    async def _instances(self) -> KeyValue:
        if self._kv is None:
            self._kv = await self.bus.kv(INSTANCES_BUCKET)
        return self._kv

    async def _forget(self, instance_id: str) -> None:
        await pier_bus.kv_update(await self._instances(), instance_id, lambda _: None)

    async def _seen(self, message_id: str) -> bool:
        return bool(await self.pool.fetchval("SELECT 1 FROM inbox WHERE id = $1", message_id))

    if TYPE_CHECKING:
        # Implemented by the parts (placement, lifecycle, metering), which call each other through self.
        async def load(self) -> list[Request]: ...

        async def _commit(self, placements: list[Placement]) -> None: ...

        async def _schedule(self, gpu_types: Iterable[str]) -> None: ...

        async def _release(self, conn: asyncpg.Connection, instance_id: str) -> set[str]: ...

        async def _start(
            self, row: asyncpg.Record, *, event_id: str | None = None, inbox_id: str | None = None
        ) -> None: ...

        async def _adopt(self, row: asyncpg.Record, handle: Handle) -> None: ...

        async def _exited(
            self, row: asyncpg.Record, generation: int, status: int | None, reason: str, *, inbox_id: str | None = None
        ) -> None: ...

        async def _record_run(
            self, conn: asyncpg.Connection, instance_id: str, handle: Handle, generation: int
        ) -> None: ...

        async def _close_runs(self, conn: asyncpg.Connection, instance_id: str) -> None: ...
