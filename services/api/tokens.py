"""Access tokens of model APIs: create (the secret is shown once), list, revoke.

Only the SHA-256 of a token is stored, under its public prefix (the token's id); the gateway
learns hashes and revocations from the `pier_tokens` bucket, so a revocation reaches every
gateway as fast as the KV watch (well under a second). The gateway reports which tokens were
used on a core NATS subject, and `last_used` is recorded from those reports.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import Annotated

import msgspec
import structlog
from aiohttp import web
from nats.aio.msg import Msg

from pier import events
from services.api import auth, routing, store
from services.api.errors import NotFound
from services.api.http import Context, json_response, read_body

log = structlog.get_logger("api.tokens")

TokenName = Annotated[str, msgspec.Meta(min_length=1, max_length=100, description="a label for the token")]


class CreateToken(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    name: TokenName


class TokenOut(msgspec.Struct, kw_only=True):
    id: str
    name: str
    creator: str
    created: str
    last_used: str | None
    revoked: bool


class TokenCreated(TokenOut, kw_only=True):
    token: str  # the secret: shown in this answer only


def _out(row: object) -> TokenOut:
    r: dict = dict(row)  # type: ignore[call-overload]
    return TokenOut(
        id=r["id"],
        name=r["name"],
        creator=r["created_by"],
        created=r["created_at"].isoformat(),
        last_used=r["last_used"].isoformat() if r["last_used"] else None,
        revoked=r["revoked_at"] is not None,
    )


class Tokens:
    def __init__(self, ctx: Context) -> None:
        self.pool = ctx.pool
        self.bus = ctx.bus

    def routes(self) -> list[web.RouteDef]:
        return [
            web.get("/v1/models/{ref}/tokens", self.list),
            web.post("/v1/models/{ref}/tokens", self.create),
            web.delete("/v1/models/{ref}/tokens/{token_id}", self.revoke),
        ]

    async def list(self, request: web.Request) -> web.Response:
        async with self.pool.acquire() as conn:
            model = await store.resolve(conn, request.match_info["ref"])
            rows = await conn.fetch(
                "SELECT * FROM model_tokens WHERE model_id = $1 AND revoked_at IS NULL ORDER BY created_at",
                model["id"],
            )
        return json_response([_out(r) for r in rows])

    async def create(self, request: web.Request) -> web.Response:
        spec = await read_body(request, CreateToken)
        secret, prefix = events.new_token()
        async with self.pool.acquire() as conn:
            async with conn.transaction():
                model = await store.resolve(conn, request.match_info["ref"])
                row = await conn.fetchrow(
                    "INSERT INTO model_tokens (id, model_id, name, hash, created_by) VALUES ($1, $2, $3, $4, $5)"
                    " RETURNING *",
                    prefix,
                    model["id"],
                    spec.name,
                    events.token_hash(secret),
                    request[auth.USER],
                )
            # After the commit: a crash in between is repaired by `publish_all` at the next start.
            await routing.publish_token(self.bus, conn, prefix)
        log.info("token created", model_id=model["id"], token_id=prefix)
        out = _out(row)
        return json_response(TokenCreated(**msgspec.structs.asdict(out), token=secret), status=201)

    async def revoke(self, request: web.Request) -> web.Response:
        token_id = request.match_info["token_id"]
        async with self.pool.acquire() as conn:
            async with conn.transaction():
                model = await store.resolve(conn, request.match_info["ref"])
                found = await conn.fetchval(
                    "UPDATE model_tokens SET revoked_at = coalesce(revoked_at, now())"
                    " WHERE id = $1 AND model_id = $2 RETURNING id",
                    token_id,
                    model["id"],
                )
                if found is None:
                    raise NotFound(f"model API {model['name']!r} has no token {token_id!r}")
            await routing.publish_token(self.bus, conn, token_id)
        log.info("token revoked", model_id=model["id"], token_id=token_id)
        return web.Response(status=204)


def track_last_used(ctx: Context) -> Callable[[web.Application], AsyncIterator[None]]:
    """A cleanup context recording `last_used` from the gateways' reports while the app runs."""

    async def record(msg: Msg) -> None:
        try:
            prefixes = msgspec.json.decode(msg.data, type=list[str])
        except msgspec.DecodeError:
            return
        await ctx.pool.execute(
            "UPDATE model_tokens SET last_used = now() WHERE id = ANY($1::text[]) AND revoked_at IS NULL", prefixes
        )

    async def context(_: web.Application) -> AsyncIterator[None]:
        # A queue group: with several api replicas, each report is recorded once.
        sub = await ctx.bus.nc.subscribe(events.TOKENS_USED_SUBJECT, queue="api", cb=record)
        try:
            yield
        finally:
            await sub.unsubscribe()

    return context


def routes(ctx: Context) -> list[web.RouteDef]:
    return Tokens(ctx).routes()
