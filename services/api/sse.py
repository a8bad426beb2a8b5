"""Server-sent events, as every live feed of the api serves them (logs, the audit feed).

A feed is a table read by a cursor: the stream writes what is past the cursor, polls for more
(cheap with an index, and it works across api replicas: a row written by any is seen by all),
sends a comment as a heartbeat when idle so proxies keep the connection, and ends at shutdown.
Each event's `id:` is its cursor, so a client that reconnects with `Last-Event-ID` (or
`?last_event_id=`, for an EventSource that cannot set headers) resumes just after it.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable, Iterable
from typing import TypeVar

from aiohttp import web

from services.api.errors import Invalid

T = TypeVar("T")
POLL = 0.2
KEEP_ALIVE = 15.0
# Set at shutdown, so followers end and the api stops without waiting on open streams.
CLOSING = web.AppKey("sse.closing", asyncio.Event)


def install(app: web.Application) -> None:
    app[CLOSING] = asyncio.Event()

    async def on_shutdown(app: web.Application) -> None:
        app[CLOSING].set()

    app.on_shutdown.append(on_shutdown)


def resume_after(request: web.Request) -> int | None:
    """The cursor a reconnecting client sends back: the `Last-Event-ID` header, else `?last_event_id=`."""
    raw = request.headers.get("Last-Event-ID") or request.query.get("last_event_id")
    if raw is None or raw == "":
        return None
    if not raw.isdigit():
        raise Invalid("last_event_id: must be an event id (an integer)", [("last_event_id", "is not an integer")])
    return int(raw)


def frame(event_id: int, kind: str, data: bytes) -> bytes:
    return b"id: %d\nevent: %s\ndata: %s\n\n" % (event_id, kind.encode(), data)


async def serve(
    request: web.Request,
    backlog: Iterable[T],
    after: int,
    newer: Callable[[int], Awaitable[list[T]]],
    encode: Callable[[T], tuple[int, bytes]],
) -> web.StreamResponse:
    """Send `backlog`, then whatever `newer(cursor)` finds past the last id sent (`encode` gives an
    item's id and its frame), until the client goes or the api stops."""
    response = web.StreamResponse(
        headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
    )
    await response.prepare(request)
    await response.write(b": following\n\n")
    last_write = time.monotonic()
    closing = request.app.get(CLOSING) or asyncio.Event()
    try:
        for item in backlog:
            after, data = encode(item)
            await response.write(data)
        while not closing.is_set():
            items = await newer(after)
            for item in items:
                after, data = encode(item)
                await response.write(data)
            if items:
                last_write = time.monotonic()
                continue
            if time.monotonic() - last_write > KEEP_ALIVE:
                await response.write(b": keep-alive\n\n")
                last_write = time.monotonic()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(POLL):
                    await closing.wait()
    except (ConnectionResetError, ConnectionError):
        pass  # the follower went away
    return response
