"""A model API's settings: the health-check policy and the request timeout (`PATCH /v1/models/{ref}`).

A change is checked (a ready instance must not be restarted under a call still within its
request timeout: period * failure_threshold > request_timeout), stored, published in the route
record (the gateway and every monitor replica read it there), and rolled out by restarting the
live instances one at a time: the next restarts only once the previous one is ready again, so
calls keep being served by the others. The rollout advances from lifecycle events (`advance`).

To add a setting: a field on `ModelSettings` (None = unchanged), and where it is stored in `apply`.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Annotated, Any, Literal

import asyncpg
import msgspec
from aiohttp import web

from pier import events
from pier.events import HealthPolicy, Message, RestartInstance
from services.api import labels, routing, store
from services.api.errors import Conflict, Invalid
from services.api.http import Context, json_response, read_body

Seconds = Annotated[float, msgspec.Meta(ge=0, le=86400)]
Positive = Annotated[float, msgspec.Meta(gt=0, le=86400)]
# Fields of HealthPolicy a user may set; each is also a field of ModelSettings and CreateModel.
HEALTH_FIELDS = tuple(f.name for f in msgspec.structs.fields(HealthPolicy))


class ModelSettings(msgspec.Struct, kw_only=True, forbid_unknown_fields=True, omit_defaults=True):
    """A change of settings: each field left out (or null) keeps its value."""

    initial_delay: Seconds | None = None
    period: Positive | None = None
    timeout: Positive | None = None
    failure_threshold: Annotated[int, msgspec.Meta(ge=1, le=1000)] | None = None
    request_timeout: Annotated[float, msgspec.Meta(gt=0, le=3600)] | None = None
    restart_backoff: Seconds | None = None
    restart_backoff_max: Seconds | None = None
    restart_window: Positive | None = None
    max_restarts: Annotated[int, msgspec.Meta(ge=0, le=1000)] | None = None
    # Gateway settings: published in the route record, applied without restarting instances.
    access: Literal["restricted", "unrestricted"] | None = None
    routing_mode: Literal["basic", "advanced"] | None = None
    # Who may see it: the owner's choice (the policy table asks for the owner when this is set).
    visibility: Literal["public", "private"] | None = None


class SettingsOut(msgspec.Struct, kw_only=True):
    request_timeout: float
    visibility: str
    # Every field, defaults included (HealthPolicy itself omits defaults on the wire).
    health: dict[str, float]
    # Instances still to restart for the last change (the first is restarting now).
    restarting: list[str]


def stored_policy(row: asyncpg.Record) -> HealthPolicy:
    return msgspec.json.decode(row["health"] or "{}", type=HealthPolicy)


def merged(policy: HealthPolicy, changes: Any) -> HealthPolicy:
    """`policy` with every health field `changes` sets (a ModelSettings or a CreateModel)."""
    given = {name: getattr(changes, name, None) for name in HEALTH_FIELDS}
    return msgspec.structs.replace(policy, **{k: v for k, v in given.items() if v is not None})


def check(policy: HealthPolicy, request_timeout: float) -> None:
    window = policy.period * policy.failure_threshold
    if window <= request_timeout:
        detail = (
            f"period * failure_threshold ({policy.period:g} s * {policy.failure_threshold} = {window:g} s) must be"
            f" greater than request_timeout ({request_timeout:g} s), so an instance busy with a call is not"
            " restarted before the call may end: raise period or failure_threshold, or lower request_timeout"
        )
        problem = "period * failure_threshold must be greater than request_timeout"
        raise Invalid(detail, [("period", problem), ("failure_threshold", problem), ("request_timeout", problem)])
    if policy.restart_backoff_max < policy.restart_backoff:
        problem = "must be at least restart_backoff"
        raise Invalid(f"restart_backoff_max: {problem}", [("restart_backoff_max", problem)])


def policy_json(policy: HealthPolicy) -> str:
    return msgspec.json.encode(policy).decode()


async def store_initial(conn: asyncpg.Connection, model_id: str, spec: Any) -> None:
    """At create: the policy given with the model API (defaults for the rest), checked."""
    policy = merged(HealthPolicy(), spec)
    check(policy, spec.request_timeout)
    await conn.execute("UPDATE models SET health = $2 WHERE id = $1", model_id, policy_json(policy))


Emit = Callable[[asyncpg.Connection, Message], Awaitable[None]]


async def apply(conn: asyncpg.Connection, ref: str, changes: ModelSettings, emit: Emit) -> str:
    """Store a change and start its rollout; returns the model API's id. Call in a transaction."""
    model = await store.resolve(conn, ref, lock=True)
    if model["state"] in ("failed", "terminated"):
        raise Conflict(f"model API {model['name']!r} is {model['state']}: only terminate is accepted")
    old = stored_policy(model)
    policy = merged(old, changes)
    request_timeout = changes.request_timeout or model["request_timeout"]
    check(policy, request_timeout)
    await _apply_gateway_settings(conn, model, changes)
    if policy == old and request_timeout == model["request_timeout"]:
        return str(model["id"])
    await conn.execute(
        "UPDATE models SET health = $2, request_timeout = $3, updated_at = now() WHERE id = $1",
        model["id"],
        policy_json(policy),
        request_timeout,
    )
    live = await conn.fetch(
        "SELECT instance_id FROM instances WHERE model_id = $1 AND state IN ('starting', 'ready', 'unhealthy')"
        " ORDER BY version, instance_id",
        model["id"],
    )
    # A rollout already under way restarts the one in flight once more only if it is not the current one.
    await conn.execute(
        "UPDATE models SET rollout_pending = $2 WHERE id = $1",
        model["id"],
        [r["instance_id"] for r in live if r["instance_id"] != model["rollout_current"]],
    )
    if model["rollout_current"] is None:
        await advance(conn, model["id"], None, emit)
    return str(model["id"])


async def _apply_gateway_settings(conn: asyncpg.Connection, model: asyncpg.Record, changes: ModelSettings) -> None:
    """Access, routing mode (the route record, published after the commit, carries them) and visibility."""
    if changes.visibility is not None and changes.visibility != model["visibility"]:
        await conn.execute(
            "UPDATE models SET visibility = $2, updated_at = now() WHERE id = $1", model["id"], changes.visibility
        )
    if changes.access is not None and changes.access != model["access"]:
        await conn.execute(
            "UPDATE models SET access = $2, updated_at = now() WHERE id = $1", model["id"], changes.access
        )
    if changes.routing_mode is not None and changes.routing_mode != model["routing_mode"]:
        await conn.execute(
            "UPDATE models SET routing_mode = $2, updated_at = now() WHERE id = $1", model["id"], changes.routing_mode
        )
        if changes.routing_mode == "basic":
            # Imported here: labels imports the api's http module, which imports the lifecycle.

            updated = await conn.fetchrow("SELECT * FROM models WHERE id = $1", model["id"])
            for row in await conn.fetch("SELECT DISTINCT version FROM labels WHERE model_id = $1", model["id"]):
                await labels.retire(conn, updated, row["version"], "routing mode changed to basic")


async def advance(conn: asyncpg.Connection, model_id: str, finished: str | None, emit: Emit) -> None:
    """Restart the next instance of a rollout once `finished` (the one restarting) is ready again
    or gone. Called by the lifecycle for InstanceReady and InstanceStopped, in its transaction."""
    row = await conn.fetchrow(
        "SELECT rollout_pending, rollout_current, request_timeout FROM models WHERE id = $1", model_id
    )
    if row is None or row["rollout_current"] != finished:
        return
    pending: list[str] = list(row["rollout_pending"])
    # Skip instances that stopped meanwhile.
    alive = {
        r["instance_id"]
        for r in await conn.fetch(
            "SELECT instance_id FROM instances WHERE instance_id = ANY($1::text[]) AND state <> 'stopped'", pending
        )
    }
    pending = [i for i in pending if i in alive]
    current = pending.pop(0) if pending else None
    await conn.execute(
        "UPDATE models SET rollout_pending = $2, rollout_current = $3 WHERE id = $1", model_id, pending, current
    )
    if current is not None:
        await emit(
            conn,
            RestartInstance(
                id=events.new_id(),
                instance_id=current,
                reason="the model API's settings changed",
                request_timeout=row["request_timeout"],
            ),
        )


# Chosen when a model API is created and fixed after: GPUs and placement are sized for them.
FIXED_FIELDS = ("gpu_type", "gpu_count", "instances", "quota", "disk_size", "volumes")


async def _refuse_fixed_fields(request: web.Request) -> None:
    try:
        body = msgspec.json.decode(await request.read())
    except msgspec.DecodeError:
        return  # read_body answers the 400
    fixed = [name for name in FIXED_FIELDS if isinstance(body, dict) and name in body]
    if fixed:
        raise Conflict(
            f"{', '.join(fixed)} cannot change once a model API is created: create a new model API instead",
            [(name, "cannot change after create") for name in fixed],
        )


class SettingsRoutes:
    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx

    def routes(self) -> list[web.RouteDef]:
        return [
            web.patch("/v1/models/{ref}", self.change),
            web.get("/v1/models/{ref}/settings", self.show),
        ]

    async def change(self, request: web.Request) -> web.Response:
        await _refuse_fixed_fields(request)
        changes = await read_body(request, ModelSettings)
        lifecycle = self.ctx.lifecycle
        async with self.ctx.pool.acquire() as conn:
            async with conn.transaction():
                model_id = await apply(conn, request.match_info["ref"], changes, lifecycle.emit)
            await routing.publish(self.ctx.bus, conn, model_id)
        return await self.show(request)

    async def show(self, request: web.Request) -> web.Response:
        async with self.ctx.pool.acquire() as conn:
            model = await store.resolve(conn, request.match_info["ref"])
        restarting = [model["rollout_current"], *model["rollout_pending"]] if model["rollout_current"] else []
        return json_response(
            SettingsOut(
                request_timeout=model["request_timeout"],
                visibility=model["visibility"],
                health=msgspec.structs.asdict(stored_policy(model)),
                restarting=restarting,
            )
        )


def routes(ctx: Context) -> list[web.RouteDef]:
    return SettingsRoutes(ctx).routes()
