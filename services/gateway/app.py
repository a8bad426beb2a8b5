"""The gateway's HTTP surface: invocation routes, template checks, errors as JSON envelopes."""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any
from urllib.parse import parse_qsl

import msgspec
import structlog

from pier import config, metrics, telemetry
from pier.bus import Bus
from pier.config import Settings
from pier.events import INSTANCES_BUCKET, KEYS_BUCKET, ROUTES_BUCKET, TOKENS_BUCKET, RouteRecord
from pier.http import SECRET_HEADER
from pier.http.client import Proxy, Unreachable, UpstreamFailed, UpstreamTimeout
from pier.http.limits import from_settings
from pier.http.server import Request, Response, Server
from pier.spec import Route, SpecError, coerce_query, match_template
from pier.tasks import cancel_and_wait
from services.gateway import table as table_module
from services.gateway.auth import CHALLENGE, Authenticator
from services.gateway.balancer import Balancer, Shed
from services.gateway.table import Table

log = structlog.get_logger("gateway")

REQUEST_ID = "X-Request-Id"
# What the instance may see of the client's request; Authorization stays at the gateway.
_FORWARDED_HEADERS = (("content-type", "Content-Type"), ("accept", "Accept"))
_MODELS = "/models/"
_random_bits = random.Random().getrandbits  # seeded from os.urandom once


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
        challenge: bool = False,
    ) -> None:
        super().__init__(message)
        self.status, self.kind, self.message = status, kind, message
        self.retry_after = retry_after
        self.errors = errors
        self.challenge = challenge


def _error_response(request_id: str, err: GatewayError) -> Response:
    detail: dict[str, Any] = {"type": err.kind, "message": err.message}
    if err.errors:
        detail["errors"] = err.errors
    headers = {REQUEST_ID: request_id}
    if err.retry_after is not None:
        headers["Retry-After"] = str(err.retry_after)
    if err.challenge:
        headers["WWW-Authenticate"] = CHALLENGE
    return Response(err.status, msgspec.json.encode({"error": detail, "request_id": request_id}), headers=headers)


def _request_id(request: Request | None) -> str:
    given = request.headers.get("x-request-id") if request is not None else None
    # Unique, not secret: `random` needs no system call (os.urandom's showed in profiles).
    return given or f"{_random_bits(128):032x}"


def _too_large(limit: int) -> GatewayError:
    return GatewayError(413, "TooLarge", f"the body is over the limit of {limit} bytes")


# What the HTTP server refuses by itself, past one of its limits (pier.http.limits).
_LIMIT_ERRORS = {
    408: ("RequestTimeout", "the request's headers or body stopped arriving"),
    414: ("URITooLong", "the request line is over the gateway's limit"),
    431: ("HeadersTooLarge", "the request's headers are over the gateway's limit (size or count)"),
}

_UNAUTHORIZED = GatewayError(
    401,
    "Unauthorized",
    "this model API needs an access token: send 'Authorization: Bearer <token>' (or HTTP Basic with the token)",
    challenge=True,
)


class Gateway:
    def __init__(self, settings: Settings, table: Table, balancer: Balancer, proxy: Proxy) -> None:
        self.settings = settings
        self.table = table
        self.balancer = balancer
        self.proxy = proxy
        self.auth = Authenticator(table)
        self._tracing = telemetry.tracing(settings)
        self.registry = metrics.Registry()
        self.metrics_port = 0  # where /metrics is served, once listening (PIER_GATEWAY_METRICS_PORT)
        labels = ("model", "version")
        self.requests = self.registry.counter(
            "pier_gateway_requests_total", "Calls answered, by model API, version and HTTP status", (*labels, "status")
        )
        self.latency = self.registry.histogram(
            "pier_gateway_request_duration_seconds", "Time from a call's arrival to its answer", labels
        )
        self.shed = self.registry.counter(
            "pier_gateway_shed_total", "Calls refused with 503 for overload (queue full or waited too long)", labels
        )
        self.registry.gauge(
            "pier_gateway_in_flight", "Calls being served by instances", labels, source=self._in_flight_by_version
        )
        self.registry.gauge("pier_gateway_queued", "Calls waiting for capacity", labels, source=self._queued)

    def _name(self, model_id: str) -> str:
        record = self.table.routes.get(model_id)
        return record.name if record else model_id

    def _in_flight_by_version(self) -> list[tuple[tuple[str, ...], float]]:
        totals: dict[tuple[str, ...], float] = {}
        for instance_id, n in self.balancer.in_flight.items():
            instance = self.table.instances.get(instance_id)
            if instance is not None:
                key = (self._name(instance.model_id), str(instance.version))
                totals[key] = totals.get(key, 0) + n
        return list(totals.items())

    def _queued(self) -> list[tuple[tuple[str, ...], float]]:
        return [((self._name(m), str(v)), float(n)) for (m, v), n in self.balancer.queued()]

    async def handle(self, request: Request) -> Response:
        """Every request the gateway answers: route by path, answer errors as JSON envelopes."""
        request_id = _request_id(request)
        try:
            path = request.path
            if path.startswith(_MODELS):
                return await self.invoke(request, request_id)
            if path == "/ping":
                if request.method not in ("GET", "HEAD"):
                    raise GatewayError(405, "MethodNotAllowed", f"{request.method} {path}: Method Not Allowed")
                return Response(200, b'{"status":"ok"}')
            raise GatewayError(404, "NotFound", f"{request.method} {path}: Not Found")
        except GatewayError as err:
            return _error_response(request_id, err)
        except Exception:
            log.exception("unexpected error", request_id=request_id, path=request.path)
            return _error_response(request_id, GatewayError(500, "InternalError", "the gateway failed; see its logs"))

    async def metrics_page(self, request: Request) -> Response:
        """The metrics address's one page. It names model APIs, so it is not on the public address."""
        if request.path != "/metrics":
            return _error_response(_request_id(request), GatewayError(404, "NotFound", "only /metrics is here"))
        if request.method not in ("GET", "HEAD"):
            return _error_response(_request_id(request), GatewayError(405, "MethodNotAllowed", "/metrics answers GET"))
        return Response(200, self.registry.render().encode(), metrics.CONTENT_TYPE)

    def refused(self, request: Request | None, status: int) -> Response:
        """What the HTTP server answers by itself: a body over the limit, a malformed request."""
        if status == 413:
            err = _too_large(self.settings.max_body_bytes)
        elif status == 400:
            err = GatewayError(400, "BadRequest", "the request is not valid HTTP/1.1")
        elif status == 503:
            err = GatewayError(
                503, "Unavailable", "the gateway is stopping or at its connection limit; retry", retry_after=1
            )
        elif status in _LIMIT_ERRORS:
            err = GatewayError(status, *_LIMIT_ERRORS[status])
        else:
            err = GatewayError(500, "InternalError", "the gateway failed; see its logs")
        return _error_response(_request_id(request), err)

    async def invoke(self, request: Request, request_id: str) -> Response:
        """Serve a call and count it: status, latency, by model API and version."""
        started = time.perf_counter()
        which: list[Any] = []
        status = 500
        try:
            response = await self._invoke(request, request_id, which)
            status = response.status
            return response
        except GatewayError as err:
            status = err.status
            raise
        finally:
            if which:
                labels = (which[0], str(which[1]))
                self.requests.inc(*labels, str(status))
                self.latency.observe(time.perf_counter() - started, *labels)

    async def _invoke(self, request: Request, request_id: str, which: list[Any]) -> Response:
        # /models/<ref>/latest/<path> or /models/<ref>/labels/<label>/<path>
        parts = request.path.split("/", 5)
        label: str | None = None
        if len(parts) >= 5 and parts[2] and parts[3] == "latest":
            ref, path = parts[2], "/" + "/".join(parts[4:])
        elif len(parts) == 6 and parts[2] and parts[3] == "labels" and parts[4] and parts[5]:
            ref, label, path = parts[2], parts[4], "/" + parts[5]
        else:
            raise GatewayError(404, "NotFound", f"{request.method} {request.path}: Not Found")
        if path == "/":
            raise GatewayError(404, "NotFound", f"{request.method} {request.path}: Not Found")
        record = self.table.resolve(ref)
        # An unknown name answers as a restricted model API does without its token (/ping too), so
        # that names cannot be probed for; an unrestricted one needs no token, even for /ping.
        if record is None or not self.auth.check(record, request.headers.get("authorization")):
            raise _UNAUTHORIZED
        version = _version(record, label)
        which += (record.name, version)
        if path == "/ping":
            if request.method != "GET":
                raise GatewayError(405, "MethodNotAllowed", "/ping answers GET")
            if not self.table.has_ready(record.model_id, version):
                raise _no_ready(record, version)
            return Response(200, b'{"status":"ok"}', headers={REQUEST_ID: request_id})
        if path == "/model":
            if request.method != "POST":
                raise GatewayError(405, "MethodNotAllowed", "/model answers POST")
            _check_model_endpoint(record, version)
            return await self._forward(request, request_id, record, label, version, "/model", "", request.body)
        route = _find_route(record, version, request.method, path)
        if route.verb == "GET":
            body = b""
            fields: Any = coerce_query(route, dict(parse_qsl(request.query, keep_blank_values=True)))
        else:
            body = request.body
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
        return await self._forward(request, request_id, record, label, version, route.path, request.query, body)

    async def _forward(
        self,
        request: Request,
        request_id: str,
        record: RouteRecord,
        label: str | None,
        version: int,
        path: str,
        query: str,
        body: bytes,
        *,
        retried: bool = False,
    ) -> Response:
        incoming = request.headers
        headers = {REQUEST_ID: request_id}
        for name, proper in _FORWARDED_HEADERS:
            value = incoming.get(name)
            if value is not None:
                headers[proper] = value
        bound = _LazyLog(request_id, record.model_id, version)
        # A span costs about a tenth of a call's time here: made only when traces go somewhere
        # (an exporter is set) or the caller is tracing (it sent a traceparent to continue).
        tracing = self._tracing or "traceparent" in incoming
        with (
            telemetry.span_from(incoming, f"gateway {request.method} {path}", model_id=record.model_id)
            if tracing
            else contextlib.nullcontext()
        ):
            if tracing:
                telemetry.inject(headers)
            tried: list[str] = []
            # A refused connection sent nothing, so one retry elsewhere cannot run the model twice.
            for _ in range(2):
                try:
                    instance = await self.balancer.acquire(
                        record.model_id, version, tried, record.queue_length, record.queue_timeout
                    )
                except Shed as shed:
                    self.shed.inc(record.name, str(version))
                    raise GatewayError(
                        503,
                        "Overloaded",
                        f"{record.name!r} is at capacity: {shed.reason}; retry later",
                        retry_after=shed.retry_after,
                    ) from None
                if instance is None:
                    break
                tried.append(instance.instance_id)
                # Its own secret: the harness answers nothing else (and a caller's copy never passes).
                headers[SECRET_HEADER] = instance.secret
                started = time.perf_counter()
                try:
                    reply = await self.proxy.forward(
                        request.method,
                        instance.address,
                        path,
                        query,
                        body,
                        headers,
                        record.request_timeout,
                        max(instance.workers, 1),
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
                    raise GatewayError(502, "BadGateway", str(exc)) from None
                finally:
                    self.balancer.release(instance, time.perf_counter() - started)
                return Response(reply.status, reply.body, reply.content_type, {REQUEST_ID: request_id})
        if tried:
            # The version may have just been replaced (a promote, a new version): its instances stop
            # once the route moved on, so a call that raced the switch goes to the version now serving.
            current = self.table.resolve(record.model_id)
            if current is not None and not retried:
                try:
                    now = _version(current, label)
                except GatewayError:
                    now = version
                if now != version:
                    return await self._forward(
                        request, request_id, current, label, now, path, query, body, retried=True
                    )
            raise GatewayError(502, "BadGateway", "no instance of this version accepted the connection")
        raise _no_ready(record, version)


class _LazyLog:
    """The call's context for warnings, bound only when one is logged: binding costs on every call."""

    __slots__ = ("model_id", "request_id", "version")

    def __init__(self, request_id: str, model_id: str, version: int) -> None:
        self.request_id, self.model_id, self.version = request_id, model_id, version

    def warning(self, event: str, **fields: Any) -> None:
        log.warning(event, request_id=self.request_id, model_id=self.model_id, version=self.version, **fields)


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


def _check_model_endpoint(record: RouteRecord, version: int) -> None:
    """A routes-only version (no `file`/`function`) has no /model: say which routes it has instead."""
    entry = record.versions.get(str(version))
    if entry is None or entry.entrypoint.model_function():
        return
    routes = ", ".join(f"{r.verb} {r.path}" for r in entry.entrypoint.routes)
    raise GatewayError(
        404, "NotFound", f"model API {record.name!r} version {version} has no /model endpoint, only routes: {routes}"
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
    kvs = {bucket: await bus.kv(bucket) for bucket in (ROUTES_BUCKET, INSTANCES_BUCKET, TOKENS_BUCKET, KEYS_BUCKET)}
    limits = from_settings(settings)
    async with asyncio.TaskGroup() as tg, Proxy(limits) as proxy:
        followers = await table_module.load(kvs, table, tg)
        balancer = Balancer(table, settings.gateway_queue_length, settings.gateway_queue_timeout)
        gateway = Gateway(settings, table, balancer, proxy)
        followers.append(tg.create_task(gateway.auth.report_used(bus), name="report token use"))
        server = Server(
            gateway.handle,
            gateway.refused,
            max_body=settings.max_body_bytes,
            limits=limits,
            log_error=lambda request, exc: log.error("unexpected error", path=request.path, error=repr(exc)),
        )
        metrics_server = Server(gateway.metrics_page, gateway.refused, max_body=0)
        try:
            await server.listen_tcp(
                settings.gateway_host, settings.gateway_port, reuse_port=config.gateway_processes(settings) > 1
            )
            gateway.metrics_port = await metrics_server.listen_tcp(
                settings.gateway_metrics_host, settings.gateway_metrics_port
            )
            log.info("serving", url=settings.gateway_url, metrics_port=gateway.metrics_port)
            yield gateway
        finally:
            await metrics_server.close()
            await server.close()
            await cancel_and_wait(followers)
