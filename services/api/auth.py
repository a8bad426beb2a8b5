"""Management API tokens: only SHA-256 hashes are stored; the admin token comes from settings."""

from __future__ import annotations

import hashlib
from collections.abc import Awaitable, Callable

import asyncpg
from aiohttp import web

from pier import events, passwords
from pier.config import Settings
from services.api.errors import Forbidden, Unauthorized

USER = web.RequestKey("user", str)
ADMIN = web.RequestKey("admin", bool)
PUBLIC_PATHS = frozenset({"/v1/health", "/v1/openapi.json"})
# The live feeds (with follow=true: server-sent events, services/api/sse.py).
LIVE_ROUTES = frozenset({"/v1/models/{ref}/logs", "/v1/events"})


def token_hash(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def admin_token(settings: Settings) -> str:
    """The admin token from PIER_ADMIN_TOKEN_FILE when set (as `make up` does, so that it is in no
    process's environment), else PIER_ADMIN_TOKEN (as docker-compose and Kubernetes secrets set it)."""
    if not settings.admin_token_file:
        return settings.admin_token
    token = passwords.read(settings.admin_token_file)
    if not token:
        raise SystemExit(f"PIER_ADMIN_TOKEN_FILE: {settings.admin_token_file} is empty")
    return token


async def ensure_admin(pool: asyncpg.Pool, secret: str) -> None:
    """Make `secret` the admin token (idempotent: the same token on every start). A new one
    replaces the old, which stops working: rotating the admin token is restarting with a new one."""
    if not secret:
        return
    async with pool.acquire() as conn, conn.transaction():
        await conn.execute("INSERT INTO users (name, is_admin) VALUES ('admin', true) ON CONFLICT DO NOTHING")
        await conn.execute(
            "DELETE FROM api_tokens WHERE user_name = 'admin' AND name = 'admin' AND hash <> $1", token_hash(secret)
        )
        await conn.execute(
            "INSERT INTO api_tokens (id, user_name, name, hash) VALUES ($1, 'admin', 'admin', $2)"
            " ON CONFLICT (hash) DO NOTHING",
            events.new_id(),
            token_hash(secret),
        )


def require_admin(request: web.Request, what: str) -> None:
    """Forbidden unless the caller holds an admin token; `what` says what only an admin may do.
    (Until roles exist, this is the one check beyond holding a valid token.)"""
    if not request.get(ADMIN, False):
        raise Forbidden(f"only an admin {what}; this API token is not an admin's")


def _bearer(request: web.Request) -> str | None:
    header = request.headers.get("Authorization", "")
    scheme, _, value = header.partition(" ")
    if scheme.lower() == "bearer" and value.strip():
        return value.strip()
    # A browser's EventSource cannot send headers, so the live feeds alone take `?token=`:
    # anywhere else a token in the URL would only end up in proxies' and browsers' histories.
    if _is_live_feed(request):
        return request.query.get("token")
    return None


def _is_live_feed(request: web.Request) -> bool:
    resource = request.match_info.route.resource
    return (
        request.method == "GET"
        and resource is not None
        and resource.canonical in LIVE_ROUTES
        and request.query.get("follow", "").lower() in ("true", "1")
    )


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
        found = await pool.fetchrow(
            "UPDATE api_tokens t SET last_used = now() FROM users u WHERE t.hash = $1 AND u.name = t.user_name"
            " RETURNING t.user_name, u.is_admin",
            token_hash(secret),
        )
        if found is None:
            raise Unauthorized("the API token is not valid")
        request[USER] = found["user_name"]
        request[ADMIN] = found["is_admin"]
        return await handler(request)

    return authenticate
