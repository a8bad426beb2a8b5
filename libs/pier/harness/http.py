"""A lean HTTP/1.1 server on asyncio protocols and httptools, for the hot paths.

The harness serves every call on it, and the gateway its whole surface. Measured in bench/gateway:
aiohttp's server stack (request objects, header multidicts, the router, middleware, the response
writer) was about a fifth of the gateway's time per call; this server parses with httptools (the C
parser uvicorn uses), hands the handler a plain `Request` and writes each answer with one `write`.

What it does: keep-alive and pipelining (pipelined requests are handled concurrently and answered
in order, those ready together in one write),
Content-Length and chunked request bodies, `Expect: 100-continue`, a body limit (413), HEAD,
`Connection: close`, idle connections closed after a keep-alive timeout, graceful close. What it
leaves to the handler: routing, and every answer, including the errors it decides itself (a
malformed request, a body over the limit, a handler that raised), through `Errors`.
"""

from __future__ import annotations

import asyncio
import socket
import time
from collections import deque
from collections.abc import Callable, Coroutine
from email.utils import formatdate
from http import HTTPStatus
from typing import Any, cast
from urllib.parse import unquote

import httptools

# Reason phrases, once.
_REASONS = {s.value: s.phrase for s in HTTPStatus}


class Request:
    """One request, whole: header names are lower-case, `path` is percent-decoded."""

    __slots__ = ("body", "headers", "method", "path", "query")

    def __init__(self, method: str, path: str, query: str, headers: dict[str, str], body: bytes) -> None:
        self.method, self.path, self.query, self.headers, self.body = method, path, query, headers, body


class Response:
    __slots__ = ("body", "content_type", "headers", "status")

    def __init__(
        self,
        status: int = 200,
        body: bytes = b"",
        content_type: str | None = "application/json",
        headers: dict[str, str] | None = None,
    ) -> None:
        self.status, self.body, self.content_type, self.headers = status, body, content_type, headers


Handler = Callable[[Request], Coroutine[Any, Any, Response]]
# The answer to a request the server answers by itself, given the request (None if it could not be
# parsed) and the status: 400 malformed, 413 body over the limit, 500 the handler raised, 503 stopping.
Errors = Callable[[Request | None, int], Response]


class _Date:
    """The Date header, formatted at most once a second."""

    def __init__(self) -> None:
        self.second = 0
        self.value = b""

    def header(self) -> bytes:
        now = int(time.time())
        if now != self.second:
            self.second = now
            self.value = b"Date: " + formatdate(now, usegmt=True).encode() + b"\r\n"
        return self.value


_date = _Date()


def encode(response: Response, keep_alive: bool, head_only: bool = False) -> bytes:
    """The response as bytes, ready for one write."""
    reason = _REASONS.get(response.status, "Unknown")
    parts = [f"HTTP/1.1 {response.status} {reason}\r\nContent-Length: {len(response.body)}\r\n"]
    if response.content_type:
        parts.append(f"Content-Type: {response.content_type}\r\n")
    if response.headers:
        for name, value in response.headers.items():
            parts.append(f"{name}: {value}\r\n")
    if not keep_alive:
        parts.append("Connection: close\r\n")
    head = "".join(parts).encode("latin-1") + _date.header() + b"\r\n"
    return head if head_only else head + response.body


# Requests read ahead on one connection (pipelined) before the server stops reading it.
_PIPELINE = 64


class _Slot:
    """A request in its connection's line: answers go out in the order requests came."""

    __slots__ = ("keep_alive", "request", "response")

    def __init__(self, request: Request, keep_alive: bool) -> None:
        self.request, self.keep_alive = request, keep_alive
        self.response: Response | None = None


class _Connection(asyncio.Protocol):
    """One client connection: requests are handled as they arrive, pipelined ones concurrently, and
    answered in order; answers ready together go out in one write."""

    def __init__(self, server: Server) -> None:
        self.server = server
        self.loop = server.loop
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpRequestParser(self)
        self.slots: deque[_Slot] = deque()
        self.closing = False
        self.last_seen = False  # a request without keep-alive came: nothing after it is served
        self.flushing = False
        self.paused = False
        self.idle_since = time.monotonic()
        self._reset()

    def _reset(self) -> None:
        self.url = b""
        self.headers: dict[str, str] = {}
        self.body: list[bytes] = []
        self.size = 0
        self.refused = 0  # a status the server answers itself (413), once the message is in

    # ---- asyncio callbacks -------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport subclasses, but have the same methods.
        self.transport = cast(asyncio.Transport, transport)
        sock = transport.get_extra_info("socket")
        if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)  # small answers: no Nagle delay
        self.server.connections.add(self)

    def connection_lost(self, exc: Exception | None) -> None:
        # Handlers in progress run to their end (as aiohttp's default): their answers go nowhere.
        self.closing = True
        self.server.connections.discard(self)

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self._fail(400)
        except httptools.HttpParserError:
            self._fail(400)

    # ---- httptools callbacks -----------------------------------------------------------------

    def on_url(self, url: bytes) -> None:
        self.url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers[name.decode("latin-1").lower()] = value.decode("latin-1")

    def on_headers_complete(self) -> None:
        length = self.headers.get("content-length")
        too_large = length is not None and length.isdigit() and int(length) > self.server.max_body
        if self.headers.get("expect", "").lower() == "100-continue" and self.transport is not None:
            if too_large:
                # The client waits before sending the body: refuse now, and it sends nothing.
                self._fail(413)
                return
            self.transport.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        if too_large:
            self.refused = 413

    def on_body(self, data: bytes) -> None:
        if self.refused:
            return
        self.size += len(data)
        if self.size > self.server.max_body:
            self.refused, self.body = 413, []  # read to the end of the message, keep nothing
            return
        self.body.append(data)

    def on_message_complete(self) -> None:
        if self.closing or self.last_seen:
            self._reset()
            return
        keep_alive = self.parser.should_keep_alive()
        self.last_seen = not keep_alive
        method = self.parser.get_method().decode("ascii")
        url = httptools.parse_url(self.url)
        path = unquote(url.path.decode("latin-1")) if url.path else "/"
        query = url.query.decode("latin-1") if url.query else ""
        body = self.body[0] if len(self.body) == 1 else b"".join(self.body)
        slot = _Slot(Request(method, path, query, self.headers, body), keep_alive)
        refused = self.refused
        self._reset()
        self.slots.append(slot)
        if refused:
            slot.response = self.server.errors(slot.request, refused)
            self._ready()
        else:
            self.loop.create_task(self._serve(slot))
        if len(self.slots) > _PIPELINE and self.transport is not None and not self.paused:
            self.paused = True
            self.transport.pause_reading()  # a client pipelining far ahead waits for answers

    # ---- answering ---------------------------------------------------------------------------

    async def _serve(self, slot: _Slot) -> None:
        server = self.server
        server.active += 1  # counted even after the client left: `close` lets it finish
        try:
            slot.response = await server.handler(slot.request)
        except asyncio.CancelledError:
            slot.response = self.server.errors(slot.request, 503)
            slot.keep_alive = False
        except Exception as exc:
            self.server.log_error(slot.request, exc)
            slot.response = self.server.errors(slot.request, 500)
        finally:
            server.active -= 1
        self._ready()

    def _ready(self) -> None:
        """An answer is ready: write now when it is the connection's only request, else at the end
        of this turn of the loop, together with the others ready by then."""
        if len(self.slots) == 1:
            self._flush()
        elif not self.flushing:
            self.flushing = True
            self.loop.call_soon(self._flush)

    def _flush(self) -> None:
        self.flushing = False
        transport = self.transport
        if transport is None or self.closing or transport.is_closing():
            self.closing = True
            return
        out: list[bytes] = []
        close = False
        slots = self.slots
        while slots and slots[0].response is not None:
            slot = slots.popleft()
            assert slot.response is not None
            keep_alive = slot.keep_alive and not self.server.stopping
            out.append(encode(slot.response, keep_alive, slot.request.method == "HEAD"))
            if not keep_alive:
                close = True
                break
        if not out:
            return
        transport.write(out[0] if len(out) == 1 else b"".join(out))
        if close:
            self.closing = True
            transport.close()
            return
        if not slots:
            self.idle_since = time.monotonic()
        if self.paused and len(slots) <= _PIPELINE:
            self.paused = False
            transport.resume_reading()

    def _fail(self, status: int) -> None:
        """A request the parser refused: answer it, then close (the stream cannot be trusted)."""
        self.closing = True
        self.slots.clear()
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(encode(self.server.errors(None, status), keep_alive=False))
            self.transport.close()

    def close_if_idle(self, now: float, timeout: float) -> None:
        if not self.slots and now - self.idle_since > timeout and self.transport is not None:
            self.closing = True
            self.transport.close()


class Server:
    """Serve `handler` on a TCP port until `close`."""

    def __init__(
        self,
        handler: Handler,
        errors: Errors,
        *,
        max_body: int,
        keepalive_timeout: float = 75.0,
        log_error: Callable[[Request, BaseException], None] | None = None,
    ) -> None:
        self.handler = handler
        self.errors = errors
        self.max_body = max_body
        self.keepalive_timeout = keepalive_timeout
        self.log_error = log_error or (lambda request, exc: None)
        self.connections: set[_Connection] = set()
        self.active = 0  # handlers running
        self.stopping = False
        self.port = 0
        self.loop = asyncio.get_running_loop()
        self._servers: list[asyncio.AbstractServer] = []
        self._sweeper: asyncio.TimerHandle | None = None

    async def listen_tcp(self, host: str, port: int) -> int:
        """Listen on host:port (0: any free port); the port listened on."""
        server = await self.loop.create_server(lambda: _Connection(self), host, port, reuse_address=True)
        self._servers.append(server)
        self._sweep()
        self.port = int(server.sockets[0].getsockname()[1])
        return self.port

    def _sweep(self) -> None:
        if self._sweeper is not None:
            return

        def sweep() -> None:
            now = time.monotonic()
            for conn in list(self.connections):
                conn.close_if_idle(now, self.keepalive_timeout)
            self._sweeper = self.loop.call_later(min(self.keepalive_timeout, 5.0), sweep)

        self._sweeper = self.loop.call_later(min(self.keepalive_timeout, 5.0), sweep)

    async def close(self, grace: float = 5.0) -> None:
        """Stop listening, let requests in progress finish (up to `grace` seconds; also those whose
        client has left, as aiohttp did), then close every connection."""
        self.stopping = True
        if self._sweeper is not None:
            self._sweeper.cancel()
        for server in self._servers:
            server.close()
        deadline = time.monotonic() + grace
        while True:
            for conn in list(self.connections):
                conn.close_if_idle(float("inf"), 0.0)
            if (not self.connections and not self.active) or time.monotonic() > deadline:
                break
            await asyncio.sleep(0.02)
        for conn in list(self.connections):
            if conn.transport is not None:
                conn.transport.abort()
        for server in self._servers:
            await server.wait_closed()
