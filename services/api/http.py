"""What every handler module of the api shares: its context, JSON in and out."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, TypeVar

import asyncpg
import msgspec
from aiohttp import web

from pier.bus import Bus
from pier.config import Settings
from services.api.errors import Invalid

if TYPE_CHECKING:
    # Only a type here: lifecycle imports modules that import this one.
    from services.api.lifecycle import Lifecycle

T = TypeVar("T")


@dataclass(frozen=True)
class Context:
    pool: asyncpg.Pool
    bus: Bus
    lifecycle: Lifecycle
    settings: Settings


def json_response(value: object, status: int = 200) -> web.Response:
    return web.Response(body=msgspec.json.encode(value), status=status, content_type="application/json")


async def read_body(request: web.Request, kind: type[T]) -> T:
    """The request's JSON body as `kind`; a validation error becomes a 400 naming the field."""
    raw = await request.read()
    try:
        return msgspec.json.decode(raw, type=kind)
    except msgspec.ValidationError:
        raise
    except msgspec.DecodeError as exc:
        raise Invalid(f"body: not valid JSON ({exc})", [("body", "is not valid JSON")]) from None
