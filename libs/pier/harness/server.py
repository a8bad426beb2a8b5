"""The instance's HTTP server: `/model` (Domino formats), user routes, `/ping` and `/health`.

Configured by PIER_* variables the runtime driver sets. Sync functions run on a worker pool so
the event loop keeps answering health checks; async functions are awaited on the loop.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import concurrent.futures.process
import inspect
import multiprocessing
import os
import sys
import time
import traceback
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import msgspec
import uvloop
from aiohttp import web

from pier.harness.loader import Functions, LoadError, argument_problems
from pier.spec import Entrypoint, Route, SpecError, coerce_query, match_template

_functions: Functions | None = None  # set before workers fork, so they inherit the loaded modules


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


class Harness:
    def __init__(
        self,
        functions: Functions,
        entrypoint: Entrypoint,
        workers: int,
        request_timeout: float,
        version_id: str,
        version_number: int,
    ) -> None:
        self.functions = functions
        self.entrypoint = entrypoint
        self.timeout = request_timeout
        self.release = {"model_version": version_id, "model_version_number": version_number}
        # Set when the instance can no longer serve (a worker process died): /health says so,
        # and the monitor replaces the instance.
        self.broken = ""
        # One worker: a thread is enough to keep the loop free, with no copying of arguments.
        # Several: processes, so CPU-bound Python code really runs in parallel.
        self.pool: concurrent.futures.Executor
        if workers <= 1:
            self.pool = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="model")
        else:
            self.pool = concurrent.futures.ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("fork"))
            self.pool.submit(int).result()  # fork every worker now, before the event loop starts
        # The health function gets a thread of its own: a probe must not queue behind slow calls.
        self.health_pool = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="health")

    async def invoke(self, request_id: str, file: str, name: str, args: list[Any], kwargs: dict[str, Any]) -> bytes:
        """Run one call within the request timeout; its JSON-encoded result, or a CallError."""
        func = self.functions.get(file, name)
        problems = argument_problems(func, args, kwargs)
        if problems:
            listed = "; ".join(f"{field} {problem}" for field, problem in problems)
            raise CallError(400, "BadArguments", f"the arguments do not fit {name}(): {listed}", problems)
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(self.timeout):
                if inspect.iscoroutinefunction(func):
                    outcome = await _await_call(func, args, kwargs)
                elif isinstance(self.pool, concurrent.futures.ThreadPoolExecutor):
                    outcome = await loop.run_in_executor(self.pool, run_call, func, args, kwargs)
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
            if outcome.traceback:
                _log(f"request {request_id}: {name}() raised {outcome.kind}\n{outcome.traceback.rstrip()}")
            raise CallError(500, outcome.kind, outcome.message)
        return outcome

    async def respond(self, request: web.Request, call: Callable[[str], Awaitable[bytes]]) -> web.Response:
        request_id = request.headers.get("X-Request-Id") or uuid.uuid4().hex
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
        _log(
            f"request {request_id} {request.method} {request.path} -> {status} "
            f"in {(time.perf_counter() - started) * 1000:.1f} ms"
        )
        return web.Response(
            body=body, status=status, content_type="application/json", headers={"X-Request-Id": request_id}
        )

    async def model(self, request: web.Request) -> web.Response:
        async def call(request_id: str) -> bytes:
            args, kwargs = domino_arguments(await _json_body(request))
            return await self.invoke(request_id, self.entrypoint.file, self.entrypoint.function, args, kwargs)

        return await self.respond(request, call)

    def route_handler(self, route: Route) -> Callable[[web.Request], Awaitable[web.Response]]:
        async def handler(request: web.Request) -> web.Response:
            async def call(request_id: str) -> bytes:
                if route.verb == "GET":
                    body: Any = coerce_query(route, dict(request.query))
                else:
                    body = await _json_body(request) if request.can_read_body else {}
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

    async def ping(self, _: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    async def health(self, _: web.Request) -> web.Response:
        """The monitor's probe: the user's health function if there is one, else the loop answering."""
        if self.broken:
            return web.json_response({"healthy": False, "reason": self.broken}, status=503)
        name = self.entrypoint.health_function
        if name is None:
            return web.json_response({"healthy": True})
        func = self.functions.get(self.entrypoint.file, name)
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
        return web.json_response({"healthy": healthy, "reason": reason}, status=200 if healthy else 503)


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


async def _json_body(request: web.Request) -> Any:
    raw = await request.read()
    try:
        return msgspec.json.decode(raw)
    except msgspec.DecodeError as exc:
        raise CallError(400, "MalformedJSON", f"the body is not valid JSON: {exc}") from None


def _log(line: str) -> None:
    # stdout and stderr both go to the instance log; one stream keeps the lines in order.
    print(line, flush=True)


def _errors_middleware(limit: int) -> Any:
    """Whatever aiohttp answers by itself (413, 404, 405) still comes back as an invocation error."""

    @web.middleware
    async def middleware(
        request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        try:
            return await handler(request)
        except web.HTTPException as exc:
            if exc.status < 400:
                raise
            if exc.status == 413:
                err = CallError(413, "TooLarge", f"the body is over the limit of {limit} bytes")
            else:
                err = CallError(
                    exc.status, exc.reason.replace(" ", ""), f"{request.method} {request.path}: {exc.reason}"
                )
            request_id = request.headers.get("X-Request-Id", "")
            return web.Response(body=err.body(request_id), status=err.status, content_type="application/json")

    return middleware


def build_app(harness: Harness, max_body: int) -> web.Application:
    app = web.Application(client_max_size=max_body, middlewares=[_errors_middleware(max_body)])
    app.router.add_get("/ping", harness.ping)
    app.router.add_get("/health", harness.health)
    app.router.add_post("/model", harness.model)
    for route in harness.entrypoint.routes:
        app.router.add_route(route.verb, route.path, harness.route_handler(route))
    return app


def main() -> None:
    global _functions
    env = os.environ
    code_dir = Path(env.get("PIER_WORKING_DIR", ".")).absolute()
    entrypoint = msgspec.json.decode(env["PIER_ENTRYPOINT"], type=Entrypoint)
    os.chdir(code_dir)
    os.environ["PIER_WORKING_DIR"] = str(code_dir)  # the user's code may rely on it, as on the cwd
    print(f"harness: loading {entrypoint.file} in {code_dir}", flush=True)
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
    )
    port = int(env.get("PIER_PORT", "0"))
    print(f"harness: serving on 127.0.0.1:{port}", flush=True)
    web.run_app(
        build_app(harness, int(env.get("PIER_MAX_BODY_BYTES", str(32 * 1024 * 1024)))),
        host="127.0.0.1",
        port=port,
        print=None,
        access_log=None,
        loop=uvloop.new_event_loop(),  # measured: the default loop's per-call cost showed in bench/gateway
    )
