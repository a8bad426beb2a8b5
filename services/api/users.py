"""Users and their API keys: the admin creates users (`/v1/users`), each user manages their own
keys (`/v1/me/keys`). A key's secret is shown once, in the answer that creates it; only its SHA-256
is stored, under its public prefix, which is also its id and how the gateway finds it (bucket
`pier_keys`). Disabling a user refuses their keys at once in the api (it checks the database on
every request) and within a second at every gateway (their keys leave the bucket)."""

from __future__ import annotations

from typing import Annotated

import asyncpg
import msgspec
import structlog
from aiohttp import web

from pier import events
from services.api import auth, routing
from services.api.errors import Conflict, NotFound
from services.api.http import Context, json_response, read_body
from services.api.schemas import Name

log = structlog.get_logger("api.users")

Email = Annotated[str, msgspec.Meta(pattern=r"^[^@\s]+@[^@\s]+$", max_length=254, description="an e-mail address")]
KeyName = Annotated[str, msgspec.Meta(min_length=1, max_length=100, description="a label for the key")]


class CreateUser(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    name: Name
    email: Email


class ChangeUser(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    disabled: bool


class CreateKey(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    name: KeyName


class KeyOut(msgspec.Struct, kw_only=True):
    id: str
    name: str
    created: str
    last_used: str | None


class KeyCreated(KeyOut, kw_only=True):
    key: str  # the secret: shown in this answer only


class UserOut(msgspec.Struct, kw_only=True):
    name: str
    email: str
    admin: bool
    disabled: bool
    created: str


class UserCreated(UserOut, kw_only=True):
    key: KeyCreated  # the user's first API key


class Me(UserOut, kw_only=True):
    orgs: list[str]


def _user(row: asyncpg.Record) -> UserOut:
    return UserOut(
        name=row["name"],
        email=row["email"],
        admin=row["is_admin"],
        disabled=row["disabled"],
        created=row["created_at"].isoformat(),
    )


def _key(row: asyncpg.Record) -> KeyOut:
    return KeyOut(
        id=row["id"],
        name=row["name"],
        created=row["created_at"].isoformat(),
        last_used=row["last_used"].isoformat() if row["last_used"] else None,
    )


async def add_key(conn: asyncpg.Connection, user: str, name: str) -> KeyCreated:
    """A new API key of `user`, in the caller's transaction; its secret is in the answer only."""
    secret, prefix = events.new_token()
    row = await conn.fetchrow(
        "INSERT INTO api_tokens (id, user_name, name, hash, prefix) VALUES ($1, $2, $3, $4, $1) RETURNING *",
        prefix,
        user,
        name,
        auth.token_hash(secret),
    )
    return KeyCreated(**msgspec.structs.asdict(_key(row)), key=secret)


class Users:
    def __init__(self, ctx: Context) -> None:
        self.pool = ctx.pool
        self.bus = ctx.bus

    def routes(self) -> list[web.RouteDef]:
        return [
            web.post("/v1/users", self.create),
            web.get("/v1/users", self.list),
            web.patch("/v1/users/{name}", self.change),
            web.get("/v1/me", self.me),
            web.get("/v1/me/keys", self.keys),
            web.post("/v1/me/keys", self.create_key),
            web.delete("/v1/me/keys/{id}", self.delete_key),
        ]

    async def create(self, request: web.Request) -> web.Response:
        """Create a user; the answer holds their first API key, shown once"""
        spec = await read_body(request, CreateUser)
        async with self.pool.acquire() as conn:
            async with conn.transaction():
                try:
                    row = await conn.fetchrow(
                        "INSERT INTO users (name, email) VALUES ($1, $2) RETURNING *", spec.name, spec.email
                    )
                except asyncpg.UniqueViolationError:
                    raise Conflict(f"name: a user named {spec.name!r} exists", [("name", "is taken")]) from None
                key = await add_key(conn, spec.name, "first key")
            await routing.publish_key(self.bus, conn, key.id)
        log.info("user created", user=spec.name, key_id=key.id)
        return json_response(UserCreated(**msgspec.structs.asdict(_user(row)), key=key), status=201)

    async def list(self, _: web.Request) -> web.Response:
        rows = await self.pool.fetch("SELECT * FROM users ORDER BY name")
        return json_response([_user(r) for r in rows])

    async def change(self, request: web.Request) -> web.Response:
        """Disable or enable a user: a disabled user's keys are refused at once"""
        spec = await read_body(request, ChangeUser)
        name = request.match_info["name"]
        async with self.pool.acquire() as conn:
            async with conn.transaction():
                row = await conn.fetchrow("SELECT * FROM users WHERE name = $1 FOR UPDATE", name)
                if row is None:
                    raise NotFound(f"no user named {name!r}")
                if row["is_admin"] and spec.disabled:
                    raise Conflict(f"{name!r} is an admin and cannot be disabled", [("disabled", "not for an admin")])
                row = await conn.fetchrow(
                    "UPDATE users SET disabled = $2 WHERE name = $1 RETURNING *", name, spec.disabled
                )
            # Their keys leave (or return to) the gateways' bucket, and so do the calls they may make.
            await routing.publish_user(self.bus, conn, name)
        log.info("user disabled" if spec.disabled else "user enabled", user=name)
        return json_response(_user(row))

    async def me(self, request: web.Request) -> web.Response:
        """Who the caller is"""
        user = request[auth.USER]
        async with self.pool.acquire() as conn:
            row = await conn.fetchrow("SELECT * FROM users WHERE name = $1", user)
            orgs = await conn.fetch("SELECT org FROM org_members WHERE user_name = $1 ORDER BY org", user)
        return json_response(Me(**msgspec.structs.asdict(_user(row)), orgs=[r["org"] for r in orgs]))

    async def keys(self, request: web.Request) -> web.Response:
        """The caller's API keys (never their secrets)"""
        rows = await self.pool.fetch(
            "SELECT * FROM api_tokens WHERE user_name = $1 ORDER BY created_at", request[auth.USER]
        )
        return json_response([_key(r) for r in rows])

    async def create_key(self, request: web.Request) -> web.Response:
        """A new API key of the caller; the secret is shown once"""
        spec = await read_body(request, CreateKey)
        async with self.pool.acquire() as conn:
            async with conn.transaction():
                key = await add_key(conn, request[auth.USER], spec.name)
            await routing.publish_key(self.bus, conn, key.id)
        log.info("api key created", user=request[auth.USER], key_id=key.id)
        return json_response(key, status=201)

    async def delete_key(self, request: web.Request) -> web.Response:
        """Delete one of the caller's API keys: it is refused at once"""
        key_id, user = request.match_info["id"], request[auth.USER]
        async with self.pool.acquire() as conn:
            row = await conn.fetchrow("SELECT * FROM api_tokens WHERE id = $1 AND user_name = $2", key_id, user)
            if row is None:
                raise NotFound(f"you have no API key {key_id!r}")
            if row["prefix"] is None and row["user_name"] == "admin" and row["name"] == "admin":
                raise Conflict("the admin token comes from the settings: restart with a new one to rotate it")
            await conn.execute("DELETE FROM api_tokens WHERE id = $1", key_id)
            await routing.publish_key(self.bus, conn, key_id)
        log.info("api key deleted", user=user, key_id=key_id)
        return web.Response(status=204)


def routes(ctx: Context) -> list[web.RouteDef]:
    return Users(ctx).routes()
