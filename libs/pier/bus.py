"""NATS and JetStream: connect, declare streams and buckets, publish, durable consumers, KV."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from typing import Any, TypeVar
from urllib.parse import urlsplit

import msgspec
import nats
import nats.js.errors
import structlog
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.api import (
    AckPolicy,
    ConsumerConfig,
    DeliverPolicy,
    DiscardPolicy,
    PubAck,
    RetentionPolicy,
    StorageType,
    StreamConfig,
)
from nats.js.kv import KV_DEL, KV_PURGE, KeyValue

from pier import events, passwords, telemetry
from pier.config import Settings
from pier.events import Message
from pier.tasks import cancel_and_wait

log = structlog.get_logger("bus")
DAY = 86400.0
# How long a consumer waits before it fetches again from a JetStream that answered 503.
FETCH_RETRY = 0.5

M = TypeVar("M", bound=Message)
Handler = Callable[[Any], Awaitable[None]]


def _streams(settings: Settings) -> list[StreamConfig]:
    return [
        StreamConfig(
            name=events.CMD_STREAM,
            subjects=[f"{events.CMD_PREFIX}.>"],
            retention=RetentionPolicy.WORK_QUEUE,
            storage=StorageType.FILE,
            duplicate_window=120.0,
        ),
        StreamConfig(
            name=events.EVENTS_STREAM,
            subjects=[f"{events.EVENTS_PREFIX}.>"],
            retention=RetentionPolicy.LIMITS,
            storage=StorageType.FILE,
            max_age=settings.events_max_age_days * DAY,
            duplicate_window=120.0,
        ),
        StreamConfig(
            name=events.LOGS_STREAM,
            subjects=[f"{events.LOGS_PREFIX}.>"],
            retention=RetentionPolicy.LIMITS,
            storage=StorageType.FILE,
            max_age=settings.logs_max_age_days * DAY,
            discard=DiscardPolicy.OLD,
        ),
        StreamConfig(
            name=events.AUDIT_STREAM,
            subjects=[f"{events.AUDIT_PREFIX}.>"],
            retention=RetentionPolicy.LIMITS,
            storage=StorageType.FILE,
            max_age=settings.audit_max_age_days * DAY,
            duplicate_window=120.0,
        ),
    ]


class Bus:
    """One NATS connection with JetStream, shared by a service's parts."""

    def __init__(self, nc: NATS, settings: Settings) -> None:
        self.nc = nc
        self.js: JetStreamContext = nc.jetstream()
        self.settings = settings
        self._kv: dict[str, KeyValue] = {}

    async def declare(self) -> None:
        """Create streams and buckets, or bring their settings up to date; safe to run at every start."""
        for config in _streams(self.settings):
            try:
                await self.js.add_stream(config)
            except nats.js.errors.BadRequestError:
                await self.js.update_stream(config)
        for bucket in (events.ROUTES_BUCKET, events.INSTANCES_BUCKET, events.TOKENS_BUCKET, events.KEYS_BUCKET):
            self._kv[bucket] = await self.js.create_key_value(bucket=bucket, history=1)

    async def kv(self, bucket: str) -> KeyValue:
        if bucket not in self._kv:
            self._kv[bucket] = await self.js.key_value(bucket)
        return self._kv[bucket]

    async def publish(self, msg: Message) -> None:
        """Publish to JetStream with the message id as Nats-Msg-Id: a repeat within the
        de-duplication window is dropped by the server."""
        headers = telemetry.inject({"Nats-Msg-Id": msg.id})
        await self.js.publish(msg.subject(), events.encode(msg), headers=headers, timeout=5.0)

    async def publish_raw(self, subject: str, data: bytes, msg_id: str) -> PubAck:
        """Publish with `msg_id` as Nats-Msg-Id; the ack says whether it was a repeat (`duplicate`,
        then `seq` is the original's)."""
        headers = telemetry.inject({"Nats-Msg-Id": msg_id})
        return await self.js.publish(subject, data, headers=headers, timeout=5.0)

    async def log(self, model_id: str, kind: events.LogKind, line: str, **fields: Any) -> None:
        record = events.LogLine(at=time.time(), kind=kind, line=line, **fields)
        await self.js.publish(events.logs_subject(model_id, kind), events.encode(record), timeout=5.0)

    async def consume(
        self,
        types: Sequence[type[M]],
        handler: Callable[[M], Awaitable[None]],
        *,
        durable: str,
        concurrency: int = 1,
        max_deliver: int = 20,
    ) -> None:
        """Run a durable pull consumer forever: each message is handled, then acked.

        A handler that raises gets its message again after a back-off; a process that dies
        mid-message gets it again after `ack_wait`. Handlers must therefore be idempotent.
        """
        stream = events.CMD_STREAM if types[0].prefix == events.CMD_PREFIX else events.EVENTS_STREAM
        subjects = [t.subject() for t in types]
        ack_wait = self.settings.ack_wait
        config = ConsumerConfig(
            durable_name=durable,
            ack_policy=AckPolicy.EXPLICIT,
            deliver_policy=DeliverPolicy.ALL,
            ack_wait=ack_wait,
            max_deliver=max_deliver,
            filter_subjects=subjects,
            max_ack_pending=max(concurrency * 4, 16),
        )
        # A consumer that exists with another config (after an upgrade) is kept: it still delivers.
        with contextlib.suppress(nats.js.errors.BadRequestError):
            await self.js.add_consumer(stream, config)
        sub = await self.js.pull_subscribe_bind(durable=durable, stream=stream)
        decoder = msgspec.json.Decoder(_union(types))
        slots = asyncio.Semaphore(concurrency)
        handling: set[asyncio.Task[None]] = set()
        try:
            while True:
                await slots.acquire()
                slots.release()
                try:
                    msgs = await sub.fetch(1, timeout=5.0)
                except (nats.errors.TimeoutError, TimeoutError):
                    continue
                except (nats.js.errors.ServiceUnavailableError, nats.errors.NoRespondersError) as exc:
                    # JetStream answers 503 (or nobody answers) for a moment after nats-server
                    # restarts: the consumer waits for it rather than take its service down.
                    log.warning("JetStream unavailable; fetching again", durable=durable, error=repr(exc))
                    await asyncio.sleep(FETCH_RETRY)
                    continue
                for msg in msgs:
                    await slots.acquire()
                    task = asyncio.create_task(self._handle(msg, decoder, handler, slots, ack_wait))
                    handling.add(task)
                    task.add_done_callback(handling.discard)
        finally:
            # Not a TaskGroup: a handler mid-request can outlive the one cancel() a TaskGroup gives.
            await cancel_and_wait(handling)
            # A pull subscription cancelled mid-fetch would otherwise hold the connection's drain
            # for its whole timeout.
            with contextlib.suppress(Exception):
                await sub.unsubscribe()

    async def _handle(
        self,
        msg: Msg,
        decoder: msgspec.json.Decoder[Any],
        handler: Handler,
        slots: asyncio.Semaphore,
        ack_wait: float,
    ) -> None:
        try:
            try:
                item = decoder.decode(msg.data)
            except msgspec.DecodeError as exc:
                log.error("undecodable message dropped", subject=msg.subject, error=str(exc))
                await msg.term()
                return
            with telemetry.span_from(msg.headers, f"handle {msg.subject}", message_id=item.id):
                heartbeat = asyncio.create_task(_keep_alive(msg, ack_wait / 3))
                try:
                    await handler(item)
                finally:
                    heartbeat.cancel()
            await msg.ack()
        except asyncio.CancelledError:
            raise
        except Exception:
            attempt = msg.metadata.num_delivered or 1
            log.exception("handler failed; will retry", subject=msg.subject, attempt=attempt)
            try:
                await msg.nak(delay=min(0.5 * 2**attempt, 30.0))
            except Exception as exc:
                # The server redelivers after ack_wait all the same: nothing is lost.
                log.warning("nak failed", subject=msg.subject, error=repr(exc))
        finally:
            slots.release()


async def _keep_alive(msg: Msg, every: float) -> None:
    """Tell the server a long handler is still working, so the message is not redelivered."""
    while True:
        await asyncio.sleep(every)
        await msg.in_progress()


def _union(types: Sequence[type[Message]]) -> Any:
    union: Any = types[0]
    for t in types[1:]:
        union = union | t
    return union


@asynccontextmanager
async def connect(settings: Settings, name: str) -> AsyncIterator[Bus]:
    password = passwords.read(settings.nats_password_file)
    credentials = {} if password is None else {"user": urlsplit(settings.nats_url).username, "password": password}
    nc = await nats.connect(
        settings.nats_url,
        **credentials,
        name=f"pier-{name}",
        max_reconnect_attempts=-1,
        reconnect_time_wait=0.5,
        connect_timeout=5,
        drain_timeout=5,
    )
    bus = Bus(nc, settings)
    try:
        await bus.declare()
        yield bus
    finally:
        await nc.drain()


async def kv_update(kv: KeyValue, key: str, change: Callable[[bytes | None], bytes | None]) -> None:
    """Read-modify-write one key with compare-and-set, retrying when another writer got there first.
    `change` returns the new value, or None to delete the key."""
    for _ in range(50):
        try:
            entry = await kv.get(key)
            current, revision = entry.value, entry.revision
        except nats.js.errors.NotFoundError:
            current, revision = None, None
        new = change(current)
        try:
            if new is None:
                if current is not None:
                    await kv.delete(key, last=revision)
            elif revision is None:
                await kv.create(key, new)
            else:
                await kv.update(key, new, last=revision)
            return
        except (nats.js.errors.KeyWrongLastSequenceError, nats.js.errors.BadRequestError):
            await asyncio.sleep(0.01)
    raise RuntimeError(f"could not update {key}: too many concurrent writers")


class KVChange(msgspec.Struct, frozen=True):
    key: str
    value: bytes | None  # None: the key was deleted
    revision: int


async def watch(kv: KeyValue, loaded: asyncio.Event) -> AsyncIterator[KVChange]:
    """Every key's current value, then every change, forever; `loaded` is set once the initial
    values have all been yielded, so a reader knows when its view is complete."""
    watcher = await kv.watchall()
    try:
        async for entry in watcher:
            if entry is None:  # nats-py marks the end of the initial values with None
                loaded.set()
                continue
            deleted = entry.operation in (KV_DEL, KV_PURGE)
            yield KVChange(entry.key, None if deleted else entry.value, entry.revision or 0)
    finally:
        with contextlib.suppress(Exception):
            await watcher.stop()
