"""A lean HTTP/1.1 server on asyncio protocols and httptools, for the hot paths.

The harness serves every call on it, and the gateway its whole surface. Measured in bench/gateway:
aiohttp's server stack (request objects, header multidicts, the router, middleware, the response
writer) was about a fifth of the gateway's time per call; this server parses with httptools (the C
parser uvicorn uses, llhttp in strict mode: the request-smuggling defences), hands the handler a
plain `Request` and writes each answer with one `write`.

What it does: keep-alive and pipelining (pipelined requests are handled concurrently and answered
in order, those ready together in one write), Content-Length and chunked request bodies,
`Expect: 100-continue`, a body limit (413), HEAD, `Connection: close`, graceful close, and the
limits of `pier.http.limits.Limits`, counted as bytes arrive: request line (414), header bytes and
lines (431), a header-read deadline and a body-progress timeout (408), the keep-alive idle timeout,
open connections (503), requests read ahead per connection, and no reading while the client is not
reading its answers (the transport's write buffer is over its high-water mark). What it leaves to
the handler: routing, and every answer, including those it decides itself, through `Errors`.
"""

from __future__ import annotations

import asyncio
import re
import socket
import time
from collections import deque
from collections.abc import Callable, Coroutine
from email.utils import formatdate
from http import HTTPStatus
from typing import Any, cast
from urllib.parse import unquote

import httptools

from pier.http.limits import Limits

# Reason phrases, once.
_REASONS = {s.value: s.phrase for s in HTTPStatus}
# Bytes parsed at once outside a Content-Length body: what limits and the pipeline cap are
# checked between, so each is exceeded by at most this much before the server acts.
_STEP = 8 * 1024
_ENCODED_SLASH = re.compile("%2[fF]")
# Seconds a connection closed after an answer keeps reading (and dropping) what the client still
# sends: closing with unread bytes makes the kernel reset the connection, and the client loses the
# answer (a 431 to a client still sending its headers). nginx's lingering close, shorter.
_LINGER = 1.0


def decode_path(raw: str) -> str:
    """Percent-decode a path without creating separators: `%2F` stays as it is, so
    `/models/a%2Flatest%2Fmodel` routes as one segment `a%2Flatest%2Fmodel`, never as four."""
    if "%" not in raw:
        return raw
    return "%2F".join(unquote(part) for part in _ENCODED_SLASH.split(raw))


class Request:
    """One request, whole: header names are lower-case; `raw_path` is the path as sent, `path` is
    percent-decoded except for encoded slashes (`decode_path`): route on `path`."""

    __slots__ = ("body", "headers", "method", "path", "query", "raw_path")

    def __init__(self, method: str, raw_path: str, query: str, headers: dict[str, str], body: bytes) -> None:
        self.method, self.raw_path, self.query, self.headers, self.body = method, raw_path, query, headers, body
        self.path = decode_path(raw_path) if "%" in raw_path else raw_path


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
# parsed) and the status: 400 malformed, 408 too slow, 413 body over the limit, 414 request line too
# long, 431 headers too large or too many, 500 the handler raised (or answered a header that cannot
# be written), 503 stopping or at the connection limit.
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
    """The response as bytes, ready for one write; ValueError when a header name or value holds
    CR, LF or NUL (it would end the header early and let the rest be read as more headers)."""
    reason = _REASONS.get(response.status, "Unknown")
    parts = [f"HTTP/1.1 {response.status} {reason}\r\nContent-Length: {len(response.body)}\r\n"]
    lines = 2
    if response.content_type:
        parts.append(f"Content-Type: {response.content_type}\r\n")
        lines += 1
    if response.headers:
        for name, value in response.headers.items():
            parts.append(f"{name}: {value}\r\n")
        lines += len(response.headers)
    if not keep_alive:
        parts.append("Connection: close\r\n")
        lines += 1
    text = "".join(parts)
    # One count of each over the whole head, not a check per value: cheaper on every answer.
    if text.count("\n") != lines or text.count("\r") != lines or "\0" in text:
        raise ValueError(f"a header of the {response.status} answer holds CR, LF or NUL")
    head = text.encode("latin-1") + _date.header() + b"\r\n"
    return head if head_only else head + response.body


class _Refused(Exception):
    """Raised from a parser callback to stop parsing a request the server refuses (a limit)."""


class _Slot:
    """A request in its connection's line: answers go out in the order requests came."""

    __slots__ = ("keep_alive", "request", "response", "task")

    def __init__(self, request: Request | None, keep_alive: bool) -> None:
        self.request, self.keep_alive = request, keep_alive
        self.response: Response | None = None
        self.task: asyncio.Task[None] | None = None


class _Connection(asyncio.Protocol):
    """One client connection: requests are handled as they arrive, pipelined ones concurrently, and
    answered in order; answers ready together go out in one write."""

    def __init__(self, server: Server) -> None:
        self.server = server
        self.limits = server.limits
        self.loop = server.loop
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpRequestParser(self)
        self.slots: deque[_Slot] = deque()
        self.waiting: deque[_Slot] = deque()  # parsed, its handler not started: the pipeline is full
        self.running = 0  # handlers of this connection in progress
        self.closing = False
        self.done = False  # nothing more is parsed: a last request came (Connection: close), or a refusal
        self.flushing = False
        self.held: bytes | None = None  # received, not parsed yet: parsing stopped (pipeline or writes)
        self.write_paused = False
        self.idle_since = self.loop.time()
        self.in_message = False
        self.in_body = False
        self.continue_due = False  # a 100 Continue to send once the earlier answers are out
        self.began = 0.0  # when the request being read started, or its body last moved
        self._reset()

    def _reset(self) -> None:
        self.url = b""
        self.headers: dict[str, str] = {}
        self.body: list[bytes] = []
        self.size = 0
        self.body_left = 0  # Content-Length bytes still to come
        self.head_bytes = 0
        self.refused = 0  # a status the server answers itself (413), once the message is in
        self.limit_hit = 0  # 414 or 431, set by a callback that then stops the parser

    # ---- asyncio callbacks -------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport subclasses, but have the same methods.
        self.transport = cast(asyncio.Transport, transport)
        if len(self.server.connections) >= self.limits.max_connections:
            # Past the cap: answer at once and close, so the file descriptor is free again at once.
            self.transport.write(encode(self.server.errors(None, 503), keep_alive=False))
            self._linger()
            return
        sock = transport.get_extra_info("socket")
        if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)  # small answers: no Nagle delay
        self.server.connections.add(self)

    def connection_lost(self, exc: Exception | None) -> None:
        # Handlers in progress run to their end (as aiohttp's default): their answers go nowhere.
        self.closing = True
        self.server.connections.discard(self)

    def pause_writing(self) -> None:
        # The client is not reading its answers: read no more requests until it does.
        self.write_paused = True
        if self.transport is not None:
            self.transport.pause_reading()

    def resume_writing(self) -> None:
        self.write_paused = False
        self._resume()

    def data_received(self, data: bytes) -> None:
        if self.done:
            return
        if self.held is not None:
            self.held += data  # reading is paused: at most what was already on its way
            return
        self._feed(data)

    # ---- parsing -----------------------------------------------------------------------------

    def _feed(self, data: bytes) -> None:
        """Parse `data` in steps, checking the limits between them; stop (holding the rest)
        when the pipeline is full or the client does not read."""
        limits = self.limits
        at, end = 0, len(data)
        while at < end and not self.done:
            if len(self.slots) >= limits.max_pipeline or self.write_paused:
                self.held = data[at:]
                if self.transport is not None:
                    self.transport.pause_reading()
                return
            # A Content-Length body goes in whole: its size is known, so the step ends where it does.
            step = self.body_left if self.body_left else _STEP
            piece = data if at == 0 and end <= step else data[at : at + step]
            at += len(piece)
            try:
                self.parser.feed_data(piece)
            except httptools.HttpParserCallbackError:
                self._refuse(self.limit_hit or 400)
                return
            except httptools.HttpParserError:
                if not self.done:  # bytes after a last request are not looked at: not an error
                    self._refuse(400)
                return
            except httptools.HttpParserUpgrade:
                self._refuse(400)
                return
            if self.in_message and not self.in_body:
                self.head_bytes += len(piece)
                if self.head_bytes - len(self.url) > limits.max_header_bytes:
                    self._refuse(431)
                    return
            elif self.in_body:
                self.began = self.loop.time()  # the body moved

    # ---- httptools callbacks -----------------------------------------------------------------

    def on_message_begin(self) -> None:
        self.in_message = True
        self.began = self.loop.time()

    def on_url(self, url: bytes) -> None:
        self.url += url
        if len(self.url) > self.limits.max_request_line:
            self.limit_hit = 414
            raise _Refused

    def on_header(self, name: bytes, value: bytes) -> None:
        headers = self.headers
        headers[name.decode("latin-1").lower()] = value.decode("latin-1")
        if len(headers) > self.limits.max_headers:
            self.limit_hit = 431
            raise _Refused

    def on_headers_complete(self) -> None:
        self.in_body = True  # `_feed` starts the body's clock if the body is not in with the headers
        length = self.headers.get("content-length")
        if length is not None:  # llhttp has checked it: digits, once
            self.body_left = int(length)
        too_large = self.body_left > self.server.max_body
        if self.headers.get("expect", "").lower() == "100-continue" and self.parser.get_http_version() == "1.1":
            # Only the first request in line may be told to go on: before an earlier answer is
            # out, a 100 would be read as that answer's start. HTTP/1.0 clients do not know it.
            if self.slots:
                self.continue_due = not too_large
            elif too_large:
                # The client waits before sending the body: refuse now, and it sends nothing.
                self.limit_hit = 413
                raise _Refused
            elif self.transport is not None:
                self.transport.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        if too_large:
            self.refused = 413

    def on_body(self, data: bytes) -> None:
        if self.body_left:
            self.body_left -= len(data)
        if self.refused:
            return
        self.size += len(data)
        if self.size > self.server.max_body:
            self.refused, self.body = 413, []  # read to the end of the message, keep nothing
            return
        self.body.append(data)

    def on_message_complete(self) -> None:
        self.in_message = self.in_body = self.continue_due = False
        if self.done:  # pipelined after a last request, in the same read: not served
            self._reset()
            return
        keep_alive = self.parser.should_keep_alive()
        self.done = not keep_alive  # what comes after a last request is never served
        method = self.parser.get_method().decode("ascii")
        url = httptools.parse_url(self.url)
        raw_path = url.path.decode("latin-1") if url.path else "/"
        query = url.query.decode("latin-1") if url.query else ""
        body = self.body[0] if len(self.body) == 1 else b"".join(self.body)
        slot = _Slot(Request(method, raw_path, query, self.headers, body), keep_alive)
        refused = self.refused
        self._reset()
        if self.closing:
            return
        self.slots.append(slot)
        if refused:
            slot.response = self.server.errors(slot.request, refused)
            self._ready()
        elif self.running >= self.limits.max_pipeline:
            self.waiting.append(slot)
        else:
            self._start(slot)

    # ---- answering ---------------------------------------------------------------------------

    def _start(self, slot: _Slot) -> None:
        self.running += 1
        # The task leaves the server's set itself, at its end: a done callback costs a turn of the loop.
        slot.task = self.loop.create_task(self._serve(slot))
        self.server.tasks.add(slot.task)

    async def _serve(self, slot: _Slot) -> None:
        server = self.server
        request = slot.request
        assert request is not None
        try:
            slot.response = await server.handler(request)
        except asyncio.CancelledError:
            slot.response = server.errors(request, 503)
            slot.keep_alive = False
        except Exception as exc:
            server.log_error(request, exc)
            slot.response = server.errors(request, 500)
        finally:
            self.running -= 1
            server.tasks.discard(slot.task)  # type: ignore[arg-type]
            if self.waiting:
                self._start(self.waiting.popleft())
        self._ready()

    def _ready(self) -> None:
        """An answer is ready: write now when it is the connection's only request, else at the end
        of this turn of the loop, together with the others ready by then."""
        if len(self.slots) == 1:
            self._flush()
        elif not self.flushing:
            self.flushing = True
            self.loop.call_soon(self._flush)

    def _unwritable(self, slot: _Slot, keep_alive: bool, exc: ValueError) -> bytes:
        """The answer instead of one whose headers cannot be written (CR, LF or NUL in one)."""
        head_only = slot.request is not None and slot.request.method == "HEAD"
        if slot.request is not None:
            self.server.log_error(slot.request, exc)
        return encode(self.server.errors(slot.request, 500), keep_alive, head_only)

    def _flush(self) -> None:
        self.flushing = False
        transport = self.transport
        if transport is None or self.closing or transport.is_closing():
            self.closing = True
            return
        out: list[bytes] = []
        close = False
        slots = self.slots
        stopping = self.server.stopping
        while slots and slots[0].response is not None:
            slot = slots.popleft()
            keep_alive = slot.keep_alive and not stopping
            request = slot.request
            try:
                out.append(
                    encode(slot.response, keep_alive, request is not None and request.method == "HEAD")  # type: ignore[arg-type]
                )
            except ValueError as exc:
                out.append(self._unwritable(slot, keep_alive, exc))
            if not keep_alive:
                close = True
                break
        if not out:
            return
        transport.write(out[0] if len(out) == 1 else b"".join(out))
        if close:
            self._linger()
            return
        if not slots:
            self.idle_since = self.loop.time()
            if self.continue_due:
                self.continue_due = False
                transport.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        if self.held is not None and len(slots) < self.limits.max_pipeline:
            self._resume()

    def _linger(self) -> None:
        """Close once the answers written are out: the write side at once, the read side when the
        client closes its own or after `_LINGER` seconds, dropping whatever it sends meanwhile."""
        self.closing = self.done = True
        self.held = None
        transport = self.transport
        if transport is None:
            return
        if not transport.can_write_eof():
            transport.close()
            return
        transport.write_eof()
        transport.resume_reading()
        self.loop.call_later(_LINGER, transport.close)

    def _resume(self) -> None:
        """Parse what was held and read again, unless the pipeline or the client still say wait."""
        if self.write_paused or self.closing or len(self.slots) >= self.limits.max_pipeline:
            return
        held, self.held = self.held, None
        if self.in_message:
            self.began = self.loop.time()  # the wait was the server's, not the client's
        if held is not None:
            self._feed(held)
        if self.held is None and not self.done and self.transport is not None:
            self.transport.resume_reading()

    def _refuse(self, status: int) -> None:
        """A request the server will not read on (malformed, over a limit, too slow): answer it
        after the answers before it, then close (the rest of the stream cannot be trusted)."""
        self.done = True
        self.held = None
        if self.transport is not None:
            self.transport.pause_reading()
        slot = _Slot(None, keep_alive=False)
        slot.response = self.server.errors(None, status)
        self.slots.append(slot)
        self._ready()

    def check_deadlines(self, now: float) -> None:
        """Called about once a second: close an idle connection past the keep-alive timeout, and
        refuse a request whose headers or body stopped arriving."""
        if self.closing or self.transport is None:
            return
        limits = self.limits
        if self.in_message:
            if self.done or self.held is not None or self.write_paused:
                return  # the server, not the client, is the one waiting
            timeout = limits.body_timeout if self.in_body else limits.header_timeout
            if now - self.began > timeout:
                self._refuse(408)
        elif not self.slots and now - self.idle_since > limits.keepalive_timeout:
            self.close()

    def close_if_idle(self) -> None:
        if not self.slots and not self.in_message:
            self.close()

    def close(self) -> None:
        self.closing = True
        if self.transport is not None:
            self.transport.close()


class Server:
    """Serve `handler` on a TCP port until `close`."""

    def __init__(
        self,
        handler: Handler,
        errors: Errors,
        *,
        max_body: int,
        limits: Limits | None = None,
        log_error: Callable[[Request, BaseException], None] | None = None,
    ) -> None:
        self.handler = handler
        self.errors = errors
        self.max_body = max_body
        self.limits = limits or Limits()
        self.log_error = log_error or (lambda request, exc: None)
        self.connections: set[_Connection] = set()
        self.tasks: set[asyncio.Task[None]] = set()  # handlers running, owned here so `close` can end them
        self.stopping = False
        self.port = 0
        self.loop = asyncio.get_running_loop()
        self._servers: list[asyncio.AbstractServer] = []
        self._sweeper: asyncio.TimerHandle | None = None

    async def listen_tcp(self, host: str, port: int, reuse_port: bool = False) -> int:
        """Listen on host:port (0: any free port); the port listened on. `reuse_port`: replicas of
        one service share the port, the kernel spreading connections among them."""
        server = await self.loop.create_server(
            lambda: _Connection(self), host, port, reuse_address=True, reuse_port=reuse_port or None
        )
        return self._listening(server)

    async def listen_socket(self, sock: socket.socket) -> int:
        """Serve on a socket already bound and listening (handed over by who started us); its port."""
        server = await self.loop.create_server(lambda: _Connection(self), sock=sock)
        return self._listening(server)

    def _listening(self, server: asyncio.Server) -> int:
        self._servers.append(server)
        if self._sweeper is None:
            self._sweep()
        self.port = int(server.sockets[0].getsockname()[1])
        return self.port

    def _sweep(self) -> None:
        limits = self.limits
        now = self.loop.time()
        for conn in list(self.connections):
            conn.check_deadlines(now)
        # Often enough that no deadline is missed by more than a tenth of it, at most once a second.
        every = min(1.0, limits.header_timeout / 10, limits.body_timeout / 10, limits.keepalive_timeout / 10)
        self._sweeper = self.loop.call_later(every, self._sweep)

    async def close(self, grace: float = 5.0) -> None:
        """Stop listening, let requests in progress finish (up to `grace` seconds; also those whose
        client has left, as aiohttp did), cancel those still running, then close every connection."""
        self.stopping = True
        if self._sweeper is not None:
            self._sweeper.cancel()
        for server in self._servers:
            server.close()
        deadline = time.monotonic() + grace
        while True:
            for conn in list(self.connections):
                conn.close_if_idle()
            left = deadline - time.monotonic()
            if (not self.connections and not self.tasks) or left <= 0:
                break
            if self.tasks:
                await asyncio.wait(list(self.tasks), timeout=min(left, 0.05))
            else:
                await asyncio.sleep(min(left, 0.02))
        tasks = list(self.tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for conn in list(self.connections):
            if conn.transport is not None:
                conn.transport.abort()
        for server in self._servers:
            await server.wait_closed()
