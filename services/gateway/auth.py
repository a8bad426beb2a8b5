"""Access tokens at the gateway: who may call a restricted model API.

A token arrives as `Authorization: Bearer <token>` or as HTTP Basic with the token as user name
and/or password (as Domino's clients send it). Its public prefix finds the record the `pier_tokens`
watch keeps in the table (for a collaborator calling with their own API key, the `pier_keys` one);
the SHA-256 of the whole token is compared in constant time. Every failure reads the same to the
caller (no hint whether the token exists, is revoked, or belongs to another model API), and no
token is ever logged.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import hmac

import msgspec
import structlog

from pier.bus import Bus
from pier.events import TOKENS_USED_SUBJECT, RouteRecord, token_hash, token_prefix
from services.gateway.table import Table

log = structlog.get_logger("gateway.auth")

CHALLENGE = 'Bearer realm="pier", Basic realm="pier"'


def _candidates(header: str) -> list[str]:
    scheme, _, value = header.strip().partition(" ")
    value = value.strip()
    scheme = scheme.lower()
    if scheme == "bearer" and value:
        return [value]
    if scheme == "basic" and value:
        try:
            decoded = base64.b64decode(value, validate=True).decode()
        except (binascii.Error, UnicodeDecodeError):
            return []
        user, _, password = decoded.partition(":")
        return [t for t in (user, password) if t]
    return []


class Authenticator:
    def __init__(self, table: Table) -> None:
        self.table = table
        self.used: set[str] = set()

    def check(self, record: RouteRecord, authorization: str | None) -> bool:
        """Whether the Authorization header carries a live token of this model API."""
        if record.access == "unrestricted":
            return True
        if not authorization:
            return False
        for token in _candidates(authorization):
            prefix = token_prefix(token)
            if prefix is None:
                continue
            known = self.table.tokens.get(prefix)
            if known is not None:
                if known.revoked or known.model_id != record.model_id:
                    continue
                if hmac.compare_digest(token_hash(token), known.hash):
                    self.used.add(prefix)
                    return True
                continue
            # A user's own API key, if they have a role on this model API (a disabled user's keys
            # and deleted keys are not in the table).
            key = self.table.keys.get(prefix)
            if key is not None and key.user in record.callers and hmac.compare_digest(token_hash(token), key.hash):
                return True
        return False

    async def report_used(self, bus: Bus, every: float = 1.0) -> None:
        """Tell the api which tokens were used, at most once a second (for `last_used`); best effort."""
        while True:
            await asyncio.sleep(every)
            if not self.used:
                continue
            used, self.used = self.used, set()
            with contextlib.suppress(Exception):
                await bus.nc.publish(TOKENS_USED_SUBJECT, msgspec.json.encode(sorted(used)))
