"""Publishing what the gateway must know about a model API to the `pier_routes` bucket.

The record is derived from PostgreSQL every time, so publishing is idempotent and a crash between
a commit and a publish is repaired by the next publish (and by `publish_all` at start)."""

from __future__ import annotations

import contextlib

import asyncpg
import msgspec
import nats.js.errors

from pier import events
from pier.bus import Bus
from pier.events import HealthPolicy, KeyRecord, RouteRecord, TokenRecord, VersionRoute
from pier.spec import Entrypoint
from services.api import access


async def publish(bus: Bus, conn: asyncpg.Connection, model_id: str) -> None:
    kv = await bus.kv(events.ROUTES_BUCKET)
    row = await conn.fetchrow("SELECT * FROM models WHERE id = $1", model_id)
    if row is None or row["state"] == "terminated":
        with contextlib.suppress(nats.js.errors.NotFoundError):
            await kv.delete(model_id)
        return
    labels: dict[str, int] = {}
    if row["routing_mode"] == "advanced":
        labels = {
            r["label"]: r["version"] for r in await conn.fetch("SELECT * FROM labels WHERE model_id = $1", model_id)
        }
    serving = ({row["latest"]} | set(labels.values())) - {None}
    versions = await conn.fetch(
        "SELECT number, id, entrypoint FROM versions WHERE model_id = $1 AND number = ANY($2::int[])",
        model_id,
        list(serving),
    )
    record = RouteRecord(
        model_id=model_id,
        name=row["name"],
        access=row["access"],
        latest=row["latest"],
        labels=labels,
        routing_mode=row["routing_mode"],
        callers=frozenset(await access.callers(conn, model_id)),
        request_timeout=row["request_timeout"],
        # Every monitor replica reads the health-check policy here.
        health=msgspec.json.decode(row["health"] or "{}", type=HealthPolicy),
        versions={
            str(v["number"]): VersionRoute(
                number=v["number"], id=v["id"], entrypoint=msgspec.json.decode(v["entrypoint"], type=Entrypoint)
            )
            for v in versions
        },
    )
    await kv.put(model_id, events.encode(record))


async def publish_token(bus: Bus, conn: asyncpg.Connection, token_id: str) -> None:
    """Publish an access token's hash (or its revocation) to `pier_tokens`, keyed by its public prefix."""
    kv = await bus.kv(events.TOKENS_BUCKET)
    row = await conn.fetchrow("SELECT * FROM model_tokens WHERE id = $1", token_id)
    if row is None:
        with contextlib.suppress(nats.js.errors.NotFoundError):
            await kv.delete(token_id)
        return
    record = TokenRecord(
        prefix=row["id"], model_id=row["model_id"], hash=row["hash"], revoked=row["revoked_at"] is not None
    )
    await kv.put(token_id, events.encode(record))


async def publish_key(bus: Bus, conn: asyncpg.Connection, key_id: str) -> None:
    """Publish a user's API key to `pier_keys` while it exists and its user is enabled; else remove it."""
    kv = await bus.kv(events.KEYS_BUCKET)
    row = await conn.fetchrow(
        "SELECT t.prefix, t.user_name, t.hash FROM api_tokens t JOIN users u ON u.name = t.user_name"
        " WHERE t.id = $1 AND t.prefix IS NOT NULL AND NOT u.disabled",
        key_id,
    )
    if row is None:
        with contextlib.suppress(nats.js.errors.NotFoundError):
            await kv.delete(key_id)
        return
    await kv.put(key_id, events.encode(KeyRecord(prefix=row["prefix"], user=row["user_name"], hash=row["hash"])))


async def publish_user(bus: Bus, conn: asyncpg.Connection, user: str) -> None:
    """After a user is disabled or enabled: their keys, and the callers of every model API they have a role on."""
    for row in await conn.fetch("SELECT id FROM api_tokens WHERE user_name = $1 AND prefix IS NOT NULL", user):
        await publish_key(bus, conn, row["id"])
    for row in await conn.fetch(
        "SELECT id FROM models WHERE owner = $1 OR id IN (SELECT model_id FROM collaborators WHERE principal = $1"
        " OR principal IN (SELECT 'org:' || org FROM org_members WHERE user_name = $1))",
        user,
    ):
        await publish(bus, conn, row["id"])


async def publish_org(bus: Bus, conn: asyncpg.Connection, org: str) -> None:
    """After an organization's members change: the callers of every model API it collaborates on."""
    for row in await conn.fetch("SELECT model_id FROM collaborators WHERE principal = $1", f"org:{org}"):
        await publish(bus, conn, row["model_id"])


async def publish_all(bus: Bus, pool: asyncpg.Pool) -> None:
    async with pool.acquire() as conn:
        for row in await conn.fetch("SELECT id FROM models"):
            await publish(bus, conn, row["id"])
        for row in await conn.fetch("SELECT id FROM model_tokens"):
            await publish_token(bus, conn, row["id"])
        # Keys deleted while the api was down stay in the bucket until here: the set it should hold is
        # exactly what PostgreSQL says.
        kv = await bus.kv(events.KEYS_BUCKET)
        try:
            stale = set(await kv.keys())
        except nats.js.errors.NoKeysError:
            stale = set()
        for row in await conn.fetch("SELECT id FROM api_tokens WHERE prefix IS NOT NULL"):
            stale.discard(row["id"])
            await publish_key(bus, conn, row["id"])
        for key in stale:
            with contextlib.suppress(nats.js.errors.NotFoundError):
                await kv.delete(key)
