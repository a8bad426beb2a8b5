"""The audit feed: every management change an event, paged and live, readable only by those allowed."""

from __future__ import annotations

import asyncio
import contextlib
import gzip
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import aiohttp
import asyncpg
import nats
import pytest
from aiohttp.test_utils import TestServer

from pier import bus, db, events, outbox
from pier.artifacts import Store
from pier.bus import Bus
from pier.config import Settings
from pier.tasks import cancel_and_wait
from services.api import app as api_app
from services.api import audit, auth
from services.api.__main__ import MIGRATIONS
from services.api.http import Context
from services.api.lifecycle import CHANNEL, Lifecycle
from tests.support import until

ADMIN = "pier_audit_admin_token"
BOB = "pier_audit_bob_token"  # a user who is no admin


@dataclass
class Api:
    admin: aiohttp.ClientSession
    bob: aiohttp.ClientSession
    url: str
    settings: Settings
    pool: asyncpg.Pool
    bus: Bus


@pytest.fixture
async def api(settings: Settings) -> AsyncIterator[Api]:
    """The api's HTTP app with its outbox relay on a real database and NATS, and a second user."""
    async with bus.connect(settings, "api") as b:
        pool = await db.create_pool(settings, "api")
        await db.migrate(pool, MIGRATIONS)
        await auth.ensure_admin(pool, ADMIN)
        await pool.execute("INSERT INTO users (name, is_admin) VALUES ('bob', false)")
        await pool.execute(
            "INSERT INTO api_tokens (id, user_name, name, hash) VALUES ($1, 'bob', 'bob', $2)",
            events.new_id(),
            auth.token_hash(BOB),
        )
        server = TestServer(api_app.build(Context(pool, b, Lifecycle(pool, b, settings), settings)))
        await server.start_server()
        relay = asyncio.create_task(outbox.Relay(pool, b, CHANNEL).run())
        url = str(server.make_url("/"))
        try:
            async with (
                aiohttp.ClientSession(base_url=url, headers={"Authorization": f"Bearer {ADMIN}"}) as admin,
                aiohttp.ClientSession(base_url=url, headers={"Authorization": f"Bearer {BOB}"}) as bob,
            ):
                yield Api(admin, bob, url, settings, pool, b)
        finally:
            await cancel_and_wait([relay])
            await server.close()
            await db.close_pool(pool)


async def _create(session: aiohttp.ClientSession, settings: Settings, name: str) -> dict[str, Any]:
    source = Store(settings.artifacts).put_source(gzip.compress(b"the builder is not running"))
    spec = {"name": name, "source": source, "file": "predict.py", "function": "predict"}
    async with session.post("/v1/models", json=spec) as r:
        assert r.status == 201, await r.text()
        return dict(await r.json())


async def _token(session: aiohttp.ClientSession, model: str, name: str) -> dict[str, Any]:
    async with session.post(f"/v1/models/{model}/tokens", json={"name": name}) as r:
        assert r.status == 201, await r.text()
        return dict(await r.json())


async def _feed(session: aiohttp.ClientSession, **query: Any) -> tuple[int, Any]:
    async with session.get("/v1/events", params={k: str(v) for k, v in query.items()}) as r:
        return r.status, await r.json(content_type=None)


async def test_changes_are_events_naming_the_actor_and_the_changed_fields_and_no_secret(api: Api) -> None:
    published: list[tuple[str, bytes]] = []
    nc = await nats.connect(api.settings.nats_url)
    sub = await nc.jetstream().subscribe(f"{events.AUDIT_PREFIX}.>", ordered_consumer=True)
    try:
        model = await _create(api.bob, api.settings, "ledger")
        token = await _token(api.bob, "ledger", "ci")
        async with api.bob.patch("/v1/models/ledger", json={"request_timeout": 30}) as r:
            assert r.status == 200, await r.text()
        async with api.bob.delete(f"/v1/models/ledger/tokens/{token['id']}") as r:
            assert r.status < 300, await r.text()
        async with api.bob.patch("/v1/models/ledger", json={"request_timeout": -1}) as r:
            assert r.status == 400  # a refused change is no event

        status, page = await _feed(api.bob, model="ledger")
        assert status == 200, page
        got = page["events"]
        assert [e["action"] for e in got] == ["token.revoke", "settings.change", "token.create", "model.create"]
        assert {e["actor"] for e in got} == {"bob"}
        assert all(e["model"] == {"id": model["id"], "name": "ledger"} for e in got)
        revoke, change, create_token, create = got
        assert change["before"] == {"request_timeout": 60.0}
        assert change["after"] == {"request_timeout": 30.0}
        assert create_token["fields"] == {"name": "ci", "id": token["id"]}
        assert revoke["fields"] == {"token_id": token["id"]}
        assert create["before"] == {} and create["after"]["owner"] == "bob" and create["after"]["versions"] == [1]

        # The same events on NATS, one subject per model API and action.
        async def all_published() -> bool:
            with contextlib.suppress(nats.errors.TimeoutError):
                while True:
                    msg = await sub.next_msg(timeout=0.2)
                    published.append((msg.subject, msg.data))
            return len(published) >= 4

        await until(all_published)
        subjects = [s for s, _ in published]
        assert f"{events.AUDIT_PREFIX}.{model['id']}.token.create" in subjects
        assert f"{events.AUDIT_PREFIX}.{model['id']}.settings.change" in subjects
        stored = await api.pool.fetch("SELECT event FROM audit_events")
        everything = json.dumps(page) + "".join(d.decode() for _, d in published) + str([r[0] for r in stored])
        assert token["token"] not in everything
        assert events.token_hash(token["token"]) not in everything
    finally:
        await nc.close()


async def test_the_cursor_pages_newest_first_without_overlap_or_gap(api: Api) -> None:
    await _create(api.admin, api.settings, "paged")
    for n in range(23):
        await _token(api.admin, "paged", f"t{n}")
    seen: list[int] = []
    before: int | None = None
    while True:
        query: dict[str, Any] = {"model": "paged", "limit": 5}
        if before is not None:
            query["before"] = before
        status, page = await _feed(api.admin, **query)
        assert status == 200, page
        seen += [e["id"] for e in page["events"]]
        before = page["next_before"]
        if before is None:
            break
    _, whole = await _feed(api.admin, model="paged", limit=500)
    assert seen == [e["id"] for e in whole["events"]]
    assert len(seen) == 24 and seen == sorted(seen, reverse=True) and len(set(seen)) == 24


@pytest.mark.parametrize(
    ("query", "field"), [({"limit": 0}, "limit"), ({"limit": 501}, "limit"), ({"limit": "x"}, "limit"),
                         ({"before": "x"}, "before"), ({"follow": "maybe"}, "follow")]
)  # fmt: skip
async def test_bad_feed_queries_are_400_naming_the_field(api: Api, query: dict[str, Any], field: str) -> None:
    status, problem = await _feed(api.admin, **query)
    assert status == 400
    assert [e["field"] for e in problem["errors"]] == [field]


async def test_editors_owners_and_admins_read_a_model_apis_history_and_admins_alone_the_whole(api: Api) -> None:
    await _create(api.admin, api.settings, "admins")
    await _create(api.bob, api.settings, "bobs")
    # Private (the default): to bob it does not exist; public, he is a viewer, who may not read it.
    assert (await _feed(api.bob, model="admins"))[0] == 404
    async with api.admin.patch("/v1/models/admins", json={"visibility": "public"}) as r:
        assert r.status == 200, await r.text()
    assert (await _feed(api.bob, model="admins"))[0] == 403
    async with api.admin.put("/v1/models/admins/collaborators/bob", json={"role": "editor"}) as r:
        assert r.status == 200, await r.text()
    assert (await _feed(api.bob, model="admins"))[0] == 200
    assert (await _feed(api.bob))[0] == 403
    assert (await _feed(api.bob, model="bobs"))[0] == 200
    assert (await _feed(api.admin, model="bobs"))[0] == 200
    status, whole = await _feed(api.admin)
    assert status == 200
    assert {e["model"]["name"] for e in whole["events"]} == {"admins", "bobs"}
    assert (await _feed(api.bob, model="nothing-here"))[0] == 404


async def test_the_openapi_document_describes_the_feed(api: Api) -> None:
    async with api.bob.get("/v1/openapi.json") as r:
        document = await r.json()
    answer = document["paths"]["/v1/events"]["get"]["responses"]["200"]["content"]["application/json"]
    assert answer["schema"] == {"$ref": "#/components/schemas/EventPage"}
    assert "recovered" in document["components"]["schemas"]["AuditEvent"]["properties"]


async def _read_events(response: aiohttp.ClientResponse, into: list[dict[str, Any]], stop_at: int) -> None:
    """Parse server-sent events into `into` until it holds `stop_at` of them."""
    data: list[str] = []
    event_id: str | None = None
    async for raw in response.content:
        line = raw.decode().rstrip("\r\n")
        if line.startswith("id:"):
            event_id = line[3:].strip()
        elif line.startswith("data:"):
            data.append(line[5:].strip())
        elif not line and data:
            event = json.loads("\n".join(data))
            assert str(event["id"]) == event_id
            into.append(event)
            data = []
            if len(into) >= stop_at:
                return


async def test_a_follower_that_reconnects_with_last_event_id_misses_none_and_sees_none_twice(api: Api) -> None:
    await _create(api.admin, api.settings, "followed")
    made: list[str] = []

    async def changes(count: int) -> None:
        for _ in range(count):
            made.append((await _token(api.admin, "followed", f"n{len(made)}"))["name"])

    received: list[dict[str, Any]] = []
    async with api.admin.get("/v1/events", params={"model": "followed", "follow": "true"}) as r:
        assert r.headers["Content-Type"].startswith("text/event-stream")
        maker = asyncio.create_task(changes(120))  # made while following, during the gap, and after
        async with asyncio.timeout(60):
            await _read_events(r, received, 50)
    # Disconnected: changes go on. Then back, as an EventSource would, with the last id it saw.
    await until(lambda: len(made) >= 80, within=60)
    headers = {"Last-Event-ID": str(received[-1]["id"])}
    async with api.admin.get("/v1/events", params={"model": "followed", "follow": "true"}, headers=headers) as r:
        await maker
        await changes(80)
        async with asyncio.timeout(60):
            await _read_events(r, received, 200)
    names = [e["fields"]["name"] for e in received]
    assert names == made  # every one, once, in order
    assert [e["id"] for e in received] == sorted({e["id"] for e in received})


async def test_an_event_source_resumes_with_last_event_id_and_token_in_the_query(api: Api) -> None:
    """A browser's EventSource can set no header: the token and the cursor come as parameters."""
    await _create(api.admin, api.settings, "browser")
    first = await _token(api.admin, "browser", "one")
    _, page = await _feed(api.admin, model="browser")
    after = page["events"][0]["id"]  # the token.create event
    await _token(api.admin, "browser", "two")
    query = {"model": "browser", "follow": "true", "last_event_id": str(after), "token": ADMIN}
    async with aiohttp.ClientSession() as anonymous, anonymous.get(f"{api.url}v1/events", params=query) as r:
        assert r.status == 200
        received: list[dict[str, Any]] = []
        async with asyncio.timeout(30):
            await _read_events(r, received, 1)
    assert received[0]["fields"]["name"] == "two"
    assert first["token"] not in json.dumps(received)
    async with (
        aiohttp.ClientSession() as anonymous,
        anonymous.get(f"{api.url}v1/events", params=query | {"follow": "false"}) as r,
    ):
        assert r.status == 401  # the query token is for the live feed only


async def test_a_change_whose_api_died_before_recording_it_is_recovered_and_a_running_one_is_not(api: Api) -> None:
    """What an api killed between a change and its event leaves: a pending row whose lock is gone.
    (tests/e2e/test_audit.py kills a real api there.)"""
    model = await _create(api.admin, api.settings, "crashed")
    async with api.pool.acquire() as conn:
        snapshot = await audit.snapshot(conn, model["id"])
        assert snapshot is not None
        pending = await conn.fetchval(
            "INSERT INTO audit_pending (at, actor, action, model_id, model_ref, before, fields)"
            " VALUES (0, 'admin', 'settings.change', $1, 'crashed', $2, '{}') RETURNING id",
            model["id"],
            json.dumps({**snapshot, "request_timeout": 5.0}),
        )
        # Its request still runs while its lock is held.
        await conn.execute("SELECT pg_advisory_lock($1)", -pending)
        assert await audit.recover(api.pool) == 0
        await conn.execute("SELECT pg_advisory_unlock($1)", -pending)
    await audit.recover(api.pool)  # the api's own loop may have been first: either way, once
    _, page = await _feed(api.admin, model="crashed")
    assert [e["action"] for e in page["events"]] == ["settings.change", "model.create"]
    event = page["events"][0]
    assert event["action"] == "settings.change" and event["recovered"] is True
    assert event["before"] == {"request_timeout": 5.0} and event["after"] == {"request_timeout": 60.0}
    assert await api.pool.fetchval("SELECT count(*) FROM audit_pending") == 0


async def test_events_are_kept_for_the_configured_days(api: Api) -> None:
    await _create(api.admin, api.settings, "kept")
    async with api.pool.acquire() as conn, conn.transaction():
        await audit.record(conn, actor="admin", action="model.stop", before=None, after=None, fields={}, at=1.0)
    assert await audit.prune(api.pool, api.settings.audit_max_age_days) == 1
    _, page = await _feed(api.admin)
    assert [e["action"] for e in page["events"]] == ["model.create"]
    stream = await api.bus.js.stream_info(events.AUDIT_STREAM)
    assert stream.config.max_age == 90 * 86400
