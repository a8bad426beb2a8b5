"""Organizations: named groups of users. Added as a collaborator (`org:NAME`), an organization gives
its role to every member; a change of members changes at once who may manage and call."""

from __future__ import annotations

import asyncpg
import msgspec
import structlog
from aiohttp import web

from services.api import routing
from services.api.errors import Conflict, NotFound
from services.api.http import Context, json_response, read_body
from services.api.schemas import Name

log = structlog.get_logger("api.orgs")


class CreateOrg(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    name: Name


class OrgOut(msgspec.Struct, kw_only=True):
    name: str
    members: list[str]
    created: str


async def _out(conn: asyncpg.Connection, row: asyncpg.Record) -> OrgOut:
    members = await conn.fetch("SELECT user_name FROM org_members WHERE org = $1 ORDER BY user_name", row["name"])
    return OrgOut(name=row["name"], members=[m["user_name"] for m in members], created=row["created_at"].isoformat())


async def _org(conn: asyncpg.Connection, name: str) -> asyncpg.Record:
    row = await conn.fetchrow("SELECT * FROM orgs WHERE name = $1", name)
    if row is None:
        raise NotFound(f"no organization named {name!r}")
    return row


class Orgs:
    def __init__(self, ctx: Context) -> None:
        self.pool = ctx.pool
        self.bus = ctx.bus

    def routes(self) -> list[web.RouteDef]:
        return [
            web.post("/v1/orgs", self.create),
            web.get("/v1/orgs", self.list),
            web.put("/v1/orgs/{org}/members/{user}", self.add),
            web.delete("/v1/orgs/{org}/members/{user}", self.remove),
        ]

    async def create(self, request: web.Request) -> web.Response:
        spec = await read_body(request, CreateOrg)
        async with self.pool.acquire() as conn:
            try:
                row = await conn.fetchrow("INSERT INTO orgs (name) VALUES ($1) RETURNING *", spec.name)
            except asyncpg.UniqueViolationError:
                raise Conflict(f"name: an organization named {spec.name!r} exists", [("name", "is taken")]) from None
            return json_response(await _out(conn, row), status=201)

    async def list(self, _: web.Request) -> web.Response:
        async with self.pool.acquire() as conn:
            return json_response([await _out(conn, r) for r in await conn.fetch("SELECT * FROM orgs ORDER BY name")])

    async def add(self, request: web.Request) -> web.Response:
        """Make a user a member of an organization"""
        org, user = request.match_info["org"], request.match_info["user"]
        async with self.pool.acquire() as conn:
            async with conn.transaction():
                row = await _org(conn, org)
                if await conn.fetchval("SELECT 1 FROM users WHERE name = $1", user) is None:
                    raise NotFound(f"no user named {user!r}")
                await conn.execute(
                    "INSERT INTO org_members (org, user_name) VALUES ($1, $2) ON CONFLICT DO NOTHING", org, user
                )
            await routing.publish_org(self.bus, conn, org)
            log.info("org member added", org=org, user=user)
            return json_response(await _out(conn, row))

    async def remove(self, request: web.Request) -> web.Response:
        org, user = request.match_info["org"], request.match_info["user"]
        async with self.pool.acquire() as conn:
            async with conn.transaction():
                await _org(conn, org)
                gone = await conn.fetchval(
                    "DELETE FROM org_members WHERE org = $1 AND user_name = $2 RETURNING user_name", org, user
                )
                if gone is None:
                    raise NotFound(f"{user!r} is not a member of {org!r}")
            await routing.publish_org(self.bus, conn, org)
        log.info("org member removed", org=org, user=user)
        return web.Response(status=204)


def routes(ctx: Context) -> list[web.RouteDef]:
    return Orgs(ctx).routes()
