"""structlog JSON logs carrying the trace id, and OpenTelemetry tracing with context propagation."""

from __future__ import annotations

import logging
import sys
from collections.abc import Iterator, Mapping, MutableMapping
from contextlib import contextmanager
from typing import Any

import structlog
from opentelemetry import context as otel_context
from opentelemetry import propagate, trace
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter

from pier.config import Settings

_configured = False


def _add_trace_ids(_: Any, __: str, event: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    span = trace.get_current_span().get_span_context()
    if span.is_valid:
        event["trace_id"] = format(span.trace_id, "032x")
        event["span_id"] = format(span.span_id, "016x")
    return event


def setup(service: str, settings: Settings) -> structlog.stdlib.BoundLogger:
    """Configure logging and tracing once per process; return the service's logger."""
    global _configured
    if not _configured:
        level = logging.getLevelNamesMapping().get(settings.log_level.upper(), logging.INFO)
        structlog.configure(
            processors=[
                structlog.contextvars.merge_contextvars,
                structlog.processors.add_log_level,
                structlog.processors.TimeStamper(fmt="iso", utc=True),
                _add_trace_ids,
                structlog.processors.format_exc_info,
                structlog.processors.JSONRenderer(),
            ],
            wrapper_class=structlog.make_filtering_bound_logger(level),
            logger_factory=structlog.PrintLoggerFactory(file=sys.stderr),
            cache_logger_on_first_use=True,
        )
        provider = TracerProvider(resource=Resource.create({"service.name": f"pier-{service}"}))
        if settings.otel_exporter == "console":
            provider.add_span_processor(BatchSpanProcessor(ConsoleSpanExporter(out=sys.stderr)))
        if settings.otlp_endpoint:
            provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter(endpoint=traces_url(settings))))
        trace.set_tracer_provider(provider)
        _configured = True
    structlog.contextvars.bind_contextvars(service=service)
    return structlog.get_logger(service)


def tracing(settings: Settings) -> bool:
    """Whether spans go anywhere: hot paths skip making them when not."""
    return bool(settings.otel_exporter or settings.otlp_endpoint)


def traces_url(settings: Settings) -> str:
    """PIER_OTLP_ENDPOINT is the collector's base URL, as OTEL_EXPORTER_OTLP_ENDPOINT is."""
    base = settings.otlp_endpoint.rstrip("/")
    return base if base.endswith("/v1/traces") else base + "/v1/traces"


def tracer() -> trace.Tracer:
    return trace.get_tracer("pier")


def inject(headers: dict[str, str]) -> dict[str, str]:
    """Add the current trace context (W3C traceparent) to outgoing NATS or HTTP headers."""
    propagate.inject(headers)
    return headers


@contextmanager
def span_from(headers: Mapping[str, str] | None, name: str, **attributes: Any) -> Iterator[trace.Span]:
    """Continue the trace carried in incoming headers, as a child span named `name`."""
    ctx = propagate.extract(dict(headers or {}))
    token = otel_context.attach(ctx)
    try:
        with tracer().start_as_current_span(name, attributes=attributes) as span:
            yield span
    finally:
        otel_context.detach(token)
