"""The audit trail: every management change as an event, recorded in one place (a middleware).

For a state-changing request under /v1/ the middleware finds the action in ACTIONS (by method and
route), snapshots the model API it is about (its public view, labels and health-check policy),
runs the handler and, if it succeeded, records an `AuditEvent` with the fields that changed, in
one transaction that writes the `audit_events` row and the outbox row the relay publishes on
`pier.audit.<model id or _>.<action>`.

The handler commits its change in transactions of its own, so the event cannot share them.
Instead the change is announced before it runs: an `audit_pending` row, held by a session
advisory lock of the request's connection, and deleted in the transaction that records the event.
An api that dies in between drops its connection and with it the lock; `recover` then records the
event from the pending row and the state found, marked `recovered`. Nothing is lost; at worst an
event is recorded for a change that the crash stopped (then `before` equals `after`).

Events are numbered under a transaction-scoped lock held until commit, so ids commit in order and
a follower reading past the last id it saw never skips one (`GET /v1/events?follow=true`).
"""

from __future__ import annotations

import asyncio
import hashlib
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, NamedTuple

import asyncpg
import msgspec
import structlog
from aiohttp import web

from pier import db, events, outbox
from pier.events import AuditEvent, AuditModel
from pier.tasks import cancel_and_wait
from services.api import auth, sse, store
from services.api.channel import CHANNEL
from services.api.errors import Invalid, NotFound
from services.api.http import Context, json_response
from services.api.logs import forever, int_param
from services.api.settings import stored_policy

log = structlog.get_logger("api.audit")


class Action(NamedTuple):
    name: str
    # Request fields (JSON body or query) and answer fields worth recording where the model API's
    # view cannot show the change. Allow-lists, so that a secret is never among them.
    request: tuple[str, ...] = ()
    response: tuple[str, ...] = ()


_CODE = ("source", "source_name", "git", "ref", "git_credential", "environment", "python_version", "file", "function")

# Every state-changing route of the app (a test fails for one missing here). None: not a change
# (a dry run), or a sign-in-like route whose every request would be noise.
ACTIONS: dict[tuple[str, str], Action | None] = {
    # The volumes too: which host folders a model API mounts is an admin's question.
    ("POST", "/v1/models"): Action("model.create", (*_CODE, "volumes")),
    ("POST", "/v1/models/{ref}/versions"): Action("version.create", _CODE, ("number",)),
    ("PATCH", "/v1/models/{ref}"): Action("settings.change"),
    ("PUT", "/v1/models/{ref}/labels/{label}"): Action("label.promote", ("version",)),
    ("POST", "/v1/models/{ref}/stop"): Action("model.stop"),
    ("POST", "/v1/models/{ref}/restart"): Action("model.restart"),
    ("DELETE", "/v1/models/{ref}"): Action("model.terminate"),
    ("POST", "/v1/models/{ref}/tokens"): Action("token.create", ("name",), ("id", "name")),
    ("DELETE", "/v1/models/{ref}/tokens/{token_id}"): Action("token.revoke"),
    ("POST", "/v1/models/{ref}/schedules"): Action("schedule.create", ("cron", "command", "timeout"), ("id",)),
    ("DELETE", "/v1/models/{ref}/schedules/{id}"): Action("schedule.delete"),
    ("POST", "/v1/models/{ref}/schedules/{id}/runs"): Action("schedule.run", (), ("id",)),
    ("POST", "/v1/environments"): Action("environment.create", ("name", "python_version", "packages")),
    ("POST", "/v1/sources"): Action("source.upload", ("name",), ("digest", "size")),
    ("POST", "/v1/git-credentials"): Action("credential.create", ("name", "username")),
    ("POST", "/v1/plan"): None,  # "would this wait for GPUs?": answers, changes nothing
    ("POST", "/v1/models/{ref}/try"): None,  # the dashboard's tester: a call, as any client's, changes nothing
    ("POST", "/v1/models/{ref}/transfer"): Action("model.transfer", ("owner",)),
    ("PUT", "/v1/models/{ref}/collaborators/{principal}"): Action("collaborator.set", ("role",)),
    ("DELETE", "/v1/models/{ref}/collaborators/{principal}"): Action("collaborator.remove"),
    # The first API key is in the answer: never among the fields.
    ("POST", "/v1/users"): Action("user.create", ("name", "email")),
    ("PATCH", "/v1/users/{name}"): Action("user.change", ("disabled",)),
    ("POST", "/v1/me/keys"): Action("key.create", ("name",), ("id",)),
    ("DELETE", "/v1/me/keys/{id}"): Action("key.delete"),
    ("PUT", "/v1/me/password"): Action("password.set"),  # that it was set; nothing of it
    ("POST", "/v1/orgs"): Action("org.create", ("name",)),
    ("PUT", "/v1/orgs/{org}/members/{user}"): Action("org.member.add"),
    ("DELETE", "/v1/orgs/{org}/members/{user}"): Action("org.member.remove"),
    # Signing in and out: every request would be noise (failed sign-ins are logged and rate limited).
    ("POST", "/v1/session"): None,
    ("DELETE", "/v1/session"): None,
}
CHANGING_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})

DEFAULT_LIMIT = 50
MAX_LIMIT = 500
RECOVER_EVERY = 2.0
PRUNE_EVERY = 3600.0
# Connections held by requests while their change runs: a pool of their own, so that they can
# never take the last connection a handler needs.
AUDIT_CONNECTIONS = 8
AUDIT_POOL = web.AppKey("audit.pool", asyncpg.Pool)
# Advisory lock keys: the one that orders event ids, and a pending change's (its id, negated, so it
# meets neither this key nor the positive ones of migrations).
ORDER_KEY = int.from_bytes(hashlib.sha256(b"pier.audit.order").digest()[:7], "big")
# The model API's view without what changes on its own or says nothing new (every change moves
# updated_at); its versions are shown by number.
_UNSHOWN = ("running_instances", "updated_at", "url", "queue_position")


# ---- snapshots and events -----------------------------------------------------------------------


async def snapshot(conn: asyncpg.Connection, model_id: str | None) -> dict[str, Any] | None:
    """What the audit trail shows of a model API: its public view, version numbers, labels and
    health-check policy; None when there is no such model API."""
    if model_id is None:
        return None
    row = await conn.fetchrow("SELECT * FROM models WHERE id = $1", model_id)
    if row is None:
        return None
    view: dict[str, Any] = msgspec.to_builtins(await store.model_out(conn, row, ""))
    view["versions"] = [v["number"] for v in reversed(view["versions"])]
    for name in _UNSHOWN:
        view.pop(name, None)
    view["health"] = msgspec.structs.asdict(stored_policy(row))
    return view


def diff(before: dict[str, Any] | None, after: dict[str, Any] | None) -> tuple[dict[str, Any], dict[str, Any]]:
    """The fields that differ, as they were and as they are."""
    old, new = before or {}, after or {}
    changed = [k for k in {**old, **new} if k not in old or k not in new or old[k] != new[k]]
    return {k: old[k] for k in changed if k in old}, {k: new[k] for k in changed if k in new}


async def record(
    conn: asyncpg.Connection,
    *,
    actor: str,
    action: str,
    before: dict[str, Any] | None,
    after: dict[str, Any] | None,
    fields: dict[str, Any],
    at: float | None = None,
    recovered: bool = False,
) -> AuditEvent:
    """Write one event and its outbox row, in the caller's transaction."""
    shown = after or before
    model = AuditModel(id=shown["id"], name=shown["name"]) if shown else None
    old, new = diff(before, after)
    # Held until commit: the next event is numbered only once this one is visible.
    await conn.execute("SELECT pg_advisory_xact_lock($1)", ORDER_KEY)
    event_id = int(await conn.fetchval("SELECT nextval(pg_get_serial_sequence('audit_events', 'id'))"))
    event = AuditEvent(
        id=event_id,
        at=at or time.time(),
        actor=actor,
        action=action,
        model=model,
        before=old,
        after=new,
        fields=fields,
        recovered=recovered,
    )
    payload = events.encode(event)
    await conn.execute(
        "INSERT INTO audit_events (id, at, actor, model_id, model_name, action, event)"
        " VALUES ($1, $2, $3, $4, $5, $6, $7)",
        event_id,
        event.at,
        actor,
        model.id if model else None,
        model.name if model else None,
        action,
        payload,
    )
    await outbox.enqueue_raw(
        conn, f"audit-{event_id}", events.audit_subject(model.id if model else None, action), payload, CHANNEL
    )
    return event


# ---- the middleware -----------------------------------------------------------------------------


def action_of(request: web.Request) -> Action | None:
    resource = request.match_info.route.resource
    if request.method not in CHANGING_METHODS or resource is None or not resource.canonical.startswith("/v1/"):
        return None
    return ACTIONS.get((request.method, resource.canonical))


async def _json(request: web.Request) -> dict[str, Any]:
    """The request's JSON body as a dict (read once: aiohttp keeps it for the handler), else {}.
    `body_exists`, not `can_read_body`: a middleware before this one may have read it already."""
    if request.content_type != "application/json" or not request.body_exists:
        return {}
    try:
        body = msgspec.json.decode(await request.read())
    except msgspec.DecodeError:
        return {}  # the handler answers the 400
    return body if isinstance(body, dict) else {}


def _answer(response: web.StreamResponse) -> dict[str, Any]:
    if not isinstance(response, web.Response) or response.content_type != "application/json":
        return {}
    try:
        body = msgspec.json.decode(response.body) if isinstance(response.body, bytes) else None
    except msgspec.DecodeError:
        return {}
    return body if isinstance(body, dict) else {}


def _fields(action: Action, request: web.Request, body: dict[str, Any]) -> dict[str, Any]:
    fields: dict[str, Any] = {k: v for k, v in request.match_info.items() if k != "ref"}
    given = {**request.query, **body}
    fields.update({k: given[k] for k in action.request if given.get(k) is not None})
    return fields


async def _model_id(conn: asyncpg.Connection, ref: str | None) -> str | None:
    if ref is None:
        return None
    try:
        return str((await store.resolve(conn, ref))["id"])
    except NotFound:
        return None


async def _finish(
    conn: asyncpg.Connection,
    pending: int,
    actor: str,
    action: Action,
    model_id: str | None,
    before: dict[str, Any] | None,
    fields: dict[str, Any],
    response: web.StreamResponse,
) -> None:
    """Record a change that succeeded, and drop its pending row, in one transaction."""
    answer = _answer(response)
    fields.update({k: answer[k] for k in action.response if answer.get(k) is not None})
    try:
        async with conn.transaction():
            after = await snapshot(conn, model_id or answer.get("id"))
            await record(conn, actor=actor, action=action.name, before=before, after=after, fields=fields)
            await conn.execute("DELETE FROM audit_pending WHERE id = $1", pending)
    except (asyncpg.PostgresError, OSError) as exc:
        # The change is made: its pending row stays, and `recover` records it.
        log.warning("audit event deferred to recovery", action=action.name, error=str(exc))


def middleware() -> Callable[..., Awaitable[web.StreamResponse]]:
    @web.middleware
    async def audit(
        request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        action = action_of(request)
        if action is None:
            return await handler(request)
        body = await _json(request)
        fields = _fields(action, request, body)
        # A change of a model API not yet made is found afterwards by the name it is created with.
        ref = request.match_info.get("ref") or (body.get("name") if action.name == "model.create" else None)
        async with request.app[AUDIT_POOL].acquire() as conn:
            model_id = await _model_id(conn, request.match_info.get("ref"))
            before = await snapshot(conn, model_id)
            pending = int(await conn.fetchval("SELECT nextval(pg_get_serial_sequence('audit_pending', 'id'))"))
            await conn.execute("SELECT pg_advisory_lock($1)", -pending)
            try:
                await conn.execute(
                    "INSERT INTO audit_pending (id, at, actor, action, model_id, model_ref, before, fields)"
                    " VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
                    pending,
                    time.time(),
                    request[auth.USER],
                    action.name,
                    model_id,
                    ref if isinstance(ref, str) else None,
                    msgspec.json.encode(before).decode(),
                    msgspec.json.encode(fields).decode(),
                )
                try:
                    response = await handler(request)
                except Exception:
                    await conn.execute("DELETE FROM audit_pending WHERE id = $1", pending)
                    raise
                if response.status >= 400:
                    await conn.execute("DELETE FROM audit_pending WHERE id = $1", pending)
                    return response
                await _finish(conn, pending, request[auth.USER], action, model_id, before, fields, response)
                return response
            finally:
                await conn.execute("SELECT pg_advisory_unlock($1)", -pending)

    return audit


async def recover(pool: asyncpg.Pool) -> int:
    """Record the changes of requests whose api died before recording them; how many."""
    done = 0
    async with pool.acquire() as conn:
        for (pending,) in await conn.fetch("SELECT id FROM audit_pending ORDER BY id"):
            if not await conn.fetchval("SELECT pg_try_advisory_lock($1)", -pending):
                continue  # its request is still running
            try:
                async with conn.transaction():
                    row = await conn.fetchrow("SELECT * FROM audit_pending WHERE id = $1 FOR UPDATE", pending)
                    if row is None:
                        continue  # recorded meanwhile by its own request
                    model_id = row["model_id"] or await _model_id(conn, row["model_ref"])
                    await record(
                        conn,
                        actor=row["actor"],
                        action=row["action"],
                        before=msgspec.json.decode(row["before"]),
                        after=await snapshot(conn, model_id),
                        fields=msgspec.json.decode(row["fields"]),
                        at=row["at"],
                        recovered=True,
                    )
                    await conn.execute("DELETE FROM audit_pending WHERE id = $1", pending)
                    done += 1
            finally:
                await conn.execute("SELECT pg_advisory_unlock($1)", -pending)
    if done:
        log.warning("audit events recovered after an api stopped mid-change", count=done)
    return done


# ---- reading the feed ---------------------------------------------------------------------------


class Query(msgspec.Struct, kw_only=True):
    model: str | None = None
    before: int | None = None
    limit: int = DEFAULT_LIMIT
    follow: bool = False


class EventPage(msgspec.Struct, kw_only=True):
    events: list[AuditEvent]  # newest first
    next_before: int | None  # the cursor for the next (older) page; null when there is none


_decoder = msgspec.json.Decoder(AuditEvent)


def parse_query(query: Any) -> Query:
    follow = (query.get("follow") or "false").lower()
    if follow not in ("true", "false", "1", "0"):
        raise Invalid("follow: must be true or false", [("follow", "must be true or false")])
    limit = int_param(query, "limit", 1, MAX_LIMIT)
    return Query(
        model=query.get("model") or None,
        before=int_param(query, "before", 1),
        limit=DEFAULT_LIMIT if limit is None else limit,
        follow=follow in ("true", "1"),
    )


async def page(pool: asyncpg.Pool, model_id: str | None, q: Query) -> EventPage:
    rows = await pool.fetch(
        "SELECT id, event FROM audit_events WHERE ($1::text IS NULL OR model_id = $1)"
        " AND ($2::bigint IS NULL OR id < $2) ORDER BY id DESC LIMIT $3",
        model_id,
        q.before,
        q.limit + 1,
    )
    more = len(rows) > q.limit
    rows = rows[: q.limit]
    return EventPage(events=[_decoder.decode(r["event"]) for r in rows], next_before=rows[-1]["id"] if more else None)


async def newer(pool: asyncpg.Pool, model_id: str | None, after: int, batch: int = 500) -> list[asyncpg.Record]:
    """Up to `batch` events past `after`, oldest first."""
    return await pool.fetch(
        "SELECT id, event FROM audit_events WHERE ($1::text IS NULL OR model_id = $1) AND id > $2 ORDER BY id LIMIT $3",
        model_id,
        after,
        batch,
    )


def _frame(row: asyncpg.Record) -> tuple[int, bytes]:
    return row["id"], sse.frame(row["id"], "audit", bytes(row["event"]))


class Feed:
    def __init__(self, ctx: Context) -> None:
        self.pool = ctx.pool

    def routes(self) -> list[web.RouteDef]:
        return [web.get("/v1/events", self.events)]

    async def events(self, request: web.Request) -> web.StreamResponse:
        """The audit feed: management changes, newest first (`follow=true`: live, server-sent events)"""
        # Who may read which feed is the policy table's (services/api/policy.py): checked already.
        q = parse_query(request.query)
        model_id: str | None = None
        if q.model is not None:
            async with self.pool.acquire() as conn:
                model_id = (await store.resolve(conn, q.model))["id"]
        if not q.follow:
            return json_response(await page(self.pool, model_id, q))
        # Nothing old unless asked for: a client resumes after the last id it saw, oldest first.
        after = sse.resume_after(request)
        if after is None:
            after = int(
                await self.pool.fetchval(
                    "SELECT coalesce(max(id), 0) FROM audit_events WHERE ($1::text IS NULL OR model_id = $1)", model_id
                )
            )

        async def more(cursor: int) -> list[asyncpg.Record]:
            return await newer(self.pool, model_id, cursor)

        return await sse.serve(request, [], after, more, _frame)


def routes(ctx: Context) -> list[web.RouteDef]:
    return Feed(ctx).routes()


async def prune(pool: asyncpg.Pool, max_age_days: float) -> int:
    """Retention: events older than PIER_AUDIT_MAX_AGE_DAYS go, as they do from the PIER_AUDIT stream."""
    status = await pool.execute("DELETE FROM audit_events WHERE at < $1", time.time() - max_age_days * 86400.0)
    return int(status.split()[-1])


async def prune_forever(pool: asyncpg.Pool, max_age_days: float, every: float = PRUNE_EVERY) -> None:
    while True:
        try:
            await prune(pool, max_age_days)
        except (asyncpg.PostgresError, OSError) as exc:
            log.warning("audit pruning failed; will retry", error=str(exc))
        await asyncio.sleep(every)


async def recover_forever(pool: asyncpg.Pool, every: float = RECOVER_EVERY) -> None:
    while True:
        await recover(pool)
        await asyncio.sleep(every)


def setup(app: web.Application, ctx: Context) -> None:
    """The requests' own connections, recovery of changes an api died in, and retention."""

    async def background(app: web.Application) -> AsyncIterator[None]:
        app[AUDIT_POOL] = await db.create_pool(ctx.settings, "api", max_size=AUDIT_CONNECTIONS)
        tasks = [
            asyncio.create_task(forever(lambda: recover_forever(ctx.pool), "audit recovery")),
            asyncio.create_task(
                forever(lambda: prune_forever(ctx.pool, ctx.settings.audit_max_age_days), "audit pruning")
            ),
        ]
        try:
            yield
        finally:
            await cancel_and_wait(tasks)
            await db.close_pool(app[AUDIT_POOL])

    app.cleanup_ctx.append(background)
