"""The lean HTTP server's limits and edge cases, over real sockets on 127.0.0.1.

Raw asyncio streams play the misbehaving clients: a header that never ends, headers trickled a
byte at a time, a client that pipelines and never reads, requests llhttp must refuse.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import pytest

from pier import config
from pier.http.limits import Limits, from_env, from_settings
from pier.http.server import Request, Response, Server
from tests.support import until

Answer = tuple[int, dict[str, str], bytes]


class App:
    """The handler under test: `/ping`, `/echo` (path and body back), `/slow` (waits for `go`),
    `/big` (100 KB), `/forever` (never answers), `/inject` (a header with CRLF in it)."""

    def __init__(self) -> None:
        self.go = asyncio.Event()
        self.handled = 0
        self.running = 0
        self.most_running = 0
        self.cancelled = 0

    async def handle(self, request: Request) -> Response:
        self.handled += 1
        self.running += 1
        self.most_running = max(self.most_running, self.running)
        try:
            if request.path == "/slow":
                await self.go.wait()
            elif request.path == "/forever":
                await asyncio.Event().wait()
            elif request.path == "/big":
                return Response(200, b"x" * 100_000, "text/plain")
            elif request.path == "/inject":
                return Response(200, b"{}", headers={"X-Id": "a\r\nSet-Cookie: session=stolen"})
            return Response(200, request.path.encode() + b"|" + request.body, "text/plain")
        except asyncio.CancelledError:
            self.cancelled += 1
            raise
        finally:
            self.running -= 1

    def errors(self, request: Request | None, status: int) -> Response:
        return Response(status, b'{"refused":%d}' % status)


@asynccontextmanager
async def serving(**limits: float) -> AsyncIterator[tuple[App, Server]]:
    app = App()
    server = Server(app.handle, app.errors, max_body=1024 * 1024, limits=Limits(**limits))  # type: ignore[arg-type]
    await server.listen_tcp("127.0.0.1", 0)
    try:
        yield app, server
    finally:
        app.go.set()
        await server.close(grace=0.5)


class Client:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer

    async def send(self, data: bytes) -> None:
        self.writer.write(data)
        await self.writer.drain()

    async def answer(self) -> Answer:
        async with asyncio.timeout(10):
            head = (await self.reader.readuntil(b"\r\n\r\n")).decode("latin-1").split("\r\n")
            headers = dict(line.split(": ", 1) for line in head[1:] if line)
            status = int(head[0].split()[1])
            length = 0 if status < 200 else int(headers["Content-Length"])
            return status, headers, await self.reader.readexactly(length)

    async def closed(self) -> bool:
        """True once the server closed the connection (reads what is left until EOF)."""
        async with asyncio.timeout(10):
            try:
                while await self.reader.read(65536):
                    pass
            except ConnectionResetError:
                pass
        return True

    def close(self) -> None:
        self.writer.close()


@asynccontextmanager
async def connect(server: Server) -> AsyncIterator[Client]:
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    client = Client(reader, writer)
    try:
        yield client
    finally:
        client.close()


def get(path: str, extra: str = "", version: str = "1.1") -> bytes:
    return f"GET {path} HTTP/{version}\r\nHost: x\r\n{extra}\r\n".encode()


async def test_a_request_line_over_the_limit_is_414_and_the_connection_closes() -> None:
    async with serving() as (_, server), connect(server) as client:
        await client.send(get("/" + "a" * 9000))
        status, headers, _ = await client.answer()
        assert (status, headers["Connection"]) == (414, "close")
        assert await client.closed()


async def test_headers_over_64_kib_are_431_and_closed_while_the_client_is_still_sending() -> None:
    async with serving() as (_, server), connect(server) as client:
        # A header that never ends: the server answers once 64 KiB are in, not when it ends.
        answer = asyncio.create_task(client.answer())
        await client.send(b"GET /ping HTTP/1.1\r\nHost: x\r\nX-Big: ")
        sent = 0
        with contextlib.suppress(ConnectionError):
            while not answer.done() and sent < 128 * 1024 * 1024:
                await client.send(b"a" * 65536)
                sent += 65536
        status, headers, _ = await answer
        assert (status, headers["Connection"]) == (431, "close")
        assert sent < 128 * 1024 * 1024  # refused while the header was still coming
        assert await client.closed()


async def test_headers_just_under_the_limits_are_served() -> None:
    async with serving() as (_, server), connect(server) as client:
        await client.send(get("/ping", "".join(f"X-H{i}: {'v' * 500}\r\n" for i in range(99))))
        assert (await client.answer())[0] == 200


async def test_more_than_100_headers_is_431() -> None:
    async with serving() as (_, server), connect(server) as client:
        await client.send(get("/ping", "".join(f"X-H{i}: v\r\n" for i in range(101))))
        assert (await client.answer())[0] == 431
        assert await client.closed()


async def test_ping_is_answered_while_four_clients_stream_endless_headers() -> None:
    async def stream_headers(server: Server) -> int:
        async with connect(server) as client:
            answer = asyncio.create_task(client.answer())
            await client.send(b"GET / HTTP/1.1\r\nX-Endless: ")
            with contextlib.suppress(ConnectionError):
                for _ in range(2000):
                    if answer.done():
                        break
                    await client.send(b"a" * 65536)
            return (await answer)[0]

    async with serving() as (_, server):
        streams = [asyncio.create_task(stream_headers(server)) for _ in range(4)]
        async with connect(server) as client:
            for _ in range(5):
                await client.send(get("/ping"))
                assert (await client.answer())[0] == 200
        assert await asyncio.gather(*streams) == [431] * 4


async def test_headers_trickled_past_the_header_deadline_are_408_and_closed() -> None:
    async with serving(header_timeout=0.5, keepalive_timeout=60) as (_, server), connect(server) as client:
        await client.send(b"GET /ping HTTP/1.1\r\nX-Slow: ")

        async def trickle() -> None:
            with pytest.raises(ConnectionError):
                for _ in range(600):  # a byte every 50 ms for up to 30 s: far past the deadline
                    await client.send(b"a")
                    await asyncio.sleep(0.05)

        trickler = asyncio.create_task(trickle())
        try:
            status, headers, _ = await client.answer()
            assert (status, headers["Connection"]) == (408, "close")
            assert await client.closed()
        finally:
            trickler.cancel()


async def test_a_body_that_stops_arriving_is_408_and_closed() -> None:
    async with serving(body_timeout=0.5, keepalive_timeout=60) as (_, server), connect(server) as client:
        await client.send(b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n" + b"a" * 10)
        assert (await client.answer())[0] == 408
        assert await client.closed()


async def test_an_upload_that_keeps_moving_is_served_past_the_keep_alive_and_header_timeouts() -> None:
    limits = {"keepalive_timeout": 0.3, "header_timeout": 0.3, "body_timeout": 5.0}
    async with serving(**limits) as (_, server), connect(server) as client:
        await client.send(b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 20\r\n\r\n")
        for _ in range(20):  # a byte every 50 ms: a second in all, past both shorter timeouts
            await client.send(b"b")
            await asyncio.sleep(0.05)
        status, _, body = await client.answer()
        assert (status, body) == (200, b"/echo|" + b"b" * 20)


async def test_an_idle_keep_alive_connection_is_closed_after_its_own_timeout() -> None:
    async with serving(keepalive_timeout=0.3, header_timeout=60) as (_, server), connect(server) as client:
        await client.send(get("/ping"))
        assert (await client.answer())[0] == 200
        assert await client.closed()


async def test_past_the_connection_cap_a_client_gets_503_and_a_freed_place_serves_again() -> None:
    async with serving(max_connections=2) as (_, server):
        async with connect(server) as first, connect(server) as second:
            for client in (first, second):
                await client.send(get("/ping"))
                assert (await client.answer())[0] == 200
            async with connect(server) as third:
                status, headers, _ = await third.answer()
                assert (status, headers["Connection"]) == (503, "close")
                assert await third.closed()

        async def served() -> bool:
            async with connect(server) as client:
                try:
                    await client.send(get("/ping"))
                    return (await client.answer())[0] == 200
                except (ConnectionError, asyncio.IncompleteReadError):
                    return False  # the two above are not closed on the server's side yet

        assert await until(served)


async def test_pipelined_requests_past_the_cap_wait_and_are_all_answered_in_order() -> None:
    async with serving(max_pipeline=4) as (app, server), connect(server) as client:
        await client.send(b"".join(get(f"/slow?{i}") for i in range(50)))
        await until(lambda: app.running == 4)
        app.go.set()
        answers = [await client.answer() for _ in range(50)]
        assert {status for status, _, _ in answers} == {200}
        assert app.handled == 50 and app.most_running == 4


async def test_a_client_that_never_reads_makes_the_server_stop_reading_it() -> None:
    requests = 1500
    async with serving() as (app, server), connect(server) as client:
        client.writer.write(get("/big") * requests)  # 100 KB answers, 150 MB in all, none read yet
        # Wait until the server stops handling more: its buffers are full and it reads no further.
        seen = -1
        steady = 0
        async with asyncio.timeout(30):
            while steady < 10:
                await asyncio.sleep(0.1)
                steady = steady + 1 if app.handled == seen else 0
                seen = app.handled
        assert 0 < seen < requests // 3  # bounded by socket buffers and the pipeline, not by the client
        answers = [await client.answer() for _ in range(requests)]  # reading again resumes it
        assert all(status == 200 and len(body) == 100_000 for status, _, body in answers)
        assert app.handled == requests


async def test_100_continue_waits_for_the_answer_ahead_of_it() -> None:
    async with serving() as (app, server), connect(server) as client:
        await client.send(
            get("/slow") + b"POST /echo HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\nContent-Length: 5\r\n\r\n"
        )
        await until(lambda: app.running == 1)
        app.go.set()
        assert (await client.answer())[0] == 200  # the first answer comes first, whole
        assert (await client.answer())[0] == 100  # then the go-ahead for the second body
        await client.send(b"hello")
        status, _, body = await client.answer()
        assert (status, body) == (200, b"/echo|hello")


async def test_100_continue_is_never_sent_to_an_http_1_0_client() -> None:
    async with serving() as (_, server), connect(server) as client:
        await client.send(b"POST /echo HTTP/1.0\r\nExpect: 100-continue\r\nContent-Length: 5\r\n\r\nhello")
        status, _, body = await client.answer()
        assert (status, body) == (200, b"/echo|hello")


async def test_a_request_pipelined_after_connection_close_is_ignored_and_the_answer_still_comes() -> None:
    async with serving() as (app, server), connect(server) as client:
        await client.send(get("/echo", "Connection: close\r\n") + get("/ping"))
        status, headers, body = await client.answer()
        assert (status, headers["Connection"], body) == (200, "close", b"/echo|")
        assert await client.closed()
        assert app.handled == 1


async def test_percent_decoding_never_creates_a_path_separator() -> None:
    async with serving() as (_, server), connect(server) as client:
        await client.send(get("/models/a%2Flatest%2Fmodel") + get("/a%20b/c%2fd"))
        assert (await client.answer())[2] == b"/models/a%2Flatest%2Fmodel|"
        assert (await client.answer())[2] == b"/a b/c%2Fd|"


async def test_a_header_with_crlf_in_an_answer_is_not_written_and_the_answer_is_500() -> None:
    async with serving() as (_, server), connect(server) as client:
        await client.send(get("/inject"))
        status, headers, _ = await client.answer()
        assert status == 500 and "Set-Cookie" not in headers and "X-Id" not in headers


async def test_close_waits_for_handlers_within_the_grace_and_then_cancels_them() -> None:
    async with serving() as (app, server), connect(server) as client:
        await client.send(get("/forever"))
        await until(lambda: app.running == 1)
        await server.close(grace=0.2)
        assert app.cancelled == 1 and app.running == 0


SMUGGLING = {
    "Content-Length then Transfer-Encoding": b"Content-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
    "Transfer-Encoding then Content-Length": b"Transfer-Encoding: chunked\r\nContent-Length: 4\r\n\r\n0\r\n\r\n",
    "two Content-Lengths": b"Content-Length: 4\r\nContent-Length: 5\r\n\r\nabcde",
    "the same Content-Length twice": b"Content-Length: 4\r\nContent-Length: 4\r\n\r\nabcd",
    "Content-Length: +4": b"Content-Length: +4\r\n\r\nabcd",
    "Content-Length: -4": b"Content-Length: -4\r\n\r\nabcd",
    "Transfer-Encoding: xchunked": b"Transfer-Encoding: xchunked\r\n\r\n0\r\n\r\n",
    "Transfer-Encoding: chunked, identity": b"Transfer-Encoding: chunked, identity\r\n\r\n0\r\n\r\n",
    "two Transfer-Encodings": b"Transfer-Encoding: chunked\r\nTransfer-Encoding: identity\r\n\r\n0\r\n\r\n",
    "a space before the colon": b"Transfer-Encoding : chunked\r\n\r\n0\r\n\r\n",
    "obs-fold": b"X-A: a\r\n b\r\nContent-Length: 0\r\n\r\n",
    "a bare LF": b"X-A: a\nContent-Length: 0\r\n\r\n",
    "a bare CR": b"X-A: a\rContent-Length: 0\r\n\r\n",
    "a NUL": b"X-A: a\x00b\r\nContent-Length: 0\r\n\r\n",
    "chunk size zz": b"Transfer-Encoding: chunked\r\n\r\nzz\r\nab\r\n0\r\n\r\n",
    "chunk size 0x2": b"Transfer-Encoding: chunked\r\n\r\n0x2\r\nab\r\n0\r\n\r\n",
    "chunk size -2": b"Transfer-Encoding: chunked\r\n\r\n-2\r\nab\r\n0\r\n\r\n",
    "chunk size overflow": b"Transfer-Encoding: chunked\r\n\r\nffffffffffffffffff\r\nab\r\n0\r\n\r\n",
    "chunk without its CRLF": b"Transfer-Encoding: chunked\r\n\r\n2\r\nabXX0\r\n\r\n",
}


@pytest.mark.parametrize("rest", SMUGGLING.values(), ids=SMUGGLING.keys())
async def test_ambiguous_framing_is_400_and_closed_and_no_request_reaches_the_handler(rest: bytes) -> None:
    async with serving() as (app, server), connect(server) as client:
        await client.send(b"POST /echo HTTP/1.1\r\nHost: x\r\n" + rest + get("/ping"))
        status, headers, _ = await client.answer()
        assert (status, headers["Connection"]) == (400, "close")
        assert await client.closed()
        assert app.handled == 0


async def test_a_refusal_comes_after_the_answers_to_the_requests_before_it() -> None:
    async with serving() as (_, server), connect(server) as client:
        await client.send(get("/ping") + b"GET / HTTP/1.1\r\nX-A: a\nX-B: b\r\n\r\n")
        assert [(await client.answer())[0] for _ in range(2)] == [200, 400]
        assert await client.closed()


def test_the_gateway_settings_and_the_harness_variables_give_the_same_limits() -> None:
    assert from_settings(config.load({})) == from_env({}) == Limits()
    env = {"PIER_HTTP_MAX_HEADERS": "5", "PIER_HTTP_HEADER_TIMEOUT": "2.5"}
    assert from_settings(config.load(env)) == from_env(env) == Limits(max_headers=5, header_timeout=2.5)
    with pytest.raises(ValueError, match="max_headers"):
        from_env({"PIER_HTTP_MAX_HEADERS": "0"})
