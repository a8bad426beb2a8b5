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
from pier.events import HealthPolicy, RouteRecord, TokenRecord, VersionRoute
from pier.spec import Entrypoint


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


async def publish_all(bus: Bus, pool: asyncpg.Pool) -> None:
    async with pool.acquire() as conn:
        for row in await conn.fetch("SELECT id FROM models"):
            await publish(bus, conn, row["id"])
        for row in await conn.fetch("SELECT id FROM model_tokens"):
            await publish_token(bus, conn, row["id"])
