"""Build, instance and deployment logs: folded from the PIER_LOGS stream into PostgreSQL, served
newest first with a cursor for older lines, and live as server-sent events.

- `LogFolder` is a durable pull consumer of PIER_LOGS. A message carries one line (build and
  deployment logs) or a batch of them (instance logs) and is stored as one row of `log_batches`;
  each line's number is made of the message's stream sequence and its place in the message, which
  orders the lines, is the paging cursor, and makes a redelivered message a no-op.
- `DeploymentLog` turns lifecycle events (placed, started, ready, unhealthy, restarting, stopped,
  state changes) into deployment log lines, published with the event's id as Nats-Msg-Id so a
  redelivered event writes its line once.
- `GET /v1/models/{ref}/logs` reads the table; `follow=true` streams it (services/api/sse.py), so a
  follower on any api replica sees lines folded by any other within a second.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Callable
from typing import Any, get_args

import asyncpg
import msgspec
import nats.errors
import nats.js.errors
import structlog
from aiohttp import web
from nats.aio.msg import Msg
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy

from pier import events
from pier.bus import Bus
from pier.events import (
    LOG_BATCH_MAX,
    AnyEvent,
    BuildFailed,
    BuildStarted,
    BuildSucceeded,
    InstanceReady,
    InstanceRestarting,
    InstanceStarted,
    InstanceStopped,
    InstanceUnhealthy,
    LogBatch,
    LogKind,
    LogLine,
    ModelFailed,
    ModelPlaced,
    ModelStateChanged,
    ModelStopped,
)
from services.api import sse, store
from services.api.errors import Invalid
from services.api.http import Context, json_response

log = structlog.get_logger("api.logs")

FOLD_DURABLE = "api-logs"
DEPLOYMENT_DURABLE = "api-deployment-log"
KINDS: tuple[str, ...] = get_args(LogKind)
DEFAULT_LIMIT = 100
MAX_LIMIT = 1000
FETCH_BATCH = 256
PRUNE_EVERY = 3600.0

_line_decoder = msgspec.json.Decoder(LogLine)
_batch_decoder = msgspec.json.Decoder(LogBatch)


class LogOut(msgspec.Struct, kw_only=True):
    seq: int  # the line's position; pass it as `before` to read older lines
    at: float
    kind: str
    line: str
    version: int | None = None
    instance_id: str | None = None


class LogPage(msgspec.Struct, kw_only=True):
    lines: list[LogOut]  # newest first
    next_before: int | None  # the cursor for the next (older) page; null when there is none


# ---- folding the stream -------------------------------------------------------------------------


def _row(msg: Msg) -> tuple[Any, ...] | None:
    """The table row of one message: a LogBatch's lines (the shipper's instance logs) or one LogLine.
    Its `seq` is the stream sequence x LOG_BATCH_MAX; line n of it is numbered seq + n."""
    parts = msg.subject.split(".")
    if len(parts) != 4 or parts[3] not in KINDS:
        return None
    model_id, kind = parts[2], parts[3]
    try:
        batch = _batch_decoder.decode(msg.data)
        at, lines, version, instance_id = batch.at, batch.lines[:LOG_BATCH_MAX], batch.version, batch.instance_id
    except msgspec.ValidationError:  # no `lines`: a single line (build and deployment logs)
        try:
            record = _line_decoder.decode(msg.data)
        except msgspec.DecodeError as exc:
            log.error("undecodable log line dropped", subject=msg.subject, error=str(exc))
            return None
        at, lines, version, instance_id = record.at, [record.line], record.version, record.instance_id
    except msgspec.DecodeError as exc:
        log.error("undecodable log message dropped", subject=msg.subject, error=str(exc))
        return None
    if not lines:
        return None
    return (msg.metadata.sequence.stream * LOG_BATCH_MAX, model_id, kind, version, instance_id, at, lines)


class LogFolder:
    def __init__(self, pool: asyncpg.Pool, bus: Bus) -> None:
        self.pool = pool
        self.bus = bus

    async def run(self) -> None:
        await self._number_past_the_table()
        config = ConsumerConfig(
            durable_name=FOLD_DURABLE,
            ack_policy=AckPolicy.EXPLICIT,
            deliver_policy=DeliverPolicy.ALL,
            ack_wait=self.bus.settings.ack_wait,
            max_ack_pending=FETCH_BATCH * 4,
            filter_subject=f"{events.LOGS_PREFIX}.>",
        )
        with contextlib.suppress(nats.js.errors.BadRequestError):
            await self.bus.js.add_consumer(events.LOGS_STREAM, config)
        sub = await self.bus.js.pull_subscribe_bind(durable=FOLD_DURABLE, stream=events.LOGS_STREAM)
        try:
            while True:
                try:
                    msgs = await sub.fetch(FETCH_BATCH, timeout=1.0)
                except (nats.errors.TimeoutError, TimeoutError):
                    continue
                try:
                    await self.store(msgs)
                except (asyncpg.PostgresError, OSError) as exc:
                    # Unacked lines come back after ack_wait; the table drops the copies.
                    log.warning("could not store log lines; they will be redelivered", error=str(exc))
                    await asyncio.sleep(1.0)
                    continue
                for msg in msgs:
                    await msg.ack()
        finally:
            with contextlib.suppress(Exception):
                await sub.unsubscribe()

    async def _number_past_the_table(self) -> None:
        """A PIER_LOGS younger than the table (a database restored beside an empty NATS store, or a
        store lost) numbers its messages from 1 again: numbers `log_batches` holds already, so every
        new line would be dropped as a copy of an old one. Its numbering moves past the table's
        first (purging up to a sequence beyond the last sets the next one)."""
        top = await self.pool.fetchval("SELECT max(seq) FROM log_batches")
        if top is None:
            return
        after = top // LOG_BATCH_MAX + 1
        info = await self.bus.js.stream_info(events.LOGS_STREAM)
        if (info.state.last_seq or 0) < after:
            log.warning("log stream numbered behind the stored lines; moved past them", first=after)
            await self.bus.js.purge_stream(events.LOGS_STREAM, seq=after)

    async def store(self, msgs: list[Msg]) -> None:
        """One row per message, all of a fetch in one pipelined round trip: PostgreSQL's work
        follows the batches, not the calls."""
        rows = [row for row in map(_row, msgs) if row is not None]
        if rows:
            await self.pool.executemany(
                "INSERT INTO log_batches (seq, model_id, kind, version, instance_id, at, lines)"
                " VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT (seq) DO NOTHING",
                rows,
            )

    async def prune(self, every: float = PRUNE_EVERY) -> None:
        """Retention: lines older than PIER_LOGS_MAX_AGE_DAYS go, as they do from the stream."""
        while True:
            horizon = time.time() - self.bus.settings.logs_max_age_days * 86400.0
            try:
                await self.pool.execute("DELETE FROM log_batches WHERE at < $1", horizon)
            except (asyncpg.PostgresError, OSError) as exc:
                log.warning("log pruning failed; will retry", error=str(exc))
            await asyncio.sleep(every)


# ---- the deployment log -------------------------------------------------------------------------


def deployment_line(event: Any) -> str | None:
    """What a lifecycle event says in the deployment log, or None for events it does not show."""
    match event:
        case ModelStateChanged(state=state, reason=reason):
            words = {"waiting": "queued: waiting for capacity", "building": "queued: building"}
            text = words.get(state, f"model API {state}")
            return f"{text}: {reason}" if reason else text
        case BuildStarted(version=v):
            return f"version {v}: build started"
        case BuildSucceeded(version=v):
            return f"version {v}: build succeeded"
        case BuildFailed(version=v, reason=reason):
            return f"version {v}: build failed: {reason}"
        case ModelPlaced(version=v, instances=ids):
            return f"version {v}: placed {len(ids)} instance(s): {', '.join(ids)}"
        case InstanceStarted(version=v, instance_id=iid, address=address):
            return f"version {v}: instance {iid} started at {address}"
        case InstanceReady(version=v, instance_id=iid):
            return f"version {v}: instance {iid} ready"
        case InstanceUnhealthy(version=v, instance_id=iid, reason=reason):
            return f"version {v}: instance {iid} unhealthy: {reason}"
        case InstanceRestarting(version=v, instance_id=iid, reason=reason, delay=delay, attempt=attempt):
            return f"version {v}: instance {iid} restarting in {delay:g} s (restart {attempt}): {reason}"
        case InstanceStopped(version=v, instance_id=iid, reason=reason):
            if reason.startswith("restarting"):
                return f"version {v}: instance {iid} restarted ({reason})"
            return f"version {v}: instance {iid} stopped: {reason}"
        case ModelFailed(version=v, instance_id=iid, reason=reason):
            return f"version {v}: failed: instance {iid}: {reason}"
        case ModelStopped(version=v):
            return "model API stopped" if v is None else f"version {v}: stopped"
    return None


class DeploymentLog:
    def __init__(self, bus: Bus) -> None:
        self.bus = bus

    async def run(self) -> None:
        await self.bus.consume(list(get_args(AnyEvent)), self.handle, durable=DEPLOYMENT_DURABLE, concurrency=4)

    async def handle(self, event: Any) -> None:
        model_id = getattr(event, "model_id", None)
        text = deployment_line(event)
        if model_id is None or text is None:
            return
        record = LogLine(
            at=event.at,
            kind="deployment",
            line=text,
            version=getattr(event, "version", None),
            instance_id=getattr(event, "instance_id", None),
        )
        await self.bus.publish_raw(
            events.logs_subject(model_id, "deployment"), events.encode(record), msg_id=f"deploy:{event.id}"
        )


# ---- HTTP ---------------------------------------------------------------------------------------


class Query(msgspec.Struct, kw_only=True):
    kind: str | None = None
    version: int | None = None
    instance: str | None = None
    before: int | None = None
    after: int | None = None
    limit: int = DEFAULT_LIMIT
    follow: bool = False


def int_param(query: Any, name: str, low: int, high: int | None = None) -> int | None:
    raw = query.get(name)
    if raw is None or raw == "":
        return None
    try:
        value = int(raw)
    except ValueError:
        raise Invalid(f"{name}: {raw!r} is not an integer", [(name, "is not an integer")]) from None
    if value < low or (high is not None and value > high):
        bound = f"between {low} and {high}" if high is not None else f"at least {low}"
        raise Invalid(f"{name}: must be {bound}", [(name, f"must be {bound}")])
    return value


def parse_query(query: Any) -> Query:
    kind = query.get("kind") or None
    if kind is not None and kind not in KINDS:
        problem = f"must be one of {', '.join(KINDS)}"
        raise Invalid(f"kind: {problem}", [("kind", problem)])
    follow_raw = (query.get("follow") or "false").lower()
    if follow_raw not in ("true", "false", "1", "0"):
        raise Invalid("follow: must be true or false", [("follow", "must be true or false")])
    limit = int_param(query, "limit", 1, MAX_LIMIT)
    return Query(
        kind=kind,
        version=int_param(query, "version", 1),
        instance=query.get("instance") or None,
        before=int_param(query, "before", 1),
        after=int_param(query, "after", 0),
        limit=DEFAULT_LIMIT if limit is None else limit,
        follow=follow_raw in ("true", "1"),
    )


def _where(model_id: str, q: Query) -> tuple[str, list[Any]]:
    clauses: list[str] = ["model_id = $1"]
    args: list[Any] = [model_id]
    for column, value in (("kind", q.kind), ("version", q.version), ("instance_id", q.instance)):
        if value is not None:
            args.append(value)
            clauses.append(f"{column} = ${len(args)}")
    return " AND ".join(clauses), args


def _out(row: asyncpg.Record, n: int) -> LogOut:
    return LogOut(
        seq=row["seq"] + n,
        at=row["at"],
        kind=row["kind"],
        line=row["lines"][n],
        version=row["version"],
        instance_id=row["instance_id"],
    )


# Rows read per query while paging: most pages need one.
ROWS_PER_READ = 8


async def page(pool: asyncpg.Pool, model_id: str, q: Query) -> LogPage:
    """The newest `limit` lines older than `before`, newest first, read row by row (each row a
    batch of lines) until there are enough."""
    where, args = _where(model_id, q)
    lines: list[LogOut] = []
    below = q.before  # rows starting below it hold the lines wanted (and, the first, newer ones)
    while len(lines) <= q.limit:
        clause = where if below is None else f"{where} AND seq < ${len(args) + 1}"
        params = args if below is None else [*args, below]
        rows = await pool.fetch(
            f"SELECT * FROM log_batches WHERE {clause} ORDER BY seq DESC LIMIT {ROWS_PER_READ}", *params
        )
        for row in rows:
            for n in reversed(range(len(row["lines"]))):
                if q.before is None or row["seq"] + n < q.before:
                    lines.append(_out(row, n))
        if len(rows) < ROWS_PER_READ:
            break
        below = rows[-1]["seq"]
    more = len(lines) > q.limit
    lines = lines[: q.limit]
    return LogPage(lines=lines, next_before=lines[-1].seq if more and lines else None)


async def newer(pool: asyncpg.Pool, model_id: str, q: Query, after: int, batch: int = 500) -> list[LogOut]:
    """Up to about `batch` lines past `after`, oldest first."""
    where, args = _where(model_id, q)
    args.append(after - LOG_BATCH_MAX)  # the row holding line `after` starts at most this far before it
    where += f" AND seq > ${len(args)}"
    lines: list[LogOut] = []
    while len(lines) < batch:
        rows = await pool.fetch(
            f"SELECT * FROM log_batches WHERE {where} ORDER BY seq ASC LIMIT {ROWS_PER_READ}", *args
        )
        for row in rows:
            lines += [_out(row, n) for n in range(len(row["lines"])) if row["seq"] + n > after]
        if len(rows) < ROWS_PER_READ:
            break
        args[-1] = rows[-1]["seq"]
    return lines


class LogRoutes:
    def __init__(self, ctx: Context) -> None:
        self.pool = ctx.pool

    def routes(self) -> list[web.RouteDef]:
        return [web.get("/v1/models/{ref}/logs", self.logs)]

    async def logs(self, request: web.Request) -> web.StreamResponse:
        q = parse_query(request.query)
        async with self.pool.acquire() as conn:
            model = await store.resolve(conn, request.match_info["ref"])
        if not q.follow:
            return json_response(await page(self.pool, model["id"], q))
        return await self.follow(request, model["id"], q)

    async def follow(self, request: web.Request, model_id: str, q: Query) -> web.StreamResponse:
        """Server-sent events: the last `limit` lines oldest first (or those after `Last-Event-ID` /
        `after`), then every new line as it is folded, until the client goes or the api stops."""
        resume = sse.resume_after(request)
        after = resume if resume is not None else q.after
        backlog: list[LogOut] = []
        if after is None:
            backlog = list(reversed((await page(self.pool, model_id, q)).lines))
            after = backlog[-1].seq if backlog else await self._last_seq(model_id)

        async def more(cursor: int) -> list[LogOut]:
            return await newer(self.pool, model_id, q, cursor)

        return await sse.serve(request, backlog, after, more, _sse)

    async def _last_seq(self, model_id: str) -> int:
        last = await self.pool.fetchval(
            "SELECT seq + cardinality(lines) - 1 FROM log_batches WHERE model_id = $1 ORDER BY seq DESC LIMIT 1",
            model_id,
        )
        return int(last or 0)


def _sse(line: LogOut) -> tuple[int, bytes]:
    return line.seq, sse.frame(line.seq, "log", msgspec.json.encode(line))


def routes(ctx: Context) -> list[web.RouteDef]:
    return LogRoutes(ctx).routes()


def setup(app: web.Application, ctx: Context) -> None:
    """Run the folder and the deployment log beside the HTTP app."""

    async def background(_: web.Application) -> AsyncIterator[None]:
        folder = LogFolder(ctx.pool, ctx.bus)
        tasks = [
            asyncio.create_task(forever(folder.run, "log folder")),
            asyncio.create_task(forever(folder.prune, "log pruning")),
            asyncio.create_task(forever(DeploymentLog(ctx.bus).run, "deployment log")),
        ]
        yield
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    app.cleanup_ctx.append(background)


async def forever(run: Callable[[], Any], what: str) -> None:
    """Restart a background loop that fails (NATS or PostgreSQL away), rather than leave logs unfolded."""
    while True:
        try:
            await run()
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("background task failed; restarting", task=what)
        await asyncio.sleep(1.0)
