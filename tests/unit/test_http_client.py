"""The gateway's client to instances against fake instances on 127.0.0.1 that answer raw bytes:
what a misbehaving model server may send, and what the client must refuse to send."""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

import pytest

from pier.http.client import InvalidHeader, Proxy, Reply, Unreachable, UpstreamFailed
from pier.http.limits import Limits


class Instance:
    """A fake instance: reads each request head (and its Content-Length body) and answers with
    `answer(n)`, written `split` bytes at a time; keeps what it received."""

    def __init__(self, answer: Callable[[int], bytes], split: int = 0) -> None:
        self.answer, self.split = answer, split
        self.received: list[bytes] = []
        self.address = ""

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = next(
                    (
                        int(line.split(b":")[1])
                        for line in head.split(b"\r\n")
                        if line.lower().startswith(b"content-length")
                    ),
                    0,
                )
                self.received.append(head + await reader.readexactly(length))
                data = self.answer(len(self.received))
                step = self.split or len(data)
                for at in range(0, len(data), step):
                    writer.write(data[at : at + step])
                    await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()


@asynccontextmanager
async def instance(answer: bytes | Callable[[int], bytes], split: int = 0) -> AsyncIterator[Instance]:
    fake = Instance(answer if callable(answer) else (lambda _: answer), split)
    server = await asyncio.start_server(fake.serve, "127.0.0.1", 0)
    fake.address = f"127.0.0.1:{server.sockets[0].getsockname()[1]}"
    try:
        yield fake
    finally:
        server.close()


async def call(address: str, headers: dict[str, str] | None = None, limits: Limits | None = None) -> Reply:
    async with Proxy(limits) as proxy:
        return await proxy.forward("POST", address, "/model", "", b"{}", headers or {}, timeout=10)


def ok(body: bytes = b"ok", extra: bytes = b"") -> bytes:
    return (
        b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
        + extra
        + b"Content-Length: %d\r\n\r\n%s"
        % (
            len(body),
            body,
        )
    )


async def test_a_plain_answer_is_returned() -> None:
    async with instance(ok(b'{"result":1}')) as fake:
        assert await call(fake.address) == Reply(200, b'{"result":1}', "application/json")


async def test_interim_1xx_answers_are_skipped() -> None:
    answer = b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nLink: </a>; rel=preload\r\n\r\n" + ok()
    async with instance(answer) as fake:
        assert await call(fake.address) == Reply(200, b"ok", "application/json")


async def test_a_chunked_body_arriving_a_byte_at_a_time_is_read_whole() -> None:
    chunks = b"".join(b"%x;ext=1\r\n%s\r\n" % (len(part), part) for part in (b"ab", b"c" * 300, b"d"))
    answer = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n" + chunks + b"0\r\nX-Trailer: t\r\n\r\n"
    async with instance(lambda _: answer, split=1) as fake:
        assert (await call(fake.address)).body == b"ab" + b"c" * 300 + b"d"


async def test_answers_on_a_kept_connection_each_reach_their_own_call() -> None:
    async with instance(lambda n: ok(b"%d" % n)) as fake, Proxy() as proxy:
        bodies = [(await proxy.forward("GET", fake.address, "/x", "", b"", {}, timeout=10)).body for _ in range(5)]
        assert bodies == [b"1", b"2", b"3", b"4", b"5"]


OK = b"HTTP/1.1 200 OK\r\n"
BROKEN = {
    "a bare LF between headers": OK + b"Content-Type: text/html\nSet-Cookie: s=1\r\nContent-Length: 0\r\n\r\n",
    "a bare CR in a header": OK + b"Content-Type: text/html\rSet-Cookie: s=1\r\nContent-Length: 0\r\n\r\n",
    "a NUL in a header": b"HTTP/1.1 200 OK\r\nX-A: a\x00b\r\nContent-Length: 2\r\n\r\nok",
    "a folded header": b"HTTP/1.1 200 OK\r\nX-A: a\r\n b\r\nContent-Length: 2\r\n\r\nok",
    "a header without a colon": b"HTTP/1.1 200 OK\r\nnonsense\r\nContent-Length: 2\r\n\r\nok",
    "status 99999": b"HTTP/1.1 99999 Big\r\nContent-Length: 2\r\n\r\nok",
    "status 99": b"HTTP/1.1 99 Small\r\nContent-Length: 2\r\n\r\nok",
    "status 600": b"HTTP/1.1 600 Odd\r\nContent-Length: 2\r\n\r\nok",
    "a non-numeric status": b"HTTP/1.1 abc OK\r\nContent-Length: 2\r\n\r\nok",
    "not HTTP": b"SMTP/1.0 200 OK\r\nContent-Length: 2\r\n\r\nok",
    "Content-Length: -10": b"HTTP/1.1 200 OK\r\nContent-Length: -10\r\n\r\nok",
    "Content-Length: +2": b"HTTP/1.1 200 OK\r\nContent-Length: +2\r\n\r\nok",
    "Content-Length: two": b"HTTP/1.1 200 OK\r\nContent-Length: two\r\n\r\nok",
    "two Content-Lengths": b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 2\r\n\r\nok",
    "Content-Length and chunked": OK + b"Content-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
    "an unknown Transfer-Encoding": b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\nok",
    "no framing at all": b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\r\nok",
    "a bad chunk size": b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nok\r\n0\r\n\r\n",
    "a chunk without its CRLF": b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nokXX0\r\n\r\n",
    "a head over the limit": b"HTTP/1.1 200 OK\r\nX-Big: " + b"a" * 70_000 + b"\r\nContent-Length: 2\r\n\r\nok",
    "a head that never ends": b"HTTP/1.1 200 OK\r\nX-Big: " + b"a" * 200_000,
}


@pytest.mark.parametrize("answer", BROKEN.values(), ids=BROKEN.keys())
async def test_an_answer_that_is_not_valid_http_fails_the_call(answer: bytes) -> None:
    async with instance(answer) as fake:
        with pytest.raises(UpstreamFailed, match=r"not valid HTTP/1\.1"):
            await asyncio.wait_for(call(fake.address), 10)


async def test_a_broken_answer_closes_the_connection_and_the_next_call_opens_a_fresh_one() -> None:
    async with instance(lambda n: b"HTTP/1.1 abc\r\n\r\n" if n == 1 else ok()) as fake, Proxy() as proxy:
        with pytest.raises(UpstreamFailed):
            await proxy.forward("GET", fake.address, "/x", "", b"", {}, timeout=10)
        assert (await proxy.forward("GET", fake.address, "/x", "", b"", {}, timeout=10)).body == b"ok"


@pytest.mark.parametrize(
    "headers",
    [{"X-Request-Id": "a\r\nX-Admin: 1"}, {"X-Request-Id": "a\nb"}, {"X-A\r\nB": "v"}, {"X-Request-Id": "a\x00"}],
)
async def test_a_header_with_cr_lf_or_nul_is_refused_and_nothing_is_sent(headers: dict[str, str]) -> None:
    async with instance(ok()) as fake:
        with pytest.raises(InvalidHeader):
            await call(fake.address, headers)
        assert fake.received == []


async def test_a_connect_that_hangs_is_unreachable_after_the_connect_timeout() -> None:
    # A listener that never accepts, its backlog full: further connects are left waiting by the kernel.
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(0)
    address = f"127.0.0.1:{listener.getsockname()[1]}"
    fillers: list[socket.socket] = []
    try:
        for _ in range(4):
            filler = socket.socket()
            filler.setblocking(False)
            with contextlib.suppress(BlockingIOError):
                filler.connect(listener.getsockname())
            fillers.append(filler)
        with pytest.raises(Unreachable, match="no connection within"):
            await asyncio.wait_for(call(address, limits=Limits(connect_timeout=0.5)), 10)
    finally:
        for filler in fillers:
            filler.close()
        listener.close()
