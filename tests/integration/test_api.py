"""The management API on its own: validation, auth, and what a create commits."""

from __future__ import annotations

import asyncio
import gzip
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest

from pier import bus, db
from pier.artifacts import Store
from pier.config import Settings
from pier.events import StartBuild
from pier.tasks import cancel_and_wait
from services.api import app as api_app
from services.api import auth
from services.api.__main__ import MIGRATIONS
from services.api.http import Context
from services.api.lifecycle import CHANNEL, Lifecycle

TOKEN = "pier_test_token"


@pytest.fixture
async def api(settings: Settings) -> AsyncIterator[tuple[aiohttp.ClientSession, Settings]]:
    """The api's HTTP app with its outbox relay, on a real database and NATS."""
    from aiohttp.test_utils import TestServer

    from pier import outbox

    async with bus.connect(settings, "api") as b:
        pool = await db.create_pool(settings, "api")
        await db.migrate(pool, MIGRATIONS)
        await auth.ensure_admin(pool, TOKEN)
        server = TestServer(api_app.build(Context(pool, b, Lifecycle(pool, b, settings), settings)))
        await server.start_server()
        relay = asyncio.create_task(outbox.Relay(pool, b, CHANNEL).run())
        try:
            async with aiohttp.ClientSession(
                base_url=str(server.make_url("/")), headers={"Authorization": f"Bearer {TOKEN}"}
            ) as session:
                yield session, settings
        finally:
            await cancel_and_wait([relay])
            await server.close()
            await db.close_pool(pool)


def _source(settings: Settings) -> str:
    return Store(settings.artifacts).put_source(gzip.compress(b"not really a tar, the builder is not running"))


async def test_requests_without_a_valid_token_get_401(api: tuple[aiohttp.ClientSession, Settings]) -> None:
    session, _ = api
    async with aiohttp.ClientSession(base_url=session._base_url) as anonymous:
        async with anonymous.get("/v1/models") as r:
            assert r.status == 401
            assert r.headers["WWW-Authenticate"].startswith("Bearer")
        async with anonymous.get("/v1/models", headers={"Authorization": "Bearer nope"}) as r:
            assert r.status == 401
        async with anonymous.get("/v1/health") as r:
            assert r.status == 200


async def test_create_with_bad_fields_is_400_naming_each_field(api: tuple[aiohttp.ClientSession, Settings]) -> None:
    session, settings = api
    async with session.post(
        "/v1/models", json={"name": "Bad Name!", "source": "x", "file": "p.py", "function": "f"}
    ) as r:
        body = await r.json()
        assert r.status == 400
        assert r.content_type == "application/problem+json"
        assert body["errors"][0]["field"] == "name"
    async with session.post("/v1/models", json={"name": "ok", "source": _source(settings), "function": "f"}) as r:
        assert r.status == 400
        assert (await r.json())["errors"][0]["field"] == "file"
    async with session.post(
        "/v1/models", json={"name": "ok", "source": "0" * 64, "file": "p.py", "function": "f"}
    ) as r:
        assert r.status == 400
        assert (await r.json())["errors"][0]["field"] == "source"
    async with session.get("/v1/models") as r:
        assert await r.json() == []  # nothing half-written


async def test_create_commits_the_model_and_asks_for_a_build(api: tuple[aiohttp.ClientSession, Settings]) -> None:
    session, settings = api
    spec = {"name": "hello", "source": _source(settings), "file": "predict.py", "function": "predict"}
    async with session.post("/v1/models", json=spec) as r:
        assert r.status == 201, await r.text()
        model = await r.json()
    assert model["state"] == "building"
    assert [v["number"] for v in model["versions"]] == [1]
    async with session.post("/v1/models", json=spec) as r:
        assert r.status == 409
    builds: list[StartBuild] = []
    async with bus.connect(settings, "probe") as b:

        async def got(cmd: StartBuild) -> None:
            builds.append(cmd)

        task = asyncio.create_task(b.consume([StartBuild], got, durable="probe"))
        try:
            from tests.support import until

            await until(lambda: builds)
        finally:
            await cancel_and_wait([task])
    assert builds[0].model_id == model["id"] and builds[0].version == 1
    assert builds[0].entrypoint.function == "predict"


async def test_openapi_document_lists_the_model_routes(api: tuple[aiohttp.ClientSession, Settings]) -> None:
    session, _ = api
    async with session.get("/v1/openapi.json") as r:
        doc = await r.json()
    assert "/v1/models" in doc["paths"]
    assert "CreateModel" in doc["components"]["schemas"]
    # Read from the router: every route of every module is there, tokens and logs included.
    assert "post" in doc["paths"]["/v1/models/{ref}/tokens"]
    assert "get" in doc["paths"]["/v1/models/{ref}/logs"]
    assert doc["paths"]["/v1/models/{ref}/stop"]["post"]["parameters"][0]["name"] == "ref"


def test_example_exists() -> None:
    assert (Path(__file__).parents[2] / "examples" / "hello" / "predict.py").exists()


async def test_routes_alone_make_a_model_api_and_nothing_at_all_is_400(
    api: tuple[aiohttp.ClientSession, Settings],
) -> None:
    session, settings = api
    routes = [{"path": "/classify", "file": "text.py", "function": "classify"}]
    async with session.post("/v1/models", json={"name": "routed", "source": _source(settings), "routes": routes}) as r:
        assert r.status == 201, await r.text()
        version = (await r.json())["versions"][0]
    assert version["entrypoint"] == {"routes": [{"path": "/classify", "file": "text.py", "function": "classify"}]}
    async with session.post("/v1/models", json={"name": "empty", "source": _source(settings)}) as r:
        assert r.status == 400
        assert (await r.json())["errors"][0]["field"] == "file"
