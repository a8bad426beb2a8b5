"""Text PostgreSQL cannot store: the NUL character (U+0000) is refused in every text and jsonb
value, and a request carrying one in a path parameter, a query field or a JSON body failed deep in
a handler (or in the audit record written before it) as a 500. It is refused here first, as a 400
naming the field, before anything is written."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import msgspec
from aiohttp import web

from services.api.errors import Invalid

_PROBLEM = "must not contain the NUL character (\\u0000)"


def nul_field(value: Any, where: str = "") -> str | None:
    """The path (`routes[0].path`, as validation errors name fields) of the first string in `value`,
    key or value, holding a NUL; None when there is none."""
    if isinstance(value, str):
        return (where or "body") if "\0" in value else None
    if isinstance(value, dict):
        for key, item in value.items():
            path = f"{where}.{key}" if where else str(key)
            if "\0" in path:
                return path.replace("\0", "\\u0000")  # the key itself: named as JSON would write it
            found = nul_field(item, path)
            if found:
                return found
    elif isinstance(value, list):
        for n, item in enumerate(value):
            found = nul_field(item, f"{where}[{n}]")
            if found:
                return found
    return None


async def _body_field(request: web.Request) -> str | None:
    if request.content_type != "application/json" or not request.body_exists:
        return None
    try:
        body = msgspec.json.decode(await request.read())  # kept by aiohttp: the handler reads it again
    except msgspec.DecodeError:
        return None  # the handler answers the 400
    return nul_field(body)


@web.middleware
async def refuse_nul(
    request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    field = nul_field(dict(request.match_info)) or nul_field(dict(request.query)) or await _body_field(request)
    if field is not None:
        raise Invalid(f"{field}: {_PROBLEM}", [(field, _PROBLEM)])
    return await handler(request)
