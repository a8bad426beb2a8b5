"""The gateway's in-memory view of routes, instances and access tokens, fed by KV watches.

Requests never wait on NATS: every lookup is a dict access against this table, which the
watches of `pier_routes`, `pier_instances`, `pier_tokens` and `pier_keys` keep current.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Collection

import msgspec
import structlog
from nats.js.kv import KeyValue

from pier.bus import watch
from pier.events import (
    INSTANCES_BUCKET,
    KEYS_BUCKET,
    ROUTES_BUCKET,
    TOKENS_BUCKET,
    InstanceRecord,
    KeyRecord,
    RouteRecord,
    TokenRecord,
)

log = structlog.get_logger("gateway.table")

_route_decoder = msgspec.json.Decoder(RouteRecord)
_instance_decoder = msgspec.json.Decoder(InstanceRecord)
_token_decoder = msgspec.json.Decoder(TokenRecord)
_key_decoder = msgspec.json.Decoder(KeyRecord)


class Table:
    def __init__(self) -> None:
        self.routes: dict[str, RouteRecord] = {}
        self.instances: dict[str, InstanceRecord] = {}
        self._names: dict[str, str] = {}
        # Only ready instances are indexed: the hot path never filters by state.
        self._ready: dict[tuple[str, int], dict[str, InstanceRecord]] = {}
        self._revisions: dict[str, int] = {}
        self.tokens: dict[str, TokenRecord] = {}
        # Users' API keys by public prefix: a collaborator may call with their own (bucket pier_keys).
        self.keys: dict[str, KeyRecord] = {}
        # Called with (model_id, version) when a version's ready instances change: queued calls may go.
        self.on_ready_change: Callable[[str, int], None] | None = None

    def resolve(self, ref: str) -> RouteRecord | None:
        """A model API by id, else by name."""
        record = self.routes.get(ref)
        if record is None:
            model_id = self._names.get(ref)
            record = self.routes.get(model_id) if model_id else None
        return record

    def ready(self, model_id: str, version: int) -> Collection[InstanceRecord]:
        """The version's ready instances, as they are now: a view, not a copy (it is read on every
        call); nothing changes them while a caller iterates, as changes come from other tasks."""
        instances = self._ready.get((model_id, version))
        return instances.values() if instances else ()

    def has_ready(self, model_id: str, version: int) -> bool:
        return bool(self._ready.get((model_id, version)))

    def applied(self, bucket: str, revision: int) -> bool:
        """Whether the watch of `bucket` has applied every change up to `revision`."""
        return self._revisions.get(bucket, 0) >= revision

    def apply(self, bucket: str, key: str, value: bytes | None, revision: int) -> None:
        """One change from a watch: `value` None means the key was deleted."""
        try:
            if bucket == ROUTES_BUCKET:
                self._put_route(key, None if value is None else _route_decoder.decode(value))
            elif bucket == INSTANCES_BUCKET:
                self._put_instance(key, None if value is None else _instance_decoder.decode(value))
            elif bucket == TOKENS_BUCKET:
                if value is None:
                    self.tokens.pop(key, None)
                else:
                    self.tokens[key] = _token_decoder.decode(value)
            elif bucket == KEYS_BUCKET:
                if value is None:
                    self.keys.pop(key, None)
                else:
                    self.keys[key] = _key_decoder.decode(value)
        except msgspec.DecodeError as exc:
            # Keeping the last good value serves traffic better than dropping the key.
            log.error("undecodable record ignored", bucket=bucket, key=key, error=str(exc))
        self._revisions[bucket] = max(self._revisions.get(bucket, 0), revision)

    def _put_route(self, model_id: str, record: RouteRecord | None) -> None:
        old = self.routes.pop(model_id, None)
        if old is not None and self._names.get(old.name) == model_id:
            del self._names[old.name]
        if record is not None:
            self.routes[model_id] = record
            self._names[record.name] = model_id

    def _put_instance(self, instance_id: str, record: InstanceRecord | None) -> None:
        old = self.instances.pop(instance_id, None)
        if old is not None:
            group = self._ready.get((old.model_id, old.version))
            if group is not None:
                group.pop(instance_id, None)
                if not group:
                    del self._ready[(old.model_id, old.version)]
        if record is not None:
            self.instances[instance_id] = record
            if record.state == "ready":
                self._ready.setdefault((record.model_id, record.version), {})[instance_id] = record
        if self.on_ready_change is not None:
            for changed in {(r.model_id, r.version) for r in (old, record) if r is not None}:
                self.on_ready_change(*changed)


async def follow(kv: KeyValue, bucket: str, table: Table, loaded: asyncio.Event) -> None:
    """Apply every change of `bucket` to `table` forever; set `loaded` once the initial values are in."""
    async for change in watch(kv, loaded):
        table.apply(bucket, change.key, change.value, change.revision)


async def load(kvs: dict[str, KeyValue], table: Table, tg: asyncio.TaskGroup) -> list[asyncio.Task[None]]:
    """Start following each bucket in `tg` and return once every initial value is in the table."""
    tasks: list[asyncio.Task[None]] = []
    events: list[asyncio.Event] = []
    for bucket, kv in kvs.items():
        loaded = asyncio.Event()
        events.append(loaded)
        tasks.append(tg.create_task(follow(kv, bucket, table, loaded), name=f"follow {bucket}"))
    for loaded in events:
        await loaded.wait()
    return tasks
