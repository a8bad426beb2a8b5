"""Forwarding one request to one instance: a lean HTTP/1.1 client on asyncio protocols.

Kept apart from routing so the transport can be swapped without touching the rest: the
gateway only sees `Proxy.forward` and the three ways it can fail.

What an instance answers is checked before any of it is passed on: a status line `HTTP/1.x`
with a three-digit status 100-599, header lines ended by CRLF (a bare CR or LF, a NUL, a folded
line or a malformed name is a protocol error, so a model cannot add headers to the gateway's
answer), one non-negative Content-Length or `Transfer-Encoding: chunked` (never both), the head
within `Limits.max_response_head`. 1xx answers are skipped; chunked bodies are parsed as they
arrive, each byte looked at once. What the gateway writes is checked too: a CR, LF or NUL in a
header name or value it would send raises `InvalidHeader` and nothing is sent.

Why not aiohttp's client: profiling showed its per-request machinery (timers, response objects,
header multidicts, the connector's bookkeeping) as the gateway's largest cost. The harness always
answers with a Content-Length (or chunked) body, so a client that writes requests and parses
answers from a bytearray is all the gateway needs.

Connections are persistent and pipelined: an instance gets at most as many connections as it has
workers, and the calls sent to it ride on the one with the fewest waiting, answered in order.
Requests sent in the same turn of the event loop on one connection go out in one `write`; the
harness answers them in one too. Measured (py-spy, bench/gateway): socket writes were over 40%
of the gateway's time, one per request and one per answer; this halves them under load. A call
given up (timeout, the client left) leaves its place in line; its answer is read and dropped.
"""

from __future__ import annotations

import asyncio
import re
import socket
import time
from collections import deque
from collections.abc import Mapping
from types import TracebackType
from typing import cast

import msgspec

from pier.http.limits import Limits


class Reply(msgspec.Struct, frozen=True):
    status: int
    body: bytes
    content_type: str | None


class Unreachable(Exception):
    """The connection failed before anything was sent: another instance may safely take the request."""


class UpstreamTimeout(Exception):
    """No complete answer within the request timeout."""


class UpstreamFailed(Exception):
    """The instance broke the exchange after the request may have reached it."""


class InvalidHeader(ValueError):
    """A header the gateway would write holds CR, LF or NUL: nothing is sent."""


class _Invalid(Exception):
    """The instance's answer is not valid HTTP/1.1: the connection cannot be trusted past it."""


class _Closed(Exception):
    """A pooled connection was closed by the instance before any byte of the answer came."""


class _Expired(Exception):
    """The request timeout passed before the answer was complete."""


def _expire(reply: asyncio.Future[Reply]) -> None:
    if not reply.done():
        reply.set_exception(_Expired())


# The states of reading one answer.
_HEAD, _BODY, _CHUNK_SIZE, _CHUNK_DATA, _CHUNK_END, _TRAILERS = range(6)
_CHUNK = re.compile(rb"([0-9A-Fa-f]{1,16})(;[^\r\n\0]*)?")
# A chunk-size line (with extensions) longer than this is refused.
_CHUNK_LINE = 4096


_VERSIONS = (b"HTTP/1.1 ", b"HTTP/1.0 ")
# The characters of a header name (RFC 9110's token).
_TOKEN_CHARS = b"!#$%&'*+-.^_`|~0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"


def _head_problem(head: bytes) -> str:
    """What is wrong with a head `_Connection._head` refused, for the error; only on that slow path."""
    lines = head.split(b"\r\n")
    status_line = lines[0]
    version, _, rest = status_line.partition(b" ")
    if version not in (b"HTTP/1.1", b"HTTP/1.0"):
        return f"bad status line {status_line[:60]!r}"
    code = rest[:3]
    if not (code.isdigit() and 100 <= int(code) <= 599 and (len(rest) == 3 or rest[3:4] == b" ")):
        return f"the status {rest.partition(b' ')[0][:20].decode('latin-1')!r} is not a number 100-599"
    for line in lines:
        if b"\r" in line or b"\n" in line or b"\0" in line:
            return f"a bare CR or LF, or a NUL, in {line[:60]!r}"
    for line in lines[1:]:
        name, sep, _ = line.partition(b":")
        if not sep or not name or name.strip(_TOKEN_CHARS):
            return f"bad header line {line[:60]!r} (a folded line, or no name and colon)"
    return "malformed status line or headers"


class _Connection(asyncio.Protocol):
    __slots__ = (
        "_buffer",
        "_chunked",
        "_close_after",
        "_content_type",
        "_flushing",
        "_got_bytes",
        "_left",
        "_loop",
        "_max_head",
        "_outgoing",
        "_parts",
        "_scan",
        "_state",
        "_status",
        "answered",
        "closed",
        "draining",
        "idle_since",
        "pending",
        "transport",
    )

    def __init__(self, loop: asyncio.AbstractEventLoop, max_head: int) -> None:
        self._loop = loop
        self._max_head = max_head
        self.transport: asyncio.Transport | None = None
        # Answers awaited, oldest first; a future already done was given up by its caller.
        self.pending: deque[asyncio.Future[Reply]] = deque()
        self.closed = False
        self.draining = False  # takes no new requests; closed once nothing is pending
        self.answered = 0
        self.idle_since = time.monotonic()
        self._outgoing: list[bytes] = []
        self._flushing = False
        self._got_bytes = False  # of the oldest pending answer
        self._buffer = bytearray()
        self._scan = 0  # where to look for the end of the head next: bytes before it were looked at
        self._reset()

    def _reset(self) -> None:
        self._state = _HEAD
        self._status = 0
        self._left = 0  # body bytes (or this chunk's) still to come; head bytes, then trailer bytes, allowed
        self._chunked = False
        self._close_after = False
        self._content_type: str | None = None
        self._parts: list[bytes]  # a chunked body's chunks, set when one starts

    # ---- sending -----------------------------------------------------------------------------

    def send(self, request: bytes) -> asyncio.Future[Reply]:
        reply: asyncio.Future[Reply] = self._loop.create_future()
        self.pending.append(reply)
        if len(self.pending) == 1 and self.transport is not None:
            self.transport.write(request)  # nothing else under way here: no reason to wait
            return reply
        self._outgoing.append(request)
        if not self._flushing:
            self._flushing = True
            self._loop.call_soon(self._flush)
        return reply

    def _flush(self) -> None:
        self._flushing = False
        outgoing, self._outgoing = self._outgoing, []
        if self.transport is not None and not self.closed:
            self.transport.write(outgoing[0] if len(outgoing) == 1 else b"".join(outgoing))

    def give_up(self, draining: bool) -> None:
        """A caller stopped waiting: with `draining` (it timed out) the connection takes no more
        requests, and closes as soon as nothing it still carries is awaited."""
        self.draining = self.draining or draining
        if self.draining and all(reply.done() for reply in self.pending):
            self.close()

    def close(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.close()

    # ---- asyncio callbacks -------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport subclasses, but have the same methods.
        self.transport = cast(asyncio.Transport, transport)
        sock = transport.get_extra_info("socket")
        if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
            # Small requests and answers: no Nagle delay.
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        first = True
        while self.pending:
            reply = self.pending.popleft()
            if not reply.done():
                if first and not self._got_bytes:
                    # Nothing of this answer came: an idle connection the instance closed, or
                    # the instance gone. The caller may try once on a fresh connection.
                    reply.set_exception(_Closed())
                else:
                    reply.set_exception(UpstreamFailed("the instance closed the connection mid-answer"))
            first = False

    def data_received(self, data: bytes) -> None:
        if self.closed:
            return
        self._buffer += data
        self._got_bytes = True
        try:
            self._parse()
        except _Invalid as exc:
            # The oldest answer is the broken one; those after it may have reached the instance,
            # so they fail too (connection_lost), and none is retried.
            while self.pending:
                reply = self.pending.popleft()
                if not reply.done():
                    reply.set_exception(UpstreamFailed(f"the instance's answer is not valid HTTP/1.1: {exc}"))
                    break
            self.close()
            return
        if not self.pending:
            self.idle_since = time.monotonic()
            if self.draining:
                self.close()

    # ---- parsing -----------------------------------------------------------------------------

    def _parse(self) -> None:
        """Read as far as the buffer goes; each byte is looked at once, and consumed bytes leave
        the front of the buffer (O(1) for a bytearray)."""
        buf = self._buffer
        while buf and not self.closed:
            state = self._state
            if state == _HEAD:
                end = buf.find(b"\r\n\r\n", self._scan)
                if end < 0:
                    if len(buf) > self._max_head:
                        raise _Invalid(f"the status line and headers are over {self._max_head} bytes")
                    self._scan = max(0, len(buf) - 3)
                    return
                if end + 4 > self._max_head:
                    raise _Invalid(f"the status line and headers are over {self._max_head} bytes")
                head = bytes(buf[:end])
                del buf[: end + 4]
                self._scan = 0
                self._head(head)
                if self._state == _BODY and len(buf) >= self._left:  # the usual case: the body is in too
                    body = bytes(buf[: self._left])
                    del buf[: self._left]
                    self._complete(body)
            elif state == _BODY:
                if len(buf) < self._left:
                    return
                body = bytes(buf[: self._left])
                del buf[: self._left]
                self._complete(body)
            elif state == _CHUNK_SIZE:
                end = buf.find(b"\r\n", 0, _CHUNK_LINE)
                if end < 0:
                    if len(buf) >= _CHUNK_LINE:
                        raise _Invalid("a chunk-size line is too long")
                    return
                match = _CHUNK.fullmatch(buf, 0, end)
                if match is None:
                    raise _Invalid(f"bad chunk size {bytes(buf[:end])[:40]!r}")
                self._left = int(match.group(1), 16)
                del buf[: end + 2]
                self._state = _CHUNK_DATA if self._left else _TRAILERS
                if not self._left:
                    self._left = self._max_head  # trailer bytes allowed
            elif state == _CHUNK_DATA:
                take = min(len(buf), self._left)
                self._parts.append(bytes(buf[:take]))
                del buf[:take]
                self._left -= take
                if self._left:
                    return
                self._state = _CHUNK_END
            elif state == _CHUNK_END:
                if len(buf) < 2:
                    return
                if buf[:2] != b"\r\n":
                    raise _Invalid("a chunk does not end with CRLF")
                del buf[:2]
                self._state = _CHUNK_SIZE
            else:  # _TRAILERS: lines until an empty one; read and dropped
                end = buf.find(b"\r\n")
                if end < 0 or end + 2 > self._left:
                    if len(buf) > self._left:
                        raise _Invalid(f"the trailers are over {self._max_head} bytes")
                    return
                line = bytes(buf[:end])
                if b"\r" in line or b"\n" in line or b"\0" in line:
                    raise _Invalid("a trailer holds a bare CR, LF or NUL")
                del buf[: end + 2]
                self._left -= end + 2
                if end == 0:
                    self._complete(b"".join(self._parts))

    def _head(self, head: bytes) -> None:
        """Check a status line and headers, and set how the body is framed."""
        lines = head.split(b"\r\n")
        crlfs = len(lines) - 1
        code = head[9:12]
        # C-level counts and checks, not a regular expression: this runs on every answer.
        if (
            head.count(b"\n") != crlfs
            or head.count(b"\r") != crlfs
            or b"\0" in head
            or head[:9] not in _VERSIONS
            or not code.isdigit()
            or head[12:13] not in (b"", b" ")
            or not 100 <= int(code) <= 599
        ):
            raise _Invalid(_head_problem(head))
        status = int(code)  # 100-599, checked above
        length = -1
        chunked = False
        for line in lines[1:]:
            name, sep, value = line.partition(b":")
            if not sep or not name or name.strip(_TOKEN_CHARS):
                raise _Invalid(_head_problem(head))
            name = name.lower()
            if name == b"content-length":
                value = value.strip(b" \t")
                if length >= 0:
                    raise _Invalid("Content-Length is given more than once")
                if not value.isdigit() or len(value) > 18:  # bytes.isdigit: ASCII digits only
                    raise _Invalid(f"Content-Length {value[:40]!r} is not a non-negative integer")
                length = int(value)
            elif name == b"content-type":
                self._content_type = value.strip(b" \t").decode("latin-1")
            elif name == b"transfer-encoding":
                if value.strip(b" \t").lower() != b"chunked" or chunked:
                    raise _Invalid(f"Transfer-Encoding {value[:40]!r}: only one 'chunked' is understood")
                chunked = True
            elif name == b"connection" and b"close" in (token.strip() for token in value.lower().split(b",")):
                self._close_after = True
        if status < 200:
            if status == 101:
                raise _Invalid("the instance switched protocols")
            self._reset()  # an interim answer (100 Continue, 103 Early Hints): the real one follows
            return
        if chunked and length >= 0:
            raise _Invalid("both Content-Length and Transfer-Encoding")
        self._status = status
        if status in (204, 304):
            self._complete(b"")
        elif chunked:
            self._chunked = True
            self._parts = []
            self._state = _CHUNK_SIZE
        elif length < 0:
            raise _Invalid("the answer has neither Content-Length nor Transfer-Encoding: chunked")
        elif length == 0:
            self._complete(b"")
        else:
            self._left = length
            self._state = _BODY

    def _complete(self, body: bytes) -> None:
        status, content_type, close_after = self._status, self._content_type, self._close_after
        self._reset()
        self._got_bytes = bool(self._buffer)
        self.answered += 1
        if self.pending:
            reply = self.pending.popleft()
            if not reply.done():
                reply.set_result(Reply(status, body, content_type))
        if close_after:
            self.close()


class Proxy:
    def __init__(self, limits: Limits | None = None, keepalive_timeout: float = 15.0) -> None:
        self._limits = limits or Limits()
        # Fewer seconds than the harness's own keep-alive (75 s), so the gateway closes idle
        # connections first and never sends on one the instance is closing.
        self._keepalive_timeout = keepalive_timeout
        self._pools: dict[str, list[_Connection]] = {}
        self._loop: asyncio.AbstractEventLoop | None = None

    async def __aenter__(self) -> Proxy:
        self._loop = asyncio.get_running_loop()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        for pool in self._pools.values():
            for conn in pool:
                conn.close()
        self._pools.clear()

    async def _connect(self, address: str) -> _Connection:
        loop = self._loop
        assert loop is not None, "use Proxy as an async context manager"
        host, _, port = address.rpartition(":")
        max_head = self._limits.max_response_head
        timeout = self._limits.connect_timeout
        try:
            async with asyncio.timeout(timeout):
                _, conn = await loop.create_connection(lambda: _Connection(loop, max_head), host, int(port))
        except TimeoutError:
            raise Unreachable(f"{address}: no connection within {timeout:g} s") from None
        except OSError as exc:
            raise Unreachable(f"{address}: {exc}") from exc
        return conn

    def _choose(self, address: str, connections: int) -> _Connection | None:
        """The open connection with the fewest answers awaited, or None when a new one should open
        (none is idle and the instance has fewer than `connections`)."""
        pool = self._pools.get(address)
        if pool is None:
            pool = self._pools[address] = []
        best: _Connection | None = None
        now = time.monotonic()
        for conn in list(pool):
            if conn.closed or (not conn.pending and now - conn.idle_since > self._keepalive_timeout):
                pool.remove(conn)
                if not conn.closed:
                    conn.close()
                continue
            if conn.draining:
                continue
            if best is None or len(conn.pending) < len(best.pending):
                best = conn
        if best is None or (best.pending and len(pool) < connections):
            return None
        return best

    async def forward(
        self,
        method: str,
        address: str,
        path: str,
        query: str,
        body: bytes,
        headers: Mapping[str, str],
        timeout: float,
        connections: int = 1,
    ) -> Reply:
        """Send one request to the instance at `address` and read its answer; the instance gets at
        most `connections` connections (its workers)."""
        target = f"{path}?{query}" if query else path
        head = [f"{method} {target} HTTP/1.1\r\nHost: {address}\r\nContent-Length: {len(body)}\r\n"]
        for name, value in headers.items():
            head.append(f"{name}: {value}\r\n")
        head.append("\r\n")
        text = "".join(head)
        lines = len(headers) + 4
        # One count of each over the whole head, not a check per value: cheaper on every call.
        if text.count("\n") != lines or text.count("\r") != lines or "\0" in text or " " in target:
            raise InvalidHeader(f"{method} {target!r}: a header or the target holds CR, LF, NUL or a space")
        request = text.encode("latin-1") + body
        assert self._loop is not None, "use Proxy as an async context manager"
        conn = self._choose(address, connections)
        # A connection the instance closed while idle answers nothing: one fresh try is safe.
        for fresh in (False, True) if conn is not None else (True,):
            if fresh:
                conn = await self._connect(address)
                self._pools.setdefault(address, []).append(conn)
            assert conn is not None
            reused = not fresh and not conn.pending and conn.answered > 0
            reply = conn.send(request)
            # A bare timer, not asyncio.timeout(): the context manager's bookkeeping showed in profiles.
            timer = self._loop.call_later(timeout, _expire, reply)
            try:
                return await reply
            except _Closed:
                if fresh or not reused:
                    raise UpstreamFailed("the instance closed the connection before answering") from None
                continue
            except _Expired:
                conn.give_up(draining=True)
                raise UpstreamTimeout(f"no answer within {timeout:g} s") from None
            except BaseException:
                # Cancelled (the client left): the answer, when it comes, is read and dropped.
                if not reply.done():
                    reply.cancel()
                conn.give_up(draining=False)
                raise
            finally:
                timer.cancel()
        raise UpstreamFailed("the instance closed the connection before answering")
