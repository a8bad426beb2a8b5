"""Forwarding one request to one instance: a lean HTTP/1.1 client on asyncio protocols.

Kept apart from routing so the transport can be swapped without touching the rest: the
gateway only sees `Proxy.forward` and the three ways it can fail.

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
import socket
import time
from collections import deque
from collections.abc import Mapping
from types import TracebackType
from typing import cast

import msgspec


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


class _Closed(Exception):
    """A pooled connection was closed by the instance before any byte of the answer came."""


class _Expired(Exception):
    """The request timeout passed before the answer was complete."""


def _expire(reply: asyncio.Future[Reply]) -> None:
    if not reply.done():
        reply.set_exception(_Expired())


class _Connection(asyncio.Protocol):
    __slots__ = (
        "_body_start",
        "_buffer",
        "_chunked",
        "_close_after",
        "_content_type",
        "_flushing",
        "_got_bytes",
        "_length",
        "_loop",
        "_outgoing",
        "_status",
        "answered",
        "closed",
        "draining",
        "idle_since",
        "pending",
        "transport",
    )

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
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
        self._reset()

    def _reset(self) -> None:
        self._status = 0
        self._length = -1
        self._body_start = -1
        self._chunked = False
        self._close_after = False
        self._content_type: str | None = None

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
        self._buffer += data
        self._got_bytes = True
        while self._buffer:
            if self._body_start < 0 and not self._parse_head():
                return
            if self._chunked:
                done = self._dechunk()
                if done is None:
                    return
                body, end = done
            else:
                end = self._body_start + self._length
                if len(self._buffer) < end:
                    return
                body = bytes(self._buffer[self._body_start : end])
            del self._buffer[:end]
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
                return
        if not self.pending:
            self.idle_since = time.monotonic()
            if self.draining:
                self.close()

    # ---- parsing -----------------------------------------------------------------------------

    def _parse_head(self) -> bool:
        end = self._buffer.find(b"\r\n\r\n")
        if end < 0:
            return False
        lines = bytes(self._buffer[:end]).decode("latin-1").split("\r\n")
        parts = lines[0].split(" ", 2)
        self._status = int(parts[1])
        self._length = 0
        for line in lines[1:]:
            name, _, value = line.partition(":")
            name = name.strip().lower()
            if name == "content-length":
                self._length = int(value)
            elif name == "content-type":
                self._content_type = value.strip()
            elif name == "transfer-encoding" and "chunked" in value.lower():
                self._chunked = True
            elif name == "connection" and value.strip().lower() == "close":
                self._close_after = True
        self._body_start = end + 4
        return True

    def _dechunk(self) -> tuple[bytes, int] | None:
        """The whole body and where its message ends, once every chunk is in; else None."""
        body = bytearray()
        at = self._body_start
        while True:
            line_end = self._buffer.find(b"\r\n", at)
            if line_end < 0:
                return None
            size = int(bytes(self._buffer[at:line_end]).split(b";")[0], 16)
            start = line_end + 2
            if size == 0:
                trailer_end = self._buffer.find(b"\r\n", start)
                if trailer_end < 0:
                    return None
                return bytes(body), trailer_end + 2
            if len(self._buffer) < start + size + 2:
                return None
            body += self._buffer[start : start + size]
            at = start + size + 2


class Proxy:
    def __init__(self, keepalive_timeout: float = 15.0) -> None:
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
        try:
            _, conn = await loop.create_connection(lambda: _Connection(loop), host, int(port))
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
        request = "".join(head).encode("latin-1") + body
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
