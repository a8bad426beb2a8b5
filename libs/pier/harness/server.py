"""The instance's HTTP server: `/model` (Domino formats), user routes, `/ping` and `/health`.

Configured by PIER_* variables the runtime driver sets. Sync functions run on a worker pool so
the event loop keeps answering health checks; async functions are awaited on the loop.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import multiprocessing
import os
import sys
import time
import traceback
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import msgspec
from aiohttp import web

from pier.harness.loader import Functions, LoadError, bind_error
from pier.spec import Entrypoint, Route, SpecError, coerce_query, match_template

_functions: Functions | None = None  # set before workers fork, so they inherit the loaded modules


def _call_in_worker(file: str, name: str, args: list[Any], kwargs: dict[str, Any]) -> Any:
    assert _functions is not None
    return _functions.get(file, name)(*args, **kwargs)


class CallError(Exception):
    def __init__(self, status: int, kind: str, message: str) -> None:
        super().__init__(message)
        self.status, self.kind, self.message = status, kind, message


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
        # One worker: a thread is enough to keep the loop free, with no copying of arguments.
        # Several: processes, so CPU-bound Python code really runs in parallel.
        self.pool: concurrent.futures.Executor
        if workers <= 1:
            self.pool = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="model")
        else:
            self.pool = concurrent.futures.ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("fork"))
            self.pool.submit(int).result()  # fork every worker now, before the event loop starts

    async def invoke(self, file: str, name: str, args: list[Any], kwargs: dict[str, Any]) -> Any:
        func = self.functions.get(file, name)
        problem = bind_error(func, args, kwargs)
        if problem:
            raise CallError(400, "BadArguments", problem)
        try:
            async with asyncio.timeout(self.timeout):
                if asyncio.iscoroutinefunction(func):
                    return await func(*args, **kwargs)
                loop = asyncio.get_running_loop()
                return await loop.run_in_executor(self.pool, _call_in_worker, file, name, args, kwargs)
        except TimeoutError:
            raise CallError(
                504, "Timeout", f"the call took longer than the request timeout ({self.timeout:g} s)"
            ) from None
        except CallError:
            raise
        except Exception as exc:
            traceback.print_exc(file=sys.stderr)
            raise CallError(500, type(exc).__name__, str(exc) or type(exc).__name__) from None

    async def respond(self, request: web.Request, call: Callable[[], Any]) -> web.Response:
        request_id = request.headers.get("X-Request-Id") or uuid.uuid4().hex
        started = time.perf_counter()
        try:
            result = await call()
            elapsed = (time.perf_counter() - started) * 1000
            try:
                body = msgspec.json.encode(
                    {
                        "result": result,
                        "request_id": request_id,
                        "model_time_in_ms": round(elapsed, 3),
                        "release": self.release,
                    }
                )
            except TypeError:
                raise CallError(
                    500,
                    "ResultNotSerializable",
                    f"the function returned a {type(result).__name__}, which is not JSON-serialisable",
                ) from None
            status = 200
        except CallError as err:
            status = err.status
            body = msgspec.json.encode({"error": {"type": err.kind, "message": err.message}, "request_id": request_id})
        print(
            f"request {request_id} {request.method} {request.path} -> {status} "
            f"in {(time.perf_counter() - started) * 1000:.1f} ms",
            flush=True,
        )
        return web.Response(
            body=body, status=status, content_type="application/json", headers={"X-Request-Id": request_id}
        )

    async def model(self, request: web.Request) -> web.Response:
        async def call() -> Any:
            payload = await _json_body(request)
            if not isinstance(payload, dict) or ("data" in payload) == ("parameters" in payload):
                raise CallError(
                    400,
                    "BadRequest",
                    'the body must be a JSON object with "data" (an object of '
                    'named arguments) or "parameters" (an array of positional arguments)',
                )
            if "data" in payload:
                if not isinstance(payload["data"], dict):
                    raise CallError(400, "BadRequest", '"data" must be a JSON object of named arguments')
                args, kwargs = [], payload["data"]
            else:
                if not isinstance(payload["parameters"], list):
                    raise CallError(400, "BadRequest", '"parameters" must be a JSON array of arguments')
                args, kwargs = payload["parameters"], {}
            return await self.invoke(self.entrypoint.file, self.entrypoint.function, args, kwargs)

        return await self.respond(request, call)

    def route_handler(self, route: Route) -> Callable[[web.Request], Any]:
        async def handler(request: web.Request) -> web.Response:
            async def call() -> Any:
                if route.verb == "GET":
                    body: Any = coerce_query(route, dict(request.query))
                else:
                    body = await _json_body(request) if request.can_read_body else {}
                if not isinstance(body, dict):
                    raise CallError(400, "BadRequest", "the body must be a JSON object")
                try:
                    args, kwargs = match_template(route, body)
                except SpecError as err:
                    raise CallError(400, "BadRequest", str(err)) from None
                return await self.invoke(route.file, route.function, args, kwargs)

            return await self.respond(request, call)

        return handler

    async def ping(self, _: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    async def health(self, _: web.Request) -> web.Response:
        """The monitor's probe: the user's health function if there is one, else the loop answering."""
        name = self.entrypoint.health_function
        if name is None:
            return web.json_response({"healthy": True})
        try:
            healthy = bool(await self.invoke(self.entrypoint.file, name, [], {}))
            reason = "" if healthy else f"{name}() returned a falsy value"
        except CallError as err:
            healthy, reason = False, f"{name}() raised {err.kind}: {err.message}"
        return web.json_response({"healthy": healthy, "reason": reason}, status=200 if healthy else 503)


async def _json_body(request: web.Request) -> Any:
    raw = await request.read()
    try:
        return msgspec.json.decode(raw)
    except msgspec.DecodeError as exc:
        raise CallError(400, "MalformedJSON", f"the body is not valid JSON: {exc}") from None


def _too_large(limit: int) -> Callable[..., Any]:
    @web.middleware
    async def middleware(request: web.Request, handler: Callable[..., Any]) -> web.StreamResponse:
        try:
            return await handler(request)  # type: ignore[no-any-return]
        except web.HTTPRequestEntityTooLarge:
            return web.json_response(
                {
                    "error": {"type": "TooLarge", "message": f"the body is over the limit of {limit} bytes"},
                    "request_id": request.headers.get("X-Request-Id", ""),
                },
                status=413,
            )

    return middleware


def build_app(harness: Harness, max_body: int) -> web.Application:
    app = web.Application(client_max_size=max_body, middlewares=[_too_large(max_body)])
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
    )
