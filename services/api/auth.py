"""Management API tokens: only SHA-256 hashes are stored; the admin token comes from settings."""

from __future__ import annotations

import hashlib
from collections.abc import Awaitable, Callable

import asyncpg
from aiohttp import web

from pier import events
from services.api.errors import Unauthorized

USER = web.RequestKey("user", str)
PUBLIC_PATHS = frozenset({"/v1/health", "/v1/openapi.json"})


def token_hash(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


async def ensure_admin(pool: asyncpg.Pool, secret: str) -> None:
    """Make `secret` a valid admin token (idempotent: the same token on every start)."""
    if not secret:
        return
    async with pool.acquire() as conn, conn.transaction():
        await conn.execute("INSERT INTO users (name, is_admin) VALUES ('admin', true) ON CONFLICT DO NOTHING")
        await conn.execute(
            "INSERT INTO api_tokens (id, user_name, name, hash) VALUES ($1, 'admin', 'admin', $2)"
            " ON CONFLICT (hash) DO NOTHING",
            events.new_id(),
            token_hash(secret),
        )


def _bearer(request: web.Request) -> str | None:
    header = request.headers.get("Authorization", "")
    scheme, _, value = header.partition(" ")
    if scheme.lower() == "bearer" and value.strip():
        return value.strip()
    return request.query.get("token")  # EventSource in browsers cannot send headers


def middleware(pool: asyncpg.Pool) -> Callable[..., Awaitable[web.StreamResponse]]:
    @web.middleware
    async def authenticate(
        request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        if not request.path.startswith("/v1/") or request.path in PUBLIC_PATHS:
            return await handler(request)
        secret = _bearer(request)
        if not secret:
            raise Unauthorized("an API token is required: send it as 'Authorization: Bearer <token>'")
        user = await pool.fetchval(
            "UPDATE api_tokens SET last_used = now() WHERE hash = $1 RETURNING user_name", token_hash(secret)
        )
        if user is None:
            raise Unauthorized("the API token is not valid")
        request[USER] = user
        return await handler(request)

    return authenticate
