"""Sharing a model API: collaborators (a user, or `org:NAME` for every member of an organization)
with the viewer or editor role, and handing the model API to a new owner. Who may do this is the
policy table's business (owner or admin); this module only changes the sharing."""

from __future__ import annotations

from typing import Literal

import asyncpg
import msgspec
import structlog
from aiohttp import web

from services.api import auth, routing, store
from services.api.access import ORG_PREFIX
from services.api.errors import Conflict, Invalid, NotFound
from services.api.http import Context, json_response, read_body

log = structlog.get_logger("api.collaborators")


class Share(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    role: Literal["viewer", "editor"]


class Transfer(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    owner: str


class CollaboratorOut(msgspec.Struct, kw_only=True):
    principal: str
    role: str
    added_by: str
    added: str


def _out(row: asyncpg.Record) -> CollaboratorOut:
    return CollaboratorOut(
        principal=row["principal"], role=row["role"], added_by=row["added_by"], added=row["added_at"].isoformat()
    )


async def _check_principal(conn: asyncpg.Connection, principal: str, owner: str) -> None:
    if principal.startswith(ORG_PREFIX):
        org = principal[len(ORG_PREFIX) :]
        if await conn.fetchval("SELECT 1 FROM orgs WHERE name = $1", org) is None:
            raise Invalid(f"principal: no organization named {org!r}", [("principal", "is no organization")])
        return
    if await conn.fetchval("SELECT 1 FROM users WHERE name = $1", principal) is None:
        raise Invalid(f"principal: no user named {principal!r}", [("principal", "is no user")])
    if principal == owner:
        raise Conflict(f"principal: {principal!r} owns this model API already", [("principal", "is the owner")])


class Collaborators:
    def __init__(self, ctx: Context) -> None:
        self.pool = ctx.pool
        self.bus = ctx.bus
        self.gateway_url = ctx.settings.gateway_url

    def routes(self) -> list[web.RouteDef]:
        base = "/v1/models/{ref}"
        return [
            web.get(base + "/collaborators", self.list),
            web.put(base + "/collaborators/{principal}", self.share),
            web.delete(base + "/collaborators/{principal}", self.unshare),
            web.post(base + "/transfer", self.transfer),
        ]

    async def list(self, request: web.Request) -> web.Response:
        async with self.pool.acquire() as conn:
            model = await store.resolve(conn, request.match_info["ref"])
            rows = await conn.fetch("SELECT * FROM collaborators WHERE model_id = $1 ORDER BY principal", model["id"])
        return json_response([_out(r) for r in rows])

    async def share(self, request: web.Request) -> web.Response:
        """Give a user or an organization (org:NAME) the viewer or editor role"""
        spec = await read_body(request, Share)
        principal = request.match_info["principal"]
        async with self.pool.acquire() as conn:
            async with conn.transaction():
                model = await store.resolve(conn, request.match_info["ref"], lock=True)
                await _check_principal(conn, principal, model["owner"])
                row = await conn.fetchrow(
                    "INSERT INTO collaborators (model_id, principal, role, added_by) VALUES ($1, $2, $3, $4)"
                    " ON CONFLICT (model_id, principal) DO UPDATE SET role = $3 RETURNING *",
                    model["id"],
                    principal,
                    spec.role,
                    request[auth.USER],
                )
            await routing.publish(self.bus, conn, model["id"])
        log.info("collaborator set", model_id=model["id"], principal=principal, role=spec.role)
        return json_response(_out(row))

    async def unshare(self, request: web.Request) -> web.Response:
        principal = request.match_info["principal"]
        async with self.pool.acquire() as conn:
            async with conn.transaction():
                model = await store.resolve(conn, request.match_info["ref"], lock=True)
                gone = await conn.fetchval(
                    "DELETE FROM collaborators WHERE model_id = $1 AND principal = $2 RETURNING principal",
                    model["id"],
                    principal,
                )
                if gone is None:
                    raise NotFound(f"{principal!r} is no collaborator of model API {model['name']!r}")
            await routing.publish(self.bus, conn, model["id"])
        log.info("collaborator removed", model_id=model["id"], principal=principal)
        return web.Response(status=204)

    async def transfer(self, request: web.Request) -> web.Response:
        """Hand the model API to a new owner (the old one keeps no role unless shared with)"""
        spec = await read_body(request, Transfer)
        async with self.pool.acquire() as conn:
            async with conn.transaction():
                model = await store.resolve(conn, request.match_info["ref"], lock=True)
                found = await conn.fetchrow("SELECT disabled FROM users WHERE name = $1", spec.owner)
                if found is None or found["disabled"]:
                    raise Invalid(f"owner: no enabled user named {spec.owner!r}", [("owner", "is no enabled user")])
                await conn.execute(
                    "UPDATE models SET owner = $2, updated_at = now() WHERE id = $1", model["id"], spec.owner
                )
                # A model API has exactly one owner: the new one needs no collaborator role besides.
                await conn.execute(
                    "DELETE FROM collaborators WHERE model_id = $1 AND principal = $2", model["id"], spec.owner
                )
            await routing.publish(self.bus, conn, model["id"])
            row = await store.resolve(conn, model["id"])
            out = await store.model_out(conn, row, self.gateway_url)
        log.info("model API transferred", model_id=model["id"], owner=spec.owner)
        return json_response(out)


def routes(ctx: Context) -> list[web.RouteDef]:
    return Collaborators(ctx).routes()
