"""Forwarding one request to one instance: a lean HTTP/1.1 client on asyncio protocols.

Kept apart from routing so the transport can be swapped without touching the rest: the
gateway only sees `Proxy.forward` and the three ways it can fail.

Why not aiohttp's client: profiling showed its per-request machinery (timers, response objects,
header multidicts, the connector's bookkeeping) as the gateway's largest cost. The harness always
answers with a Content-Length (or chunked) body, so a client that writes one request in one
`write` and parses one response from a bytearray, over persistent connections pooled per
instance, is all the gateway needs.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import time
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
        "_length",
        "_status",
        "closed",
        "idle_since",
        "reply",
        "transport",
    )

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.reply: asyncio.Future[Reply] | None = None
        self.closed = False
        self.idle_since = 0.0
        self._buffer = bytearray()
        self._reset()

    def _reset(self) -> None:
        self._buffer.clear()
        self._status = 0
        self._length = -1
        self._body_start = -1
        self._chunked = False
        self._close_after = False
        self._content_type: str | None = None

    # ---- asyncio callbacks -------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport subclasses, but have the same methods.
        self.transport = cast(asyncio.Transport, transport)
        sock = transport.get_extra_info("socket")
        if sock is not None:
            # Small requests and answers: no Nagle delay.
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        reply = self.reply
        if reply is not None and not reply.done():
            if not self._buffer:
                reply.set_exception(_Closed())
            else:
                reply.set_exception(UpstreamFailed("the instance closed the connection mid-answer"))

    def data_received(self, data: bytes) -> None:
        self._buffer += data
        if self._body_start < 0 and not self._parse_head():
            return
        if self._chunked:
            body = self._dechunk()
            if body is None:
                return
        else:
            end = self._body_start + self._length
            if len(self._buffer) < end:
                return
            body = bytes(self._buffer[self._body_start : end])
        reply = self.reply
        status, content_type = self._status, self._content_type
        if self._close_after:
            self.closed = True
            if self.transport is not None:
                self.transport.close()
        self._reset()
        if reply is not None and not reply.done():
            reply.set_result(Reply(status, body, content_type))

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

    def _dechunk(self) -> bytes | None:
        """The whole body once every chunk is in, else None (wait for more data)."""
        body = bytearray()
        at = self._body_start
        while True:
            line_end = self._buffer.find(b"\r\n", at)
            if line_end < 0:
                return None
            size = int(bytes(self._buffer[at:line_end]).split(b";")[0], 16)
            start = line_end + 2
            if size == 0:
                if self._buffer.find(b"\r\n", start) < 0:
                    return None
                return bytes(body)
            if len(self._buffer) < start + size + 2:
                return None
            body += self._buffer[start : start + size]
            at = start + size + 2


class Proxy:
    def __init__(self, keepalive_timeout: float = 15.0) -> None:
        # Fewer seconds than the harness's own keep-alive (75 s), so the gateway closes idle
        # connections first and never sends on one the instance is closing.
        self._keepalive_timeout = keepalive_timeout
        self._idle: dict[str, list[_Connection]] = {}
        self._loop: asyncio.AbstractEventLoop | None = None

    async def __aenter__(self) -> Proxy:
        self._loop = asyncio.get_running_loop()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        for pool in self._idle.values():
            for conn in pool:
                if conn.transport is not None:
                    conn.transport.close()
        self._idle.clear()

    async def _connect(self, address: str) -> _Connection:
        assert self._loop is not None, "use Proxy as an async context manager"
        host, _, port = address.rpartition(":")
        try:
            _, conn = await self._loop.create_connection(_Connection, host, int(port))
        except OSError as exc:
            raise Unreachable(f"{address}: {exc}") from exc
        return conn

    def _pooled(self, address: str) -> _Connection | None:
        pool = self._idle.get(address)
        now = time.monotonic()
        while pool:
            conn = pool.pop()
            if not conn.closed and now - conn.idle_since < self._keepalive_timeout:
                return conn
            if conn.transport is not None:
                conn.transport.close()
        return None

    async def forward(
        self,
        method: str,
        address: str,
        path: str,
        query: str,
        body: bytes,
        headers: Mapping[str, str],
        timeout: float,
    ) -> Reply:
        target = f"{path}?{query}" if query else path
        head = [f"{method} {target} HTTP/1.1\r\nHost: {address}\r\nContent-Length: {len(body)}\r\n"]
        for name, value in headers.items():
            head.append(f"{name}: {value}\r\n")
        head.append("\r\n")
        request = "".join(head).encode("latin-1") + body
        assert self._loop is not None, "use Proxy as an async context manager"
        conn = self._pooled(address)
        # A pooled connection the instance closed while idle answers nothing: one fresh try is safe.
        for fresh in (False, True) if conn is not None else (True,):
            if fresh:
                conn = await self._connect(address)
            assert conn is not None and conn.transport is not None
            reply: asyncio.Future[Reply] = self._loop.create_future()
            conn.reply = reply
            conn.transport.write(request)
            # A bare timer, not asyncio.timeout(): the context manager's bookkeeping showed in profiles.
            timer = self._loop.call_later(timeout, _expire, reply)
            try:
                answer = await reply
            except _Closed:
                if fresh:
                    raise UpstreamFailed("the instance closed the connection before answering") from None
                continue
            except _Expired:
                conn.closed = True
                conn.transport.close()
                raise UpstreamTimeout(f"no answer within {timeout:g} s") from None
            except BaseException:
                # Cancelled (the client left) or failed: the connection's state is unknown, so it goes.
                conn.closed = True
                with contextlib.suppress(Exception):
                    conn.transport.close()
                raise
            finally:
                timer.cancel()
            conn.reply = None
            if not conn.closed:
                conn.idle_since = time.monotonic()
                self._idle.setdefault(address, []).append(conn)
            return answer
        raise UpstreamFailed("the instance closed the connection before answering")
