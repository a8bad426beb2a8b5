"""A span per management request, when tracing is on (PIER_OTLP_ENDPOINT or PIER_OTEL_EXPORTER).

It is the root of what the request sets going: the outbox stores the trace context with each
event (pier.outbox), so a deploy's build, placement and start are one trace across the services.
"""

from __future__ import annotations

from aiohttp import web
from aiohttp.typedefs import Handler, Middleware

from pier import telemetry
from pier.config import Settings


def middlewares(settings: Settings) -> list[Middleware]:
    """[the span middleware] when tracing is on, else none: untraced requests pay nothing."""
    if not telemetry.tracing(settings):
        return []

    @web.middleware
    async def traced(request: web.Request, handler: Handler) -> web.StreamResponse:
        route = request.match_info.route.resource
        path = route.canonical if route is not None else request.path
        with telemetry.span_from(request.headers, f"api {request.method} {path}") as span:
            response = await handler(request)
            span.set_attribute("http.response.status_code", response.status)
            return response

    return [traced]
