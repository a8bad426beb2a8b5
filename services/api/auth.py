"""Who calls the management API, and whether they may: API keys (only SHA-256 hashes are stored;
the admin token comes from settings) checked against the policy table."""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Awaitable, Callable

import asyncpg
import msgspec
from aiohttp import web

from pier import events, passwords
from pier.config import Settings
from services.api import access, policy, store
from services.api.errors import Forbidden, Unauthorized
from services.api.policy import Role

USER = web.RequestKey("user", str)
ADMIN = web.RequestKey("admin", bool)
# The live feeds (with follow=true: server-sent events, services/api/sse.py).
LIVE_ROUTES = frozenset({"/v1/models/{ref}/logs", "/v1/events"})
# The session (the hash of its cookie) when the caller signed in with a password, not an API key.
SESSION = web.RequestKey("session", str)
# The caller's role on the model API a request names (set where the policy is checked).
ROLE = web.RequestKey("role", Role)
SESSION_COOKIE = "pier_session"
CSRF_HEADER = "X-CSRF-Token"
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})


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
    """The one place access is decided: who the caller is (their API key, or their session cookie,
    checked against the database on every request, so a disabled user or a deleted key is refused at
    once), then whether the policy table lets them call this route on this model API."""

    @web.middleware
    async def guard(
        request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        resource = request.match_info.route.resource
        path = resource.canonical if resource is not None else request.path
        found = policy.rule(request.method, path)
        if found is None:  # no such route: aiohttp answers 404 or 405, to signed-in callers only
            if request.path.startswith("/v1/"):
                await _authenticate(pool, request)
            return await handler(request)
        if found.role is Role.PUBLIC:
            return await handler(request)
        await _authenticate(pool, request)
        needed = found.needed(await _body(request) if found.owner_fields else None)
        if found.model_query:
            ref = request.query.get(found.model_query)
            if ref:
                await _authorize_on_model(pool, request, path, needed, ref)
            elif not request[ADMIN]:
                raise Forbidden(
                    f"only an admin may call {request.method} {path} for every model API;"
                    f" ask for one with ?{found.model_query}=NAME"
                )
        elif policy.names_model(path):
            await _authorize_on_model(pool, request, path, needed, request.match_info["ref"])
        elif needed > Role.USER and not request[ADMIN]:
            raise Forbidden(f"only an admin may call {request.method} {path}")
        return await handler(request)

    return guard


async def _authenticate(pool: asyncpg.Pool, request: web.Request) -> None:
    secret = _bearer(request)
    if not secret and SESSION_COOKIE in request.cookies:
        return await _authenticate_session(pool, request)
    if not secret:
        raise Unauthorized("an API key is required: send it as 'Authorization: Bearer <key>'")
    found = await pool.fetchrow(
        "UPDATE api_tokens t SET last_used = now() FROM users u WHERE t.hash = $1 AND u.name = t.user_name"
        " RETURNING t.user_name, u.is_admin, u.disabled",
        token_hash(secret),
    )
    if found is None:
        raise Unauthorized("the API key is not valid")
    _signed_in(request, found)


async def _authenticate_session(pool: asyncpg.Pool, request: web.Request) -> None:
    session = token_hash(request.cookies[SESSION_COOKIE])
    found = await pool.fetchrow(
        "SELECT s.user_name, s.csrf_hash, u.is_admin, u.disabled FROM sessions s JOIN users u ON u.name = s.user_name"
        " WHERE s.id = $1 AND s.expires_at > now()",
        session,
    )
    if found is None:
        raise Unauthorized("the session has ended: sign in again (POST /v1/session)")
    # A cookie is sent by the browser whoever made the page: a change needs the token only Pier's own
    # pages have (the answer of POST /v1/session).
    if request.method not in SAFE_METHODS and not hmac.compare_digest(
        token_hash(request.headers.get(CSRF_HEADER, "")), found["csrf_hash"]
    ):
        raise Forbidden(f"a change signed in by cookie needs the {CSRF_HEADER} header of POST /v1/session's answer")
    _signed_in(request, found)
    request[SESSION] = session


def _signed_in(request: web.Request, found: asyncpg.Record) -> None:
    if found["disabled"]:
        raise Unauthorized(f"user {found['user_name']!r} is disabled; an admin can enable them again")
    request[USER] = found["user_name"]
    request[ADMIN] = found["is_admin"]


async def _authorize_on_model(pool: asyncpg.Pool, request: web.Request, path: str, needed: Role, ref: str) -> None:
    async with pool.acquire() as conn:
        # The same NotFound for a private model API the caller has no role on as for a name never used.
        model = await store.resolve(conn, ref)
        role = await access.role_on(conn, model, request[USER], request[ADMIN])
    if role is None:
        raise store.not_found(ref)
    request[ROLE] = role
    if role < needed:
        raise Forbidden(
            f"{request.method} {path} on model API {model['name']!r}"
            f" needs the {needed.label} role; yours is {role.label}"
        )


async def _body(request: web.Request) -> object:
    """The JSON body, read once here and again (from aiohttp's cache) by the handler; None if not JSON."""
    try:
        return msgspec.json.decode(await request.read())
    except msgspec.DecodeError:
        return None
