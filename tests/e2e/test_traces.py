"""Traces over OTLP: with PIER_OTLP_ENDPOINT set, every service exports its spans to the collector,
and a deploy is one trace from the api's request through the builder and the scheduler.

The collector here is a stand-in (an aiohttp app decoding OTLP/HTTP protobuf with the protocol's
own message classes), since no OpenTelemetry Collector binary can be had in CI: what it checks is
what the services sent, over the real exporter."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import AsyncIterator
from pathlib import Path

import msgspec
import pytest
from aiohttp import web
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)

from pier.config import Settings
from tests.e2e.conftest import pier, running_platform
from tests.support import until


class Collector:
    """Spans received, as (service.name, span name) by trace id."""

    def __init__(self) -> None:
        self.traces: dict[bytes, set[tuple[str, str]]] = defaultdict(set)

    async def receive(self, request: web.Request) -> web.Response:
        sent = ExportTraceServiceRequest.FromString(await request.read())
        for resource_spans in sent.resource_spans:
            attributes = {a.key: a.value.string_value for a in resource_spans.resource.attributes}
            for scope in resource_spans.scope_spans:
                for span in scope.spans:
                    self.traces[span.trace_id].add((attributes.get("service.name", "?"), span.name))
        return web.Response(
            body=ExportTraceServiceResponse().SerializeToString(), content_type="application/x-protobuf"
        )


@pytest.fixture
async def collector() -> AsyncIterator[tuple[Collector, str]]:
    received = Collector()
    app = web.Application()
    app.add_routes([web.post("/v1/traces", received.receive)])
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    try:
        yield received, f"http://127.0.0.1:{port}"
    finally:
        await runner.cleanup()


async def test_a_deploy_is_one_trace_across_api_builder_and_scheduler(
    settings: Settings, collector: tuple[Collector, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    received, url = collector
    monkeypatch.setenv("OTEL_BSP_SCHEDULE_DELAY", "200")  # export every 0.2 s, not every 5 s
    code = tmp_path / "m"
    code.mkdir()
    (code / "predict.py").write_text("def predict():\n    return 1\n")
    async with running_platform(msgspec.structs.replace(settings, otlp_endpoint=url)) as platform:
        done = pier(platform, "deploy", str(code), "--name", "traced", "--unrestricted")
        assert done.returncode == 0, done.stdout + done.stderr
        called = pier(platform, "call", "traced", "--data", "{}")
        assert called.returncode == 0, called.stdout + called.stderr

        def deploy_trace() -> set[tuple[str, str]] | None:
            for spans in received.traces.values():
                if ("pier-api", "api POST /v1/models") in spans:
                    services = {service for service, _ in spans}
                    if {"pier-api", "pier-builder", "pier-scheduler"} <= services:
                        return spans
            return None

        spans = await until(deploy_trace, within=60)
        assert any(name.startswith("handle ") for service, name in spans if service == "pier-scheduler"), spans
        await until(lambda: any(s == "pier-gateway" for t in received.traces.values() for s, _ in t), within=30)
