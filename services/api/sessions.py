"""Passwords and dashboard sessions.

A user sets their password (`PUT /v1/me/password`); only its argon2id hash is kept (argon2-cffi).
`POST /v1/session {"name", "password"}` signs in: it sets the `pier_session` cookie (HttpOnly,
SameSite=Lax, Secure when the request came over TLS) and answers the CSRF token, which every
state-changing request authenticated by that cookie must send back as the `X-CSRF-Token` header
(checked in services/api/auth.py). Only SHA-256s of the cookie and of the CSRF token are stored.
Failed sign-ins are limited per name and per client address, and logged without the password.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import secrets
import time
from collections import defaultdict, deque
from typing import Annotated

import argon2
import msgspec
import structlog
from aiohttp import web

from services.api import auth
from services.api.errors import TooManyRequests, Unauthorized
from services.api.http import Context, json_response, read_body

log = structlog.get_logger("api.sessions")

Password = Annotated[str, msgspec.Meta(min_length=8, max_length=1024, description="at least 8 characters")]
_hasher = argon2.PasswordHasher()  # argon2id with the library's recommended parameters
# Verified when the name has no password, so a wrong name takes as long as a wrong password.
_DUMMY = _hasher.hash(secrets.token_urlsafe(16))


class SetPassword(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    password: Password


class SignIn(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    name: str
    password: Annotated[str, msgspec.Meta(max_length=1024)]


class SessionOut(msgspec.Struct, kw_only=True):
    user: str
    # Send it back as the X-CSRF-Token header with every request that changes something.
    csrf_token: str
    expires: str


def _verify(stored: str | None, password: str) -> bool:
    try:
        return _hasher.verify(stored or _DUMMY, password) and stored is not None
    except (argon2.exceptions.VerificationError, argon2.exceptions.InvalidHashError):
        return False


class Limiter:
    """At most `failures` failed sign-ins per key (a name, a client address) within `window` seconds."""

    def __init__(self, failures: int, window: float) -> None:
        self.failures, self.window = failures, window
        self._seen: defaultdict[str, deque[float]] = defaultdict(deque)

    def wait(self, keys: list[str]) -> int:
        """Seconds until every key may try again (0: now)."""
        now, longest = time.monotonic(), 0.0
        for key in keys:
            seen = self._seen.get(key)
            while seen and seen[0] <= now - self.window:
                seen.popleft()
            if seen is not None and not seen:
                del self._seen[key]
            elif seen is not None and len(seen) >= self.failures:
                longest = max(longest, seen[0] + self.window - now)
        return int(longest) + 1 if longest else 0

    def failed(self, keys: list[str]) -> None:
        now = time.monotonic()
        for key in keys:
            self._seen[key].append(now)


class Sessions:
    def __init__(self, ctx: Context) -> None:
        self.pool = ctx.pool
        self.settings = ctx.settings
        self.limiter = Limiter(ctx.settings.sign_in_failures, ctx.settings.sign_in_window)

    def routes(self) -> list[web.RouteDef]:
        return [
            web.put("/v1/me/password", self.set_password),
            web.post("/v1/session", self.sign_in),
            web.delete("/v1/session", self.sign_out),
        ]

    async def set_password(self, request: web.Request) -> web.Response:
        """Set the caller's password for the dashboard's sign-in; their other sessions end"""
        spec = await read_body(request, SetPassword)
        hashed = await asyncio.to_thread(_hasher.hash, spec.password)
        user = request[auth.USER]
        async with self.pool.acquire() as conn, conn.transaction():
            await conn.execute("UPDATE users SET password_hash = $2 WHERE name = $1", user, hashed)
            await conn.execute(
                "DELETE FROM sessions WHERE user_name = $1 AND id IS DISTINCT FROM $2", user, request.get(auth.SESSION)
            )
        log.info("password set", user=user)
        return web.Response(status=204)

    async def sign_in(self, request: web.Request) -> web.Response:
        """Sign in with a name and password: sets the session cookie, answers the CSRF token"""
        spec = await read_body(request, SignIn)
        client = request.remote or "unknown"
        keys = [f"name:{spec.name}", f"client:{client}"]
        wait = self.limiter.wait(keys)
        if wait:
            log.warning("sign-in refused: too many failures", user=spec.name, client=client)
            raise TooManyRequests(f"too many failed sign-ins; try again in {wait} s", wait)
        row = await self.pool.fetchrow("SELECT password_hash, disabled FROM users WHERE name = $1", spec.name)
        stored = row["password_hash"] if row is not None and not row["disabled"] else None
        if not await asyncio.to_thread(_verify, stored, spec.password):
            self.limiter.failed(keys)
            log.warning("sign-in failed", user=spec.name, client=client)
            raise Unauthorized("the name or the password is wrong")
        cookie, csrf = secrets.token_urlsafe(32), secrets.token_urlsafe(32)
        expires = dt.datetime.now(dt.UTC) + dt.timedelta(seconds=self.settings.session_max_age)
        async with self.pool.acquire() as conn, conn.transaction():
            await conn.execute("DELETE FROM sessions WHERE expires_at <= now()")  # ended ones go here
            await conn.execute(
                "INSERT INTO sessions (id, user_name, csrf_hash, expires_at) VALUES ($1, $2, $3, $4)",
                auth.token_hash(cookie),
                spec.name,
                auth.token_hash(csrf),
                expires,
            )
        log.info("signed in", user=spec.name, client=client)
        response = json_response(SessionOut(user=spec.name, csrf_token=csrf, expires=expires.isoformat()), 201)
        response.set_cookie(
            auth.SESSION_COOKIE,
            cookie,
            max_age=int(self.settings.session_max_age),
            path="/",
            httponly=True,
            samesite="Lax",
            secure=request.secure,
        )
        return response

    async def sign_out(self, request: web.Request) -> web.Response:
        """End the session of the cookie sent (a caller signed in by API key has none)"""
        session = request.get(auth.SESSION)
        if session is not None:
            await self.pool.execute("DELETE FROM sessions WHERE id = $1", session)
            log.info("signed out", user=request[auth.USER])
        response = web.Response(status=204)
        response.del_cookie(auth.SESSION_COOKIE, path="/")
        return response


def routes(ctx: Context) -> list[web.RouteDef]:
    return Sessions(ctx).routes()
