"""Several monitor replicas share the instances: each probes only those it owns.

Every replica puts its id in the `pier_monitors` bucket once a second; the bucket forgets a key
after TTL seconds without a put, so a replica that dies drops out within TTL. The live ids are read
from the bucket's stream info (its subjects), one request: `KeyValue.keys()` made a consumer on
every beat, and the ephemeral consumers it left for nats-server to expire cost nats-server more CPU
at rest than anything else (docs/performance.md). Ownership is
rendezvous hashing over the live ids: every replica computes the same owner for an instance from
the same member list, and when a replica goes only its instances move.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import time
import uuid

import structlog
from nats.js.kv import KeyValue

from pier.bus import Bus
from pier.events import MONITORS_BUCKET

log = structlog.get_logger("monitor.membership")

BEAT = 1.0
TTL = 3.0
_STREAM = f"KV_{MONITORS_BUCKET}"
_PREFIX = f"$KV.{MONITORS_BUCKET}."


def owner(members: set[str], instance_id: str) -> str:
    """The member that owns `instance_id`: the highest hash of (member, instance)."""
    return max(members, key=lambda m: hashlib.sha256(f"{m}/{instance_id}".encode()).digest())


class Membership:
    def __init__(self, bus: Bus, member_id: str | None = None, beat: float = BEAT, ttl: float = TTL) -> None:
        self.bus = bus
        self.id = member_id or uuid.uuid4().hex[:12]
        self.beat = beat
        self.ttl = ttl
        self.members: set[str] = {self.id}
        self._kv: KeyValue | None = None

    def owns(self, instance_id: str) -> bool:
        return owner(self.members | {self.id}, instance_id) == self.id

    async def join(self) -> None:
        """Announce this replica and learn the others; then `run` keeps both current."""
        self._kv = await self.bus.js.create_key_value(bucket=MONITORS_BUCKET, history=1, ttl=self.ttl)
        await self.refresh()

    async def refresh(self) -> None:
        assert self._kv is not None
        await self._kv.put(self.id, str(time.time()).encode())
        info = await self.bus.js.stream_info(_STREAM, subjects_filter=f"{_PREFIX}>")
        keys = {subject.removeprefix(_PREFIX) for subject in info.state.subjects or {}}
        if keys | {self.id} != self.members:
            log.info("monitor replicas changed", members=sorted(keys | {self.id}))
        self.members = keys | {self.id}

    async def run(self) -> None:
        while True:
            await asyncio.sleep(self.beat)
            try:
                await self.refresh()
            except Exception as exc:
                # NATS away: keep the last view; the others see us expire and take over meanwhile.
                log.warning("could not refresh monitor membership", error=str(exc))

    async def leave(self) -> None:
        """Step out at once on a clean stop, so the others take over without waiting for the TTL."""
        if self._kv is not None:
            with contextlib.suppress(Exception):
                # Purged, not deleted: a delete leaves a marker, which the stream info lists as a key.
                await self.bus.js.purge_stream(_STREAM, subject=f"{_PREFIX}{self.id}")
