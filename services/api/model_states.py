"""`GET /v1/models?follow=true`: the model APIs the caller may see, live, as server-sent events.

The stream starts with one `model` event per model API (the list's answer, one by one), then sends
a `model` event whenever one changes (state, reason, versions, labels, instances, place in line) or
appears, and a `removed` event (`{"id"}`) when one is terminated or no longer visible to the caller.
It polls PostgreSQL through services/api/sse.py, so a change folded by any api replica is seen on
every stream. Event ids only order the events of one stream: a client that reconnects gets the
whole list again.
"""

from __future__ import annotations

from collections.abc import Hashable

import asyncpg
import msgspec
from aiohttp import web

from services.api import access, auth, sse, store
from services.api.schemas import ModelOut

Item = tuple[str, bytes]  # (event kind, JSON data)


async def _fingerprints(conn: asyncpg.Connection, user: str, admin: bool) -> dict[str, tuple[Hashable, ...]]:
    """Per visible model API, what changes when anything the list shows does (cheap: two queries)."""
    rows = await access.visible_models(conn, user, admin)
    counts = {
        r["model_id"]: (r["n"], r["ready"], r["versions"], r["labels"])
        for r in await conn.fetch(
            "SELECT m.id AS model_id,"
            " (SELECT count(*) FROM instances i WHERE i.model_id = m.id AND i.state <> 'stopped') AS n,"
            " (SELECT count(*) FROM instances i WHERE i.model_id = m.id AND i.state = 'ready') AS ready,"
            " (SELECT string_agg(v.number || v.state, ',') FROM versions v WHERE v.model_id = m.id) AS versions,"
            " (SELECT string_agg(l.label || l.version, ',') FROM labels l WHERE l.model_id = m.id) AS labels"
            " FROM models m WHERE m.id = ANY($1::text[])",
            [r["id"] for r in rows],
        )
    }
    return {
        r["id"]: (
            r["state"],
            r["reason"],
            r["latest"],
            r["target"],
            r["queue_position"],
            r["visibility"],
            r["updated_at"],
            counts.get(r["id"]),
        )
        for r in rows
    }


async def follow(request: web.Request, pool: asyncpg.Pool, gateway_url: str) -> web.StreamResponse:
    user, admin = request[auth.USER], request[auth.ADMIN]
    seen: dict[str, tuple[Hashable, ...]] = {}
    counter = 0

    async def changes(_: int) -> list[Item]:
        async with pool.acquire() as conn:
            now = await _fingerprints(conn, user, admin)
            items: list[Item] = [("removed", msgspec.json.encode({"id": gone})) for gone in seen.keys() - now.keys()]
            for model_id, mark in now.items():
                if seen.get(model_id) != mark:
                    row = await conn.fetchrow("SELECT * FROM models WHERE id = $1", model_id)
                    if row is not None:
                        out: ModelOut = await store.model_out(conn, row, gateway_url)
                        items.append(("model", msgspec.json.encode(out)))
        seen.clear()
        seen.update(now)
        return items

    def encode(item: Item) -> tuple[int, bytes]:
        nonlocal counter
        counter += 1
        return counter, sse.frame(counter, item[0], item[1])

    return await sse.serve(request, await changes(0), 0, changes, encode)
