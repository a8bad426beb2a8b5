"""What callers send the api: malicious tarballs, oversized bodies, paths in names and digests,
private git hosts, admin-only routes and a rotated admin token. Real api, PostgreSQL and NATS."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import io
import os
import tarfile
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import aiohttp
import msgspec
import pytest
from aiohttp.test_utils import TestServer

from pier import bus, db, events
from pier.config import Settings
from services.api import app as api_app
from services.api import auth
from services.api.__main__ import MIGRATIONS
from services.api.http import Context
from services.api.lifecycle import Lifecycle
from tests.tarball_attacks import huge_pax_header, link_through_link_escape, many_entries

ADMIN = "pier_inputs_admin_token"
USER = "pier_inputs_user_token"  # a token of a user who is not an admin
GZIP = {"Content-Type": "application/gzip"}
ENTRY = {"file": "predict.py", "function": "predict", "access": "unrestricted"}


@dataclass
class Api:
    session: aiohttp.ClientSession
    settings: Settings
    pool: Any
    url: str

    async def call(self, method: str, path: str, payload: Any = None, token: str = ADMIN) -> tuple[int, Any]:
        headers = {"Authorization": f"Bearer {token}"}
        async with self.session.request(method, self.url + path, json=payload, headers=headers) as resp:
            body = await resp.read()
            return resp.status, (msgspec.json.decode(body) if body else None)

    async def upload(self, data: bytes, token: str = ADMIN) -> tuple[int, Any]:
        headers = {**GZIP, "Authorization": f"Bearer {token}"}
        async with self.session.post(self.url + "/v1/sources", data=data, headers=headers) as resp:
            return resp.status, await resp.json(content_type=None)

    def stored(self) -> list[str]:
        """Every file in the artifact store's sources and spool folders."""
        found = []
        for folder in ("sources", "incoming"):
            path = self.settings.artifacts / folder
            found += [p.name for p in path.iterdir()] if path.is_dir() else []
        return found


Serve = Callable[..., Awaitable[Api]]


@pytest.fixture
async def serve(settings: Settings) -> AsyncIterator[Serve]:
    """Start the api with `settings` changed as given; everything stops when the test ends."""
    async with contextlib.AsyncExitStack() as stack:

        async def start(**changes: Any) -> Api:
            changed = msgspec.structs.replace(settings, **changes)
            b = await stack.enter_async_context(bus.connect(changed, "api"))
            pool = await db.create_pool(changed, "api")
            stack.push_async_callback(db.close_pool, pool)
            await db.migrate(pool, MIGRATIONS)
            await auth.ensure_admin(pool, ADMIN)
            await pool.execute("INSERT INTO users (name) VALUES ('ada') ON CONFLICT DO NOTHING")
            await pool.execute(
                "INSERT INTO api_tokens (id, user_name, name, hash) VALUES ($1, 'ada', 'laptop', $2)"
                " ON CONFLICT DO NOTHING",
                events.new_id(),
                auth.token_hash(USER),
            )
            server = TestServer(api_app.build(Context(pool, b, Lifecycle(pool, b, changed), changed)))
            await server.start_server()
            stack.push_async_callback(server.close)
            session = await stack.enter_async_context(aiohttp.ClientSession())
            return Api(session, changed, pool, str(server.make_url("")).rstrip("/"))

        yield start


# ---- tarballs -------------------------------------------------------------------------------


async def test_a_link_through_link_upload_is_400_naming_the_link_and_nothing_is_stored(serve: Serve) -> None:
    api = await serve()
    status, body = await api.upload(link_through_link_escape())
    assert status == 400, body
    assert "goes through the symbolic link 'a'" in body["detail"] and body["errors"][0]["field"] == "body"
    assert api.stored() == []


async def test_a_huge_pax_header_is_400_naming_the_header_limit(serve: Serve) -> None:
    api = await serve()
    status, body = await api.upload(huge_pax_header(32 * 1024 * 1024))
    assert status == 400, body
    assert "extended (PAX or long name) header of over 65536 bytes" in body["detail"]
    assert api.stored() == []


async def test_300000_entries_are_refused_at_the_entry_limit(serve: Serve) -> None:
    api = await serve()
    data = many_entries(300_000)
    assert len(data) < 2 * 1024 * 1024
    status, body = await api.upload(data)
    assert status == 400, body
    assert f"more than {api.settings.max_source_entries} entries" in body["detail"]
    assert api.stored() == []


# ---- body limits ----------------------------------------------------------------------------


def _incompressible_source(size: int) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        for name, data in (("predict.py", b"def predict():\n    return 1\n"), ("weights.bin", os.urandom(size))):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


async def test_a_body_over_the_default_limit_is_413_on_any_route_but_a_source_upload(serve: Serve) -> None:
    api = await serve(api_max_body_bytes=64 * 1024)
    big_json = {"name": "big", "source": "0" * 64, **ENTRY, "pad": "x" * 100_000}
    status, body = await api.call("POST", "/v1/models", big_json)
    assert status == 413 and "65536" in body["detail"], body
    status, body = await api.call("POST", "/v1/git-credentials", {"name": "big", "token": "x" * 100_000})
    assert status == 413, body

    source = _incompressible_source(200_000)
    status, body = await api.upload(source)
    assert status == 201, body
    assert body == {"digest": hashlib.sha256(source).hexdigest(), "size": len(source)}
    assert api.stored() == [f"{body['digest']}.tar.gz"]  # and no spool file left behind


async def test_a_streamed_source_over_the_limit_is_413_and_leaves_nothing(serve: Serve) -> None:
    api = await serve(max_source_bytes=100_000)

    async def chunks() -> AsyncIterator[bytes]:
        data = _incompressible_source(300_000)  # no Content-Length: the limit is found while streaming
        for start in range(0, len(data), 16_384):
            yield data[start : start + 16_384]

    headers = {**GZIP, "Authorization": f"Bearer {ADMIN}"}
    async with api.session.post(api.url + "/v1/sources", data=chunks(), headers=headers) as resp:
        assert resp.status == 413
        assert "over the limit of 100000 bytes" in (await resp.json(content_type=None))["detail"]
    assert api.stored() == []


# ---- paths from requests --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("fields", "planted", "field"),
    [
        ({"source": "../../stolen"}, "stolen.tar.gz", "source"),
        ({"source": "A" * 64}, f"artifacts/sources/{'A' * 64}.tar.gz", "source"),
        ({"source": "0" * 63}, f"artifacts/sources/{'0' * 63}.tar.gz", "source"),
        ({"git": "file:///tmp/repo", "git_credential": "../../stolen"}, "stolen.json", "git_credential"),
        (
            {"git": "file:///tmp/repo", "git_credential": "Deploy"},
            "artifacts/credentials/Deploy.json",
            "git_credential",
        ),
    ],
    ids=["dotdot-digest", "upper-hex", "short-digest", "dotdot-credential", "upper-credential"],
)
async def test_a_digest_or_credential_name_that_could_be_a_path_is_400_naming_the_field(
    serve: Serve, fields: dict[str, str], planted: str, field: str
) -> None:
    api = await serve(git_schemes="https,ssh,file")
    # What the path would reach if it were built from the caller's text: a file there exists.
    for folder in ("sources", "credentials"):  # as on any store that has seen an upload and a credential
        (api.settings.artifacts / folder).mkdir(parents=True, exist_ok=True)
    target = api.settings.home / planted
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_bytes(b'{"name": "stolen", "token": "t"}' if planted.endswith(".json") else b"\x1f\x8b")
    status, body = await api.call("POST", "/v1/models", {"name": "paths", **ENTRY, **fields})
    assert status == 400, body
    assert body["errors"][0]["field"] == field


# ---- git hosts ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "url",
    ["https://127.0.0.1/repo.git", "https://localhost/repo.git", "ssh://git@10.1.2.3/repo.git",
     "git@169.254.169.254:repo.git", "https://[::1]/repo.git"],
)  # fmt: skip
async def test_git_to_a_private_address_is_400_unless_an_admin_allows_the_range(serve: Serve, url: str) -> None:
    api = await serve()
    status, body = await api.call("POST", "/v1/models", {"name": "private", "git": url, **ENTRY})
    assert status == 400, body
    assert body["errors"][0]["field"] == "git" and "PIER_GIT_ALLOW_NETWORKS" in body["detail"]


async def test_an_allowed_private_range_lets_the_git_source_through(serve: Serve) -> None:
    api = await serve(git_allow_networks="127.0.0.0/8, 10.0.0.0/8")
    for name, url in (("loop", "https://127.0.0.1/repo.git"), ("ten", "ssh://git@10.1.2.3/repo.git")):
        status, body = await api.call("POST", "/v1/models", {"name": name, "git": url, **ENTRY})
        assert status == 201, body
    status, body = await api.call("POST", "/v1/models", {"name": "other", "git": "https://192.168.1.1/r.git", **ENTRY})
    assert status == 400 and "192.168.1.1" in body["detail"], body


# ---- admin only -----------------------------------------------------------------------------


async def test_only_the_admin_registers_git_credentials_or_schedules_commands(serve: Serve) -> None:
    api = await serve()
    credential = {"name": "deploy", "token": "ghp_x"}
    status, body = await api.call("POST", "/v1/git-credentials", credential, token=USER)
    assert status == 403 and body["title"] == "Forbidden" and "admin" in body["detail"], body
    assert await api.call("GET", "/v1/git-credentials", token=USER) == (200, [])
    assert (await api.call("POST", "/v1/git-credentials", credential))[0] == 201

    digest = (await api.upload(_incompressible_source(10)))[1]["digest"]
    status, body = await api.call("POST", "/v1/models", {"name": "sched", "source": digest, **ENTRY}, token=USER)
    assert status == 201, body
    schedule = {"cron": "0 3 * * *", "command": "cat /etc/shadow"}
    status, body = await api.call("POST", "/v1/models/sched/schedules", schedule, token=USER)
    assert status == 403 and "admin" in body["detail"], body
    assert (await api.call("GET", "/v1/models/sched/schedules", token=USER)) == (200, [])
    assert (await api.call("POST", "/v1/models/sched/schedules", schedule))[0] == 201


async def test_a_new_admin_token_at_start_makes_the_old_one_stop_working(serve: Serve) -> None:
    api = await serve()
    assert (await api.call("GET", "/v1/models"))[0] == 200
    await auth.ensure_admin(api.pool, "pier_rotated_admin_token")  # what the api does at start
    status, body = await api.call("GET", "/v1/models")
    assert status == 401, body
    assert (await api.call("GET", "/v1/models", token="pier_rotated_admin_token"))[0] == 200
    assert (await api.call("GET", "/v1/models", token=USER))[0] == 200  # other users' tokens stay


async def test_the_token_query_parameter_is_accepted_only_on_the_live_log_stream(serve: Serve) -> None:
    api = await serve()
    async with api.session.get(api.url + f"/v1/models?token={ADMIN}") as resp:
        assert resp.status == 401
    digest = (await api.upload(_incompressible_source(10)))[1]["digest"]
    assert (await api.call("POST", "/v1/models", {"name": "logs", "source": digest, **ENTRY}))[0] == 201
    async with api.session.get(api.url + f"/v1/models/logs/logs?token={ADMIN}") as resp:
        assert resp.status == 401
    async with asyncio.timeout(10):
        async with api.session.get(api.url + f"/v1/models/logs/logs?follow=true&token={ADMIN}") as resp:
            assert resp.status == 200 and resp.content_type == "text/event-stream"


# ---- kept: tokens as hashes, SQL placeholders -------------------------------------------------


async def test_a_model_token_is_kept_and_published_only_as_its_hash(serve: Serve) -> None:
    api = await serve()
    digest = (await api.upload(_incompressible_source(10)))[1]["digest"]
    assert (await api.call("POST", "/v1/models", {"name": "vault", "source": digest, **ENTRY}))[0] == 201
    status, created = await api.call("POST", "/v1/models/vault/tokens", {"name": "ci"})
    assert status == 201, created
    secret = created["token"]
    rows = [dict(r) for r in await api.pool.fetch("SELECT * FROM model_tokens")]
    assert [r["hash"] for r in rows] == [hashlib.sha256(secret.encode()).hexdigest()]
    assert secret not in repr(rows)
    async with bus.connect(api.settings, "test-reader") as b:
        kv = await b.kv(events.TOKENS_BUCKET)
        published = (await kv.get(created["id"])).value or b""
    assert hashlib.sha256(secret.encode()).hexdigest().encode() in published and secret.encode() not in published
    assert secret not in (await api.call("GET", "/v1/models/vault/tokens"))[1].__repr__()


HOSTILE = ["x'; DROP TABLE models; --", 'x" OR 1=1 --', "$1", "%' OR '1'='1"]


@pytest.mark.parametrize("text", HOSTILE)
async def test_caller_text_reaches_sql_only_as_a_parameter(serve: Serve, text: str) -> None:
    api = await serve()
    digest = (await api.upload(_incompressible_source(10)))[1]["digest"]
    assert (await api.call("POST", "/v1/models", {"name": "kept", "source": digest, **ENTRY}))[0] == 201
    quoted = aiohttp.helpers.quote(text, safe="")  # type: ignore[attr-defined]
    for path in (f"/v1/models/{quoted}", f"/v1/sources/{quoted}", f"/v1/models/{quoted}/tokens"):
        status, body = await api.call("GET", path)
        assert status == 404, (path, body)
    status, body = await api.call("GET", f"/v1/models/kept/logs?instance={quoted}")
    assert status == 200 and body["lines"] == [], body
    status, body = await api.call("POST", "/v1/models/kept/tokens", {"name": text})
    assert status == 201 and body["name"] == text, body  # stored as given, never spliced into SQL
    assert [t["name"] for t in (await api.call("GET", "/v1/models/kept/tokens"))[1]] == [text]
    listed = await api.call("GET", "/v1/models")
    assert listed[0] == 200 and [m["name"] for m in listed[1]] == ["kept"]
