"""The data plane's own HTTP/1.1 server (libs/pier/http/server.py: the gateway's and the harness's
request parsing) fed any bytes, split anywhere, through its protocol callbacks on a transport that
records what it writes:

- valid requests, pipelined and cut into arbitrary pieces, reach the handler exactly as sent
  (method, path, query, headers, body, Content-Length or chunked), in order, and are answered in order;
- anything else (corrupted requests, random bytes) is answered with one of the statuses the server
  documents for what it refuses (400, 413, 414, 431) or not at all, never raises out of the
  parser, and leaves no handler running. Each example is bounded by the profile's deadline.
"""

from __future__ import annotations

import asyncio
import itertools
import re
from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pier.http.limits import Limits
from pier.http.server import Request, Response, Server, _Connection

LIMITS = Limits(max_request_line=512, max_header_bytes=2048, max_headers=16, max_pipeline=8)
MAX_BODY = 1024


class _Transport:
    def __init__(self) -> None:
        self.out = bytearray()
        self.closed = self.paused = False

    def write(self, data: bytes) -> None:
        assert not self.closed, "written after close"
        self.out += data

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return default

    def pause_reading(self) -> None:
        self.paused = True

    def resume_reading(self) -> None:
        self.paused = False

    def can_write_eof(self) -> bool:
        return True

    def write_eof(self) -> None:
        pass

    def is_closing(self) -> bool:
        return self.closed

    def close(self) -> None:
        self.closed = True

    abort = close


class _Harness:
    """A loop, a server on it, and a handler that keeps every request and answers its number."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.errors: list[Any] = []
        self.loop.set_exception_handler(lambda _, context: self.errors.append(context))
        self.seen: list[Request] = []
        self.server: Server = self.loop.run_until_complete(self._server())

    async def _server(self) -> Server:
        return Server(self.handle, self.refused, max_body=MAX_BODY, limits=LIMITS)

    async def handle(self, request: Request) -> Response:
        self.seen.append(request)
        n = len(self.seen)
        await asyncio.sleep(0)  # answers come back out of turn; they must go out in order
        return Response(200, b"ok", headers={"X-N": str(n)})

    def refused(self, request: Request | None, status: int) -> Response:
        return Response(status, b"refused")

    def feed(self, pieces: list[bytes]) -> bytes:
        """Feed the pieces as reads of one connection; what the server wrote back."""
        self.seen.clear()
        transport = _Transport()
        conn = _Connection(self.server)
        conn.connection_made(transport)  # type: ignore[arg-type]
        for piece in pieces:
            conn.data_received(piece)
            self.loop.run_until_complete(asyncio.sleep(0))
        self.loop.run_until_complete(self._settle())
        conn.connection_lost(None)
        assert not self.errors, self.errors
        return bytes(transport.out)

    async def _settle(self) -> None:
        while self.server.tasks:
            await asyncio.wait(list(self.server.tasks))
        await asyncio.sleep(0)

    def close(self) -> None:
        self.loop.run_until_complete(self.server.close(grace=0.1))
        self.loop.close()


@pytest.fixture(scope="module")
def server() -> Iterator[_Harness]:
    harness = _Harness()
    yield harness
    harness.close()


token = st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789-", min_size=1, max_size=10)
_FRAMING = {"content-length", "transfer-encoding", "connection", "expect", "upgrade", "host"}


@st.composite
def requests(draw: st.DrawFn) -> tuple[dict[str, Any], bytes]:
    method = draw(st.sampled_from(["GET", "POST", "PUT", "DELETE", "PATCH", "OPTIONS"]))
    path = "/" + draw(st.text(alphabet="abz09-_.~/%2F", max_size=20))
    query = draw(st.text(alphabet="ab09=&%+-_", max_size=15))
    names = draw(st.lists(token.filter(lambda n: n not in _FRAMING), unique=True, max_size=5))
    headers = {n: draw(st.text(alphabet="abc XYZ019;,=/\"'-", max_size=20).map(str.strip)) for n in names}
    body = draw(st.binary(max_size=200)) if method != "GET" else b""
    chunked = bool(body) and draw(st.booleans())
    target = path + (f"?{query}" if query else "")
    head = f"{method} {target} HTTP/1.1\r\nHost: pier\r\n" + "".join(f"{n}: {v}\r\n" for n, v in headers.items())
    if chunked:
        head += "Transfer-Encoding: chunked\r\n\r\n"
        cuts = sorted(set(draw(st.lists(st.integers(1, len(body)), max_size=4))) | {len(body)})
        wire, at = b"", 0
        for cut in cuts:
            wire += b"%x\r\n" % (cut - at) + body[at:cut] + b"\r\n"
            at = cut
        wire += b"0\r\n\r\n"
    else:
        head += f"Content-Length: {len(body)}\r\n\r\n" if body or method != "GET" else "\r\n"
        wire = body
    sent = {"method": method, "raw_path": path, "query": query, "headers": headers, "body": body}
    return sent, head.encode() + wire


@st.composite
def cut_up(draw: st.DrawFn, data: bytes) -> list[bytes]:
    """`data` as the reads a socket might deliver it in."""
    cuts = sorted(set(draw(st.lists(st.integers(0, len(data)), max_size=8))))
    bounds = [0, *cuts, len(data)]
    return [data[a:b] for a, b in itertools.pairwise(bounds) if b > a]


@given(data=st.data())
def test_valid_requests_reach_the_handler_as_sent_and_are_answered_in_order(
    server: _Harness, data: st.DataObject
) -> None:
    sent = data.draw(st.lists(requests(), min_size=1, max_size=LIMITS.max_pipeline))
    stream = b"".join(wire for _, wire in sent)
    out = server.feed(data.draw(cut_up(stream)))
    assert len(server.seen) == len(sent)
    for (want, _), got in zip(sent, server.seen, strict=True):
        assert (got.method, got.raw_path, got.query, got.body) == (
            want["method"],
            want["raw_path"],
            want["query"],
            want["body"],
        )
        assert want["headers"].items() <= got.headers.items()
    assert re.findall(rb"HTTP/1.1 (\d{3}) ", out) == [b"200"] * len(sent)
    assert [int(n) for n in re.findall(rb"X-N: (\d+)", out)] == list(range(1, len(sent) + 1))


@st.composite
def garbage(draw: st.DrawFn) -> bytes:
    """Valid requests with bytes changed, cut or inserted; or any bytes at all."""
    stream = bytearray(b"".join(wire for _, wire in draw(st.lists(requests(), min_size=1, max_size=3))))
    for _ in range(draw(st.integers(1, 4))):
        at = draw(st.integers(0, len(stream)))
        how = draw(st.sampled_from(["set", "insert", "cut"]))
        if how == "set" and at < len(stream):
            stream[at] = draw(st.integers(0, 255))
        elif how == "insert":
            stream[at:at] = draw(st.binary(min_size=1, max_size=8) | st.sampled_from([b"\r\n", b"\n", b": ", b" "]))
        else:
            del stream[at : at + draw(st.integers(1, 8))]
    return bytes(stream)


REFUSALS = {b"400", b"413", b"414", b"431"}


@given(data=st.data())
def test_any_bytes_are_served_or_refused_with_a_documented_status(server: _Harness, data: st.DataObject) -> None:
    stream = data.draw(garbage() | st.binary(max_size=300))
    _refused_or_served(server, data.draw(cut_up(stream)))


@pytest.mark.parametrize(
    ("case", "status"),
    [
        (b"GET / HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nab", b"400"),  # smuggling
        (b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n0\r\n\r\n", b"400"),
        (b"GET /" + b"a" * 600 + b" HTTP/1.1\r\n\r\n", b"414"),
        (b"GET / HTTP/1.1\r\n" + b"".join(b"h%d: v\r\n" % n for n in range(40)) + b"\r\n", b"431"),
        (b"POST / HTTP/1.1\r\nContent-Length: 5000\r\n\r\n" + b"x" * 5000, b"413"),
        (b"\x00\xff\r\n\r\n", b"400"),
    ],
)
def test_hostile_requests_get_their_documented_refusal(server: _Harness, case: bytes, status: bytes) -> None:
    for pieces in ([case], [case[n : n + 1] for n in range(len(case))]):
        out = server.feed(pieces)
        assert out.startswith(b"HTTP/1.1 " + status), out[:80]
        assert not server.seen


def _refused_or_served(server: _Harness, pieces: list[bytes]) -> None:
    out = server.feed(pieces)
    statuses = re.findall(rb"HTTP/1.1 (\d{3}) ", out)
    assert set(statuses) <= REFUSALS | {b"200", b"100"}, out
    assert len([s for s in statuses if s in REFUSALS]) <= 1, "a refusal ends the connection"
    assert statuses.count(b"200") == len(server.seen)
    assert not server.server.tasks
