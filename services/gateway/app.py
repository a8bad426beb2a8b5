"""The gateway's HTTP surface: invocation routes, template checks, errors as JSON envelopes."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

import msgspec
import structlog
from aiohttp import web

from pier import telemetry
from pier.bus import Bus
from pier.config import Settings
from pier.events import INSTANCES_BUCKET, ROUTES_BUCKET, RouteRecord
from pier.spec import Route, SpecError, coerce_query, match_template
from services.gateway import table as table_module
from services.gateway.balancer import Balancer
from services.gateway.proxy import Proxy, Unreachable, UpstreamFailed, UpstreamTimeout
from services.gateway.table import Table

log = structlog.get_logger("gateway")

REQUEST_ID = "X-Request-Id"
_request_id_key = web.RequestKey("request_id", str)
# What the instance may see of the client's request; Authorization stays at the gateway.
_FORWARDED_HEADERS = ("Content-Type", "Accept")


class GatewayError(Exception):
    """An invocation that ends here, answered as `{"error": {"type", "message"}, "request_id"}`."""

    def __init__(
        self,
        status: int,
        kind: str,
        message: str,
        *,
        retry_after: int | None = None,
        errors: list[dict[str, str]] | None = None,
    ) -> None:
        super().__init__(message)
        self.status, self.kind, self.message = status, kind, message
        self.retry_after = retry_after
        self.errors = errors


def _error_response(request_id: str, err: GatewayError) -> web.Response:
    detail: dict[str, Any] = {"type": err.kind, "message": err.message}
    if err.errors:
        detail["errors"] = err.errors
    headers = {REQUEST_ID: request_id}
    if err.retry_after is not None:
        headers["Retry-After"] = str(err.retry_after)
    return web.Response(
        body=msgspec.json.encode({"error": detail, "request_id": request_id}),
        status=err.status,
        content_type="application/json",
        headers=headers,
    )


def _errors_middleware(max_body: int) -> Any:
    @web.middleware
    async def middleware(
        request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        request_id = request.headers.get(REQUEST_ID) or uuid.uuid4().hex
        request[_request_id_key] = request_id
        try:
            return await handler(request)
        except GatewayError as err:
            return _error_response(request_id, err)
        except web.HTTPRequestEntityTooLarge:
            return _error_response(request_id, _too_large(max_body))
        except web.HTTPException as exc:  # the router's 404 and 405
            kind = "NotFound" if exc.status == 404 else exc.reason.replace(" ", "")
            return _error_response(
                request_id, GatewayError(exc.status, kind, f"{request.method} {request.path}: {exc.reason}")
            )
        except Exception:
            log.exception("unexpected error", request_id=request_id, path=request.path)
            return _error_response(request_id, GatewayError(500, "InternalError", "the gateway failed; see its logs"))

    return middleware


def _too_large(limit: int) -> GatewayError:
    return GatewayError(413, "TooLarge", f"the body is over the limit of {limit} bytes")


class Gateway:
    def __init__(self, settings: Settings, table: Table, balancer: Balancer, proxy: Proxy) -> None:
        self.settings = settings
        self.table = table
        self.balancer = balancer
        self.proxy = proxy

    def app(self) -> web.Application:
        app = web.Application(
            client_max_size=self.settings.max_body_bytes,
            middlewares=[_errors_middleware(self.settings.max_body_bytes)],
        )
        app.router.add_get("/ping", self.ping)
        app.router.add_route("*", "/models/{ref}/latest/{path:.+}", self.invoke)
        app.router.add_route("*", "/models/{ref}/labels/{label}/{path:.+}", self.invoke)
        return app

    async def ping(self, _: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    async def invoke(self, request: web.Request) -> web.Response:
        ref = request.match_info["ref"]
        label = request.match_info.get("label")
        path = "/" + request.match_info["path"]
        record = self.table.resolve(ref)
        if record is None:
            raise GatewayError(404, "NotFound", f"there is no model API {ref!r}")
        version = _version(record, label)
        if path == "/ping":
            if request.method != "GET":
                raise GatewayError(405, "MethodNotAllowed", "/ping answers GET")
            if not self.table.has_ready(record.model_id, version):
                raise _no_ready(record, version)
            return web.json_response({"status": "ok"}, headers={REQUEST_ID: request[_request_id_key]})
        if path == "/model":
            if request.method != "POST":
                raise GatewayError(405, "MethodNotAllowed", "/model answers POST")
            return await self._forward(request, record, version, "/model", "", await self._read(request))
        route = _find_route(record, version, request.method, path)
        if route.verb == "GET":
            body = b""
            fields: Any = coerce_query(route, dict(request.query))
        else:
            body = await self._read(request)
            fields = _decode_object(body)
        try:
            match_template(route, fields)
        except SpecError as err:
            raise GatewayError(
                400,
                "BadRequest",
                f"the request does not match {route.verb} {route.path}: {err}",
                errors=[{"field": field, "problem": problem} for field, problem in err.errors],
            ) from None
        return await self._forward(request, record, version, route.path, request.query_string, body)

    async def _read(self, request: web.Request) -> bytes:
        limit = self.settings.max_body_bytes
        if request.content_length is not None and request.content_length > limit:
            raise _too_large(limit)
        return await request.read()  # aiohttp enforces the limit on bodies without Content-Length

    async def _forward(
        self, request: web.Request, record: RouteRecord, version: int, path: str, query: str, body: bytes
    ) -> web.Response:
        request_id = request[_request_id_key]
        headers = {REQUEST_ID: request_id}
        for name in _FORWARDED_HEADERS:
            if name in request.headers:
                headers[name] = request.headers[name]
        bound = log.bind(request_id=request_id, model_id=record.model_id, version=version)
        with telemetry.span_from(request.headers, f"gateway {request.method} {path}", model_id=record.model_id):
            telemetry.inject(headers)
            tried: list[str] = []
            # A refused connection sent nothing, so one retry elsewhere cannot run the model twice.
            for _ in range(2):
                instance = self.balancer.choose(record.model_id, version, exclude=tried)
                if instance is None:
                    break
                tried.append(instance.instance_id)
                try:
                    with self.balancer.track(instance.instance_id):
                        reply = await self.proxy.forward(
                            request.method, instance.address, path, query, body, headers, record.request_timeout
                        )
                except Unreachable as exc:
                    bound.warning("instance unreachable", instance_id=instance.instance_id, error=str(exc))
                    continue
                except UpstreamTimeout:
                    bound.warning("instance timed out", instance_id=instance.instance_id)
                    raise GatewayError(
                        504,
                        "Timeout",
                        f"the model did not answer within the request timeout ({record.request_timeout:g} s)",
                    ) from None
                except UpstreamFailed as exc:
                    bound.warning("instance failed", instance_id=instance.instance_id, error=str(exc))
                    raise GatewayError(
                        502, "BadGateway", "the instance closed the connection before answering"
                    ) from None
                response_headers = {REQUEST_ID: request_id}
                if reply.content_type:
                    response_headers["Content-Type"] = reply.content_type
                return web.Response(body=reply.body, status=reply.status, headers=response_headers)
        if tried:
            raise GatewayError(502, "BadGateway", "no instance of this version accepted the connection")
        raise _no_ready(record, version)


def _version(record: RouteRecord, label: str | None) -> int:
    if label is None:
        if record.latest is None:
            raise GatewayError(
                503, "NoVersion", f"model API {record.name!r} has no version deployed yet", retry_after=1
            )
        return record.latest
    version = record.labels.get(label)
    if version is None:
        raise GatewayError(404, "NotFound", f"model API {record.name!r} has no label {label!r}")
    return version


def _no_ready(record: RouteRecord, version: int) -> GatewayError:
    return GatewayError(
        503,
        "Unavailable",
        f"no instance of {record.name!r} version {version} is ready; retry shortly",
        retry_after=1,
    )


def _find_route(record: RouteRecord, version: int, verb: str, path: str) -> Route:
    entry = record.versions.get(str(version))
    routes = entry.entrypoint.routes if entry else []
    paths = [r for r in routes if r.path.rstrip("/") == path.rstrip("/")]
    for route in paths:
        if route.verb == verb:
            return route
    if paths:
        verbs = ", ".join(sorted(r.verb for r in paths))
        raise GatewayError(405, "MethodNotAllowed", f"{path} answers {verbs}")
    raise GatewayError(404, "NotFound", f"model API {record.name!r} version {version} has no route {path}")


def _decode_object(body: bytes) -> dict[str, Any]:
    if not body:
        return {}
    try:
        value = msgspec.json.decode(body)
    except msgspec.DecodeError as exc:
        raise GatewayError(400, "MalformedJSON", f"the body is not valid JSON: {exc}") from None
    if not isinstance(value, dict):
        raise GatewayError(400, "BadRequest", "the body must be a JSON object")
    return value


@asynccontextmanager
async def running(settings: Settings, bus: Bus) -> AsyncIterator[Gateway]:
    """Load the table, then serve HTTP until the block ends."""
    table = Table()
    kvs = {bucket: await bus.kv(bucket) for bucket in (ROUTES_BUCKET, INSTANCES_BUCKET)}
    async with asyncio.TaskGroup() as tg, Proxy() as proxy:
        followers = await table_module.load(kvs, table, tg)
        gateway = Gateway(settings, table, Balancer(table), proxy)
        runner = web.AppRunner(gateway.app(), access_log=None)
        await runner.setup()
        try:
            await web.TCPSite(runner, settings.gateway_host, settings.gateway_port).start()
            log.info("serving", url=settings.gateway_url)
            yield gateway
        finally:
            await runner.cleanup()
            for task in followers:
                task.cancel()
