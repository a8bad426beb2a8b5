"""The dashboard's side of the api: its page and files, the live model list, and the tester's call
through the gateway. Real api, PostgreSQL and NATS; the gateway is a stand-in that records calls."""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import tarfile
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import msgspec
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from infra.embedded import free_port
from pier import bus, db
from pier.config import Settings
from services.api import app as api_app
from services.api import auth
from services.api.__main__ import MIGRATIONS
from services.api.http import Context
from services.api.lifecycle import Lifecycle

ADMIN = "pier_dashboard_admin_token"
ENTRY = {"file": "predict.py", "function": "predict"}


@dataclass
class Gateway:
    """Answers every call with 503 and Retry-After, as a shedding gateway does; keeps what it got."""

    calls: list[dict[str, Any]] = field(default_factory=list)

    async def handle(self, request: web.Request) -> web.Response:
        self.calls.append(
            {
                "method": request.method,
                "path": request.path,
                "auth": request.headers.get("Authorization"),
                "body": await request.text(),
            }
        )
        return web.json_response(
            {"error": {"type": "overloaded", "message": "busy"}}, status=503, headers={"Retry-After": "2"}
        )


@dataclass
class Api:
    session: aiohttp.ClientSession
    url: str
    gateway: Gateway

    async def call(
        self, method: str, path: str, payload: Any = None, raw: bytes | None = None, token: str = ADMIN
    ) -> tuple[int, Any]:
        headers = {"Authorization": f"Bearer {token}"}
        data = raw if raw is not None else (json.dumps(payload) if payload is not None else None)
        async with self.session.request(method, self.url + path, data=data, headers=headers) as r:
            text = await r.text()
            return r.status, (json.loads(text) if text and "json" in r.content_type else text)


def _tarball() -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        data = b"def predict(**kw):\n    return kw\n"
        info = tarfile.TarInfo("predict.py")
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


@pytest.fixture
async def api(settings: Settings) -> AsyncIterator[Api]:
    gateway = Gateway()
    async with contextlib.AsyncExitStack() as stack:
        stand_in = web.Application()
        stand_in.router.add_route("*", "/{tail:.*}", gateway.handle)
        runner = web.AppRunner(stand_in)
        await runner.setup()
        stack.push_async_callback(runner.cleanup)
        port = free_port()
        await web.TCPSite(runner, "127.0.0.1", port).start()
        settings = msgspec.structs.replace(settings, gateway_host="127.0.0.1", gateway_port=port)
        b = await stack.enter_async_context(bus.connect(settings, "api"))
        pool = await db.create_pool(settings, "api")
        stack.push_async_callback(db.close_pool, pool)
        await db.migrate(pool, MIGRATIONS)
        await auth.ensure_admin(pool, ADMIN)
        server = TestServer(api_app.build(Context(pool, b, Lifecycle(pool, b, settings), settings)))
        await server.start_server()
        stack.push_async_callback(server.close)
        session = await stack.enter_async_context(aiohttp.ClientSession())
        yield Api(session, str(server.make_url("")).rstrip("/"), gateway)


async def _model(api: Api, name: str) -> dict[str, Any]:
    status, source = await api.call("POST", "/v1/sources", raw=_tarball())
    assert status == 201, source
    status, model = await api.call("POST", "/v1/models", {"name": name, "source": source["digest"], **ENTRY})
    assert status == 201, model
    return model


async def test_the_page_and_its_files_are_served_with_their_types_and_headers(api: Api) -> None:
    async with api.session.get(api.url + "/") as page:
        assert page.status == 200
        assert page.content_type == "text/html"
        assert page.headers["Cache-Control"] == "no-cache"
        assert "default-src 'self'" in page.headers["Content-Security-Policy"]
        html = await page.text()
    assert '<script type="module" src="/static/app.js"></script>' in html
    async with api.session.get(api.url + "/static/app.js") as script:
        assert script.status == 200
        assert script.content_type == "text/javascript"
        assert script.headers["ETag"]
    async with api.session.get(api.url + "/static/style.css") as style:
        assert (style.status, style.content_type) == (200, "text/css")


@pytest.mark.parametrize("name", ["..%2Fdashboard.py", "%2E%2E%2Fhttp.py", "nothing.js", "__init__.py"])
async def test_no_file_outside_the_dashboards_own_is_served(api: Api, name: str) -> None:
    async with api.session.get(api.url + "/static/" + name) as answer:
        assert answer.status == 404
        assert "def " not in await answer.text()


async def test_the_live_model_list_sends_each_model_api_then_its_changes(api: Api) -> None:
    await _model(api, "alpha")
    headers = {"Authorization": f"Bearer {ADMIN}"}
    async with api.session.get(api.url + "/v1/models?follow=true", headers=headers) as stream:
        assert stream.status == 200
        assert stream.content_type == "text/event-stream"
        events = _events(stream)
        kind, shown = await anext(events)
        assert (kind, shown["name"], shown["state"], shown["labels"]) == ("model", "alpha", "building", {})
        beta = await _model(api, "beta")
        kind, shown = await anext(events)
        assert (kind, shown["name"]) == ("model", "beta")
        assert (await api.call("PATCH", "/v1/models/alpha", {"visibility": "public"}))[0] == 200
        kind, shown = await anext(events)
        assert (kind, shown["name"], shown["visibility"]) == ("model", "alpha", "public")
        assert (await api.call("DELETE", "/v1/models/beta"))[0] < 300
        # Terminating passes through `stopping` before the model API leaves the list.
        while kind != "removed":
            kind, shown = await anext(events)
        assert shown == {"id": beta["id"]}


async def _events(stream: aiohttp.ClientResponse) -> AsyncIterator[tuple[str, Any]]:
    """(event kind, data) of each server-sent event, for at most 30 s."""
    kind = ""
    async with asyncio.timeout(30):
        async for raw in stream.content:
            line = raw.decode().rstrip("\n")
            if line.startswith("event: "):
                kind = line.removeprefix("event: ")
            elif line.startswith("data: "):
                yield kind, json.loads(line.removeprefix("data: "))


async def test_the_tester_calls_through_the_gateway_and_answers_a_503_with_retry_after_as_such(api: Api) -> None:
    model = await _model(api, "tried")
    body = {"data": {"x": 1}}
    status, answer = await api.call(
        "POST", "/v1/models/tried/try", {"path": "model", "body": body, "token": "tok_secret"}
    )
    assert status == 200, answer
    assert answer["status"] == 503
    assert answer["headers"]["Retry-After"] == "2"
    assert json.loads(answer["body"])["error"]["type"] == "overloaded"
    assert answer["time_ms"] >= 0
    assert api.gateway.calls == [
        {
            "method": "POST",
            "path": f"/models/{model['id']}/latest/model",
            "auth": "Bearer tok_secret",
            "body": json.dumps(body),
        }
    ]
    status, answer = await api.call(
        "POST", "/v1/models/tried/try", {"path": "predict", "label": "prod", "method": "GET"}
    )
    assert status == 200
    assert api.gateway.calls[-1]["path"] == f"/models/{model['id']}/labels/prod/predict"
    assert api.gateway.calls[-1]["auth"] is None


@pytest.mark.parametrize(
    ("given", "field"),
    [({"path": "../../v1/users"}, "path"), ({"label": "../x"}, "label"), ({"method": "TRACE"}, "method")],
)
async def test_the_tester_refuses_a_path_out_of_the_model_api(api: Api, given: dict[str, str], field: str) -> None:
    await _model(api, "guarded")
    status, answer = await api.call("POST", "/v1/models/guarded/try", given)
    assert status == 400
    assert answer["errors"][0]["field"] == field
    assert api.gateway.calls == []
