"""The instance's HTTP server: `/model` (Domino formats), user routes, `/ping` and `/health`.

Configured by PIER_* variables the runtime driver sets. Sync functions run on a worker (a thread
for one worker, processes for more) so the event loop keeps answering health checks; async
functions are awaited on the loop. Served by the lean server in `pier.http.server`, with the limits
of `pier.http.limits` (defaults, or the optional PIER_HTTP_* variables).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import concurrent.futures.process
import contextlib
import hmac
import inspect
import multiprocessing
import os
import queue
import signal
import socket
import sys
import threading
import time
import traceback
import uuid
from collections.abc import Awaitable, Callable, Coroutine
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl

import msgspec
import uvloop

from pier.harness import output
from pier.harness.loader import Functions, LoadError, argument_problems
from pier.harness.requestlog import RequestLog
from pier.http import SECRET_HEADER
from pier.http.limits import Limits, from_env
from pier.http.server import Request, Response, Server
from pier.spec import Entrypoint, Route, SpecError, coerce_query, match_template

_functions: Functions | None = None  # set before workers fork, so they inherit the loaded modules
_SECRET_KEY = SECRET_HEADER.lower()  # as the lean server hands header names over


class Failure(msgspec.Struct, frozen=True):
    """A call that did not produce a JSON result; crosses back from a worker process intact."""

    kind: str
    message: str
    traceback: str = ""


def _enc_hook(value: Any) -> Any:
    # Arrays and tensors (numpy, torch, ...) are what models return most; `tolist()` makes them JSON.
    tolist = getattr(value, "tolist", None)
    if callable(tolist):
        return tolist()
    kind = type(value)
    name = kind.__qualname__ if kind.__module__ == "builtins" else f"{kind.__module__}.{kind.__qualname__}"
    raise TypeError(f"the function returned a {name}, which is not JSON-serialisable")


def encode_result(result: Any) -> bytes | Failure:
    """The result as JSON, or why it cannot be: done where the call ran, so nothing else is copied."""
    try:
        return msgspec.json.encode(result, enc_hook=_enc_hook)
    except (TypeError, ValueError, OverflowError) as exc:
        message = str(exc)
        if "JSON-serialisable" not in message:  # msgspec's own words for a type it refuses
            message = f"the function returned a value that is not JSON-serialisable: {message}"
        return Failure("ResultNotSerializable", message)


def run_call(func: Callable[..., Any], args: list[Any], kwargs: dict[str, Any]) -> bytes | Failure:
    """Call a sync function and encode its result; an exception becomes a Failure with its traceback."""
    try:
        result = func(*args, **kwargs)
    except BaseException as exc:  # SystemExit or KeyboardInterrupt from user code must not end a worker
        return Failure(type(exc).__name__, str(exc) or type(exc).__name__, traceback.format_exc())
    return encode_result(result)


def _call_in_worker(file: str, name: str, args: list[Any], kwargs: dict[str, Any]) -> bytes | Failure:
    assert _functions is not None
    return run_call(_functions.get(file, name), args, kwargs)


def _settle(outcomes: list[tuple[asyncio.Future[Any], Any]]) -> None:
    for future, outcome in outcomes:
        if not future.done():  # past the request timeout, or the caller left: the outcome goes nowhere
            future.set_result(outcome)


def _expire(future: asyncio.Future[Any]) -> None:
    if not future.done():
        future.set_exception(TimeoutError())


# How long a worker may hold finished outcomes to hand them back together (seconds).
_BATCH = 0.0005


class _Worker:
    """One thread running sync calls in arrival order.

    Measured: `loop.run_in_executor` on a one-thread ThreadPoolExecutor (a concurrent future, its
    chaining to an asyncio future, the executor's lock and bookkeeping) cost tens of microseconds
    per call. Here a call is one queue put, and outcomes go back to the loop with one
    `call_soon_threadsafe`: for the calls already waiting when one ends (the gateway keeps a few
    queued at a fast instance), several together, so the loop and this thread trade the GIL once
    per batch, not once per call. A batch is held at most `_BATCH` seconds."""

    def __init__(self, name: str) -> None:
        self._calls: queue.SimpleQueue[tuple[asyncio.AbstractEventLoop, asyncio.Future[Any], Any, tuple[Any, ...]]]
        self._calls = queue.SimpleQueue()
        threading.Thread(target=self._run, name=name, daemon=True).start()

    def submit(
        self, loop: asyncio.AbstractEventLoop, func: Callable[..., bytes | Failure], *args: Any
    ) -> asyncio.Future[bytes | Failure]:
        future: asyncio.Future[bytes | Failure] = loop.create_future()
        self._calls.put((loop, future, func, args))
        return future

    def _run(self) -> None:
        calls = self._calls
        clock = time.perf_counter
        while True:
            item = calls.get()
            outcomes: list[tuple[asyncio.Future[Any], Any]] = []
            since = clock()
            while True:
                loop, future, func, args = item
                if not future.done():  # skip calls whose caller gave up while they waited
                    outcomes.append((future, func(*args)))  # run_call: exceptions come back as a Failure
                if clock() - since > _BATCH:
                    break
                try:
                    item = calls.get_nowait()  # one harness, one loop: every call's is the same
                except queue.Empty:
                    break
            with contextlib.suppress(RuntimeError):  # the loop closed (the instance is stopping)
                loop.call_soon_threadsafe(_settle, outcomes)


class CallError(Exception):
    def __init__(self, status: int, kind: str, message: str, errors: list[tuple[str, str]] | None = None) -> None:
        super().__init__(message)
        self.status, self.kind, self.message = status, kind, message
        self.errors = errors or []

    def body(self, request_id: str) -> bytes:
        detail: dict[str, Any] = {"type": self.kind, "message": self.message}
        if self.errors:
            detail["errors"] = [{"field": field, "problem": problem} for field, problem in self.errors]
        return msgspec.json.encode({"error": detail, "request_id": request_id})


# What the HTTP server refuses by itself, past one of its limits (pier.http.limits).
_LIMIT_ERRORS = {
    408: ("RequestTimeout", "the request's headers or body stopped arriving"),
    414: ("URITooLong", "the request line is over the server's limit"),
    431: ("HeadersTooLarge", "the request's headers are over the server's limit (size or count)"),
    503: ("Unavailable", "the instance is stopping or at its connection limit; retry"),
}


class Harness:
    def __init__(
        self,
        functions: Functions,
        entrypoint: Entrypoint,
        workers: int,
        request_timeout: float,
        version_id: str,
        version_number: int,
        secret: str = "",
    ) -> None:
        self.functions = functions
        # When set, a call without it is refused: only the gateway and the monitor know it.
        self.secret = secret.encode()
        self.entrypoint = entrypoint
        self.timeout = request_timeout
        self.release = {"model_version": version_id, "model_version_number": version_number}
        # Set when the instance can no longer serve (a worker process died): /health says so,
        # and the monitor replaces the instance.
        self.broken = ""
        # One worker: a thread is enough to keep the loop free, with no copying of arguments.
        # Several: processes, so CPU-bound Python code really runs in parallel.
        self.pool: concurrent.futures.Executor | None = None
        self.worker: _Worker | None = None
        if workers <= 1:
            self.worker = _Worker("model")
        else:
            self.pool = concurrent.futures.ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("fork"))
            self.pool.submit(int).result()  # fork every worker now, before the event loop starts
        # The health function gets a thread of its own: a probe must not queue behind slow calls.
        self.health_pool = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="health")
        self.routes: dict[str, dict[str, Callable[[Request], Coroutine[Any, Any, Response]]]] = {
            "/ping": {"GET": self.ping},
            "/health": {"GET": self.health},
            "/metrics": {"GET": self.metrics},
        }
        self.model_function = entrypoint.model_function()
        if self.model_function:  # a routes-only entrypoint has no /model endpoint
            self.routes["/model"] = {"POST": self.model}
        for route in entrypoint.routes:
            self.routes.setdefault(route.path, {})[route.verb] = self.route_handler(route)
        self.max_body = 0  # set by `serve_harness`
        self.loop: asyncio.AbstractEventLoop | None = None  # set by `serve_harness`

    async def invoke(self, request_id: str, file: str, name: str, args: list[Any], kwargs: dict[str, Any]) -> bytes:
        """Run one call within the request timeout; its JSON-encoded result, or a CallError."""
        func = self.functions.get(file, name)
        # Kept, not asked for each call: asyncio.get_running_loop() is a system call (getpid) on 3.11.
        loop = self.loop or asyncio.get_running_loop()
        try:
            if self.worker is not None and not _is_async(func):
                # A bare timer, not asyncio.timeout(): its bookkeeping showed in profiles.
                future = self.worker.submit(loop, run_call, func, args, kwargs)
                timer = loop.call_later(self.timeout, _expire, future)
                try:
                    outcome = await future
                finally:
                    timer.cancel()
            else:
                async with asyncio.timeout(self.timeout):
                    if _is_async(func):
                        outcome = await _await_call(func, args, kwargs)
                    else:
                        outcome = await loop.run_in_executor(self.pool, _call_in_worker, file, name, args, kwargs)
        except TimeoutError:
            # The call itself runs on to its end in its worker: Python cannot stop a thread, and
            # killing a process would break the pool for every other call in flight.
            raise CallError(
                504, "Timeout", f"the call took longer than the request timeout ({self.timeout:g} s)"
            ) from None
        except concurrent.futures.process.BrokenProcessPool:
            self.broken = "a worker process died (killed, or the model code ended it)"
            _log(f"harness: {self.broken}; this instance can no longer serve")
            raise CallError(500, "WorkerDied", self.broken) from None
        if isinstance(outcome, Failure):
            # Arguments are checked only when a call fails with TypeError, not on every call (the
            # check, inspect.signature, was a tenth of the harness's time per call): when they do
            # not fit, binding them failed before any line of the function ran (only a decorator's
            # own code may have), so the answer is the same 400 naming every problem.
            if outcome.kind == "TypeError" and (problems := argument_problems(func, args, kwargs)):
                listed = "; ".join(f"{field} {problem}" for field, problem in problems)
                raise CallError(400, "BadArguments", f"the arguments do not fit {name}(): {listed}", problems)
            if outcome.traceback:
                _log(f"request {request_id}: {name}() raised {outcome.kind}\n{outcome.traceback.rstrip()}")
            raise CallError(500, outcome.kind, outcome.message)
        return outcome

    async def handle(self, request: Request) -> Response:
        """Every request: `/ping`, `/health`, `/model` and the user's routes."""
        if self.secret and not hmac.compare_digest(request.headers.get(_SECRET_KEY, "").encode("latin-1"), self.secret):
            return _refusal(request, 403, "Forbidden", "instances answer only the gateway; call the model through it")
        by_verb = self.routes.get(request.path)
        if by_verb is None:
            return _refusal(request, 404, "NotFound", "Not Found")
        handler = by_verb.get("GET" if request.method == "HEAD" else request.method)
        if handler is None:
            return _refusal(request, 405, "MethodNotAllowed", "Method Not Allowed")
        return await handler(request)

    def refused(self, request: Request | None, status: int) -> Response:
        """What the HTTP server answers by itself (a body over the limit, malformed HTTP), as a call error."""
        if status == 413:
            err = CallError(413, "TooLarge", f"the body is over the limit of {self.max_body} bytes")
        elif status == 400:
            err = CallError(400, "BadRequest", "the request is not valid HTTP/1.1")
        elif status in _LIMIT_ERRORS:
            err = CallError(status, *_LIMIT_ERRORS[status])
        else:
            err = CallError(status, "InternalError", "the harness failed; see the instance log")
        request_id = request.headers.get("x-request-id", "") if request is not None else ""
        return Response(err.status, err.body(request_id))

    async def respond(self, request: Request, call: Callable[[str], Awaitable[bytes]]) -> Response:
        request_id = request.headers.get("x-request-id") or uuid.uuid4().hex
        started = time.perf_counter()
        try:
            result = await call(request_id)
            envelope = {
                "result": msgspec.Raw(result),
                "request_id": request_id,
                "model_time_in_ms": round((time.perf_counter() - started) * 1000, 3),
                "release": self.release,
            }
            body, status = msgspec.json.encode(envelope), 200
        except CallError as err:
            body, status = err.body(request_id), err.status
        request_log(
            f"request {request_id} {request.method} {request.path} -> {status} "
            f"in {(time.perf_counter() - started) * 1000:.1f} ms"
        )
        return Response(status, body, headers={"X-Request-Id": request_id})

    async def model(self, request: Request) -> Response:
        async def call(request_id: str) -> bytes:
            args, kwargs = domino_arguments(_json_body(request))
            assert self.model_function  # routed here only when there is one
            return await self.invoke(request_id, *self.model_function, args, kwargs)

        return await self.respond(request, call)

    def route_handler(self, route: Route) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        async def handler(request: Request) -> Response:
            async def call(request_id: str) -> bytes:
                if route.verb == "GET":
                    body: Any = coerce_query(route, dict(parse_qsl(request.query, keep_blank_values=True)))
                else:
                    body = _json_body(request) if request.body else {}
                if not isinstance(body, dict):
                    raise CallError(400, "BadRequest", "the body must be a JSON object")
                try:
                    args, kwargs = match_template(route, body)
                except SpecError as err:
                    raise CallError(
                        400, "BadRequest", f"the request does not match {route.verb} {route.path}: {err}", err.errors
                    ) from None
                return await self.invoke(request_id, route.file, route.function, args, kwargs)

            return await self.respond(request, call)

        return handler

    async def metrics(self, _: Request) -> Response:
        return Response(200, request_log.metrics(), content_type="text/plain; version=0.0.4; charset=utf-8")

    async def ping(self, _: Request) -> Response:
        return Response(200, b'{"status":"ok"}')

    async def health(self, _: Request) -> Response:
        """The monitor's probe: the user's health function if there is one, else the loop answering."""
        if self.broken:
            return Response(503, msgspec.json.encode({"healthy": False, "reason": self.broken}))
        name = self.entrypoint.health_function
        if name is None:
            return Response(200, b'{"healthy":true}')
        assert self.model_function  # the spec check allows a health function only beside it
        func = self.functions.get(self.model_function[0], name)
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(self.timeout):
                if inspect.iscoroutinefunction(func):
                    outcome: Any = await func()
                else:
                    outcome = await loop.run_in_executor(self.health_pool, func)
            healthy = bool(outcome)
            reason = "" if healthy else f"{name}() returned {outcome!r}"
        except TimeoutError:
            healthy, reason = False, f"{name}() took longer than {self.timeout:g} s"
        except Exception as exc:
            healthy, reason = False, f"{name}() raised {type(exc).__name__}: {exc}"
        return Response(200 if healthy else 503, msgspec.json.encode({"healthy": healthy, "reason": reason}))


def domino_arguments(payload: Any) -> tuple[list[Any], dict[str, Any]]:
    """Domino's two request formats: `{"data": {named arguments}}` or `{"parameters": [positional]}`."""
    if not isinstance(payload, dict) or ("data" in payload) == ("parameters" in payload):
        raise CallError(
            400,
            "BadRequest",
            'the body must be a JSON object with "data" (an object of named arguments) '
            'or "parameters" (an array of positional arguments), not both',
        )
    unknown = sorted(set(payload) - {"data", "parameters"})
    if unknown:
        raise CallError(
            400,
            "BadRequest",
            f'unknown top-level field(s) {", ".join(map(repr, unknown))}: put arguments inside "data" or "parameters"',
            [(f, "is not a known field") for f in unknown],
        )
    if "data" in payload:
        if not isinstance(payload["data"], dict):
            raise CallError(
                400, "BadRequest", '"data" must be a JSON object of named arguments', [("data", "must be an object")]
            )
        return [], payload["data"]
    if not isinstance(payload["parameters"], list):
        raise CallError(
            400, "BadRequest", '"parameters" must be a JSON array of arguments', [("parameters", "must be an array")]
        )
    return payload["parameters"], {}


async def _await_call(func: Callable[..., Awaitable[Any]], args: list[Any], kwargs: dict[str, Any]) -> bytes | Failure:
    try:
        result = await func(*args, **kwargs)
    except Exception as exc:  # CancelledError (the timeout) is a BaseException and passes through
        return Failure(type(exc).__name__, str(exc) or type(exc).__name__, traceback.format_exc())
    return encode_result(result)


_async_functions: dict[Callable[..., Any], bool] = {}


def _is_async(func: Callable[..., Any]) -> bool:
    known = _async_functions.get(func)
    if known is None:
        known = _async_functions[func] = inspect.iscoroutinefunction(func)
    return known


def _refusal(request: Request, status: int, kind: str, reason: str) -> Response:
    err = CallError(status, kind, f"{request.method} {request.path}: {reason}")
    return Response(status, err.body(request.headers.get("x-request-id", "")))


def _json_body(request: Request) -> Any:
    try:
        return msgspec.json.decode(request.body)
    except msgspec.DecodeError as exc:
        raise CallError(400, "MalformedJSON", f"the body is not valid JSON: {exc}") from None


class _Log:
    """The harness's own lines for the instance log (a call's traceback, a failure), never dropped,
    written once per turn of the event loop, after the answers. Request-log lines go through
    `request_log` instead.

    A `print(..., flush=True)` per call was a write system call on every call's path; here the
    lines of the calls answered in one turn of the loop go out in one write, in order."""

    def __init__(self) -> None:
        self.lines: list[str] = []
        self.loop: asyncio.AbstractEventLoop | None = None  # the serving loop, once it runs

    def __call__(self, line: str) -> None:
        if self.loop is None or self.loop.is_closed():
            output.write(line + "\n")  # not serving (yet): write at once
            return
        if not self.lines:
            self.loop.call_soon(self.flush)
        self.lines.append(line)

    def flush(self) -> None:
        lines, self.lines = self.lines, []
        output.write("\n".join(lines) + "\n")  # to the instance log, past the bound on user output


_log = _Log()
# One line per call; dropped (counted) rather than slowing a call when the log falls behind.
request_log = RequestLog()


async def serve_harness(
    harness: Harness,
    max_body: int,
    port: int,
    host: str = "127.0.0.1",
    limits: Limits | None = None,
    listener: socket.socket | None = None,
) -> Server:
    """Start serving on `listener` when given (bound by who started us), else on host:port (0: any
    free port, then see `Server.port`)."""
    harness.max_body = max_body
    harness.loop = _log.loop = asyncio.get_running_loop()
    server = Server(
        harness.handle,
        harness.refused,
        max_body=max_body,
        limits=limits,
        log_error=lambda request, exc: _log(f"harness: {request.method} {request.path} failed: {exc!r}"),
    )
    if listener is not None:
        await server.listen_socket(listener)
    else:
        await server.listen_tcp(host, port)
    return server


async def _serve_until_stopped(
    harness: Harness, max_body: int, port: int, limits: Limits, listener: socket.socket | None, host: str
) -> None:
    server = await serve_harness(harness, max_body, port, host=host, limits=limits, listener=listener)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    await stop.wait()
    # Calls already taken finish first, within the local driver's 10 s between SIGTERM and SIGKILL.
    await server.close(grace=8.0)
    if _log.lines:
        _log.flush()
    request_log.close()


def main() -> None:
    global _functions
    env = os.environ
    # Before the model code can write anything: what it prints is bounded from its first byte.
    output.bound(int(env.get("PIER_OUTPUT_RATE", str(output.DEFAULT_RATE))))
    # Out of the environment before the model code loads, so nothing it spawns inherits it.
    secret = env.pop("PIER_INSTANCE_SECRET", "")
    listener = _inherited_listener(env.pop("PIER_LISTEN_FD", ""))
    code_dir = Path(env.get("PIER_WORKING_DIR", ".")).absolute()
    entrypoint = msgspec.json.decode(env["PIER_ENTRYPOINT"], type=Entrypoint)
    os.chdir(code_dir)
    os.environ["PIER_WORKING_DIR"] = str(code_dir)  # the user's code may rely on it, as on the cwd
    print(f"harness: loading {', '.join(entrypoint.files())} in {code_dir}", flush=True)
    try:
        _functions = Functions(code_dir, entrypoint)
    except LoadError as exc:
        print(f"harness: {exc}", file=sys.stderr, flush=True)
        sys.exit(3)
    except BaseException:
        print("harness: importing the model code failed:", file=sys.stderr, flush=True)
        traceback.print_exc()
        sys.exit(3)
    harness = Harness(
        _functions,
        entrypoint,
        workers=int(env.get("PIER_WORKERS", "1")),
        request_timeout=float(env.get("PIER_REQUEST_TIMEOUT", "60")),
        version_id=env.get("PIER_MODEL_VERSION_ID", ""),
        version_number=int(env.get("PIER_MODEL_VERSION_NUMBER", "0")),
        secret=secret,
    )
    port = int(env.get("PIER_PORT", "0"))
    # Loopback for a local run; a pod's harness listens on all its addresses (PIER_HOST=0.0.0.0).
    host = env.get("PIER_HOST", "127.0.0.1")
    print(f"harness: serving on {host}:{port}", flush=True)
    max_body = int(env.get("PIER_MAX_BODY_BYTES", str(32 * 1024 * 1024)))
    try:
        limits = from_env(env)
    except ValueError as exc:
        print(f"harness: {exc}", file=sys.stderr, flush=True)
        sys.exit(3)
    # uvloop: measured, the default loop's per-call cost showed in bench/gateway.
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        runner.run(_serve_until_stopped(harness, max_body, port, limits, listener, host))


def _inherited_listener(fd: str) -> socket.socket | None:
    """The listening socket the local runtime bound for this run (PIER_LISTEN_FD), if any. Not
    inherited further: a process the model starts must not hold the instance's port."""
    if not fd:
        return None
    sock = socket.socket(fileno=int(fd))
    sock.set_inheritable(False)
    return sock
