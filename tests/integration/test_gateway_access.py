"""Access tokens at the gateway: Bearer and Basic, 401s that reveal nothing, revocation on every gateway."""

from __future__ import annotations

import base64
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import msgspec
import pytest

from infra.embedded import free_port
from pier import bus
from pier.config import Settings
from pier.events import KEYS_BUCKET, TOKENS_BUCKET, KeyRecord, TokenRecord, new_token, token_hash
from services.gateway.app import running
from tests.integration import test_gateway
from tests.integration.test_gateway import (
    ENTRYPOINT,
    MODEL_CODE,
    Env,
    instance,
    route_record,
    start_harness,
)
from tests.support import until

env = test_gateway.env  # the fixture: the gateway under test


async def put_token(env: Env, model_id: str, *, revoked: bool = False, secret: str | None = None) -> str:
    if secret is None:
        secret, prefix = new_token()
    else:
        prefix = secret[5:17]
    kv = await env.bus.kv(TOKENS_BUCKET)
    record = TokenRecord(prefix=prefix, model_id=model_id, hash=token_hash(secret), revoked=revoked)
    revision = await kv.put(prefix, msgspec.json.encode(record))
    await until(lambda: env.gateway.table.applied(TOKENS_BUCKET, revision))
    return secret


def basic(user: str, password: str) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()}


@pytest.fixture
async def locked(env: Env, tmp_path: Path) -> AsyncIterator[str]:
    """A restricted model API `locked` with one ready instance; yields its id."""
    record = route_record(uuid.uuid4().hex, "locked", access="restricted")
    async with start_harness(tmp_path, MODEL_CODE, ENTRYPOINT) as harness:
        await env.put_route(record)
        await env.put_instance(instance(record.model_id, harness.address))
        yield record.model_id


async def test_restricted_model_api_takes_its_token_as_bearer_or_basic(env: Env, locked: str) -> None:
    token = await put_token(env, locked)
    call = {"json": {"data": {"x": 2}}}
    for headers in (
        {"Authorization": f"Bearer {token}"},
        basic(token, token),
        basic(token, ""),
        basic("", token),
        basic("someone", token),
    ):
        status, body, _ = await env.call("POST", "/models/locked/latest/model", headers=headers, **call)
        assert (status, body["result"]["sum"]) == (200, 2), headers


async def test_a_collaborator_calls_with_their_own_api_key_until_it_leaves_the_bucket(env: Env, tmp_path: Path) -> None:
    record = route_record(uuid.uuid4().hex, "shared", access="restricted", callers=frozenset({"ada"}))
    kv = await env.bus.kv(KEYS_BUCKET)

    async def put_key(user: str) -> tuple[str, str]:
        secret, prefix = new_token()
        revision = await kv.put(
            prefix, msgspec.json.encode(KeyRecord(prefix=prefix, user=user, hash=token_hash(secret)))
        )
        await until(lambda: env.gateway.table.applied(KEYS_BUCKET, revision))
        return secret, prefix

    async def status(secret: str) -> int:
        headers = {"Authorization": f"Bearer {secret}"}
        return (await env.call("POST", "/models/shared/latest/model", headers=headers, json={"data": {"x": 1}}))[0]

    async with start_harness(tmp_path, MODEL_CODE, ENTRYPOINT) as harness:
        await env.put_route(record)
        await env.put_instance(instance(record.model_id, harness.address))
        ada, ada_prefix = await put_key("ada")
        stranger, _ = await put_key("bob")  # a valid key, but bob has no role on `shared`
        assert await status(ada) == 200
        assert await status(ada[:-4] + "AAAA") == 401
        assert await status(stranger) == 401
        # What the api does when the key is deleted or its user disabled.
        await kv.delete(ada_prefix)
        await until(lambda: ada_prefix not in env.gateway.table.keys)
        assert await status(ada) == 401


async def test_missing_invalid_or_foreign_token_is_the_same_401(env: Env, locked: str, tmp_path: Path) -> None:
    other = route_record(uuid.uuid4().hex, "other", access="restricted")
    await env.put_route(other)
    foreign = await put_token(env, other.model_id)
    real = await put_token(env, locked)
    forged = real[:-4] + "AAAA"
    answers = []
    for headers in (
        {},
        {"Authorization": "Bearer nonsense"},
        {"Authorization": f"Bearer {forged}"},
        {"Authorization": f"Bearer {foreign}"},
        basic(foreign, foreign),
        {"Authorization": "Basic !!!"},
    ):
        status, body, response = await env.call(
            "POST", "/models/locked/latest/model", json={"data": {"x": 1}}, headers=headers
        )
        assert status == 401, headers
        assert "Bearer" in response.headers["WWW-Authenticate"]
        answers.append((body["error"]["type"], body["error"]["message"]))
    assert len(set(answers)) == 1  # nothing tells a foreign token from a wrong one
    # Ping of a restricted model API takes its token too: else it would tell that the name exists.
    assert (await env.call("GET", "/models/locked/latest/ping"))[0] == 401
    assert (await env.call("GET", "/models/locked/latest/ping", headers={"Authorization": f"Bearer {real}"}))[0] == 200


async def test_an_unknown_name_answers_exactly_as_a_restricted_model_api_without_its_token(
    env: Env, locked: str
) -> None:
    other = route_record(uuid.uuid4().hex, "other", access="restricted")
    await env.put_route(other)
    foreign = await put_token(env, other.model_id)

    async def answer(name: str, method: str, path: str, headers: dict[str, str]) -> tuple[int, str, str, str]:
        status, body, response = await env.call(method, f"/models/{name}/latest{path}", headers=headers, json={})
        return status, body["error"]["type"], body["error"]["message"], response.headers["WWW-Authenticate"]

    for method, path in (("POST", "/model"), ("GET", "/ping"), ("POST", "/no/such/route")):
        for headers in ({}, {"Authorization": "Bearer nonsense"}, {"Authorization": f"Bearer {foreign}"}):
            known = await answer("locked", method, path, headers)
            assert known[0] == 401, (path, headers)
            assert await answer("no-such-model", method, path, headers) == known, (path, headers)
            assert await answer(uuid.uuid4().hex, method, path, headers) == known, (path, headers)


async def test_metrics_are_served_on_their_own_address_not_the_public_one(env: Env, locked: str) -> None:
    status, body, _ = await env.call("GET", "/metrics")
    assert status == 404 and body["error"]["type"] == "NotFound"
    token = await put_token(env, locked)
    headers = {"Authorization": f"Bearer {token}"}
    assert (await env.call("POST", "/models/locked/latest/model", json={"data": {"x": 1}}, headers=headers))[0] == 200
    async with env.http.get(f"http://127.0.0.1:{env.gateway.metrics_port}/metrics") as response:
        assert response.status == 200
        assert 'pier_gateway_requests_total{model="locked",version="1",status="200"}' in await response.text()


async def test_unrestricted_model_api_needs_no_token(env: Env, tmp_path: Path) -> None:
    record = route_record(uuid.uuid4().hex, "open", access="unrestricted")
    async with start_harness(tmp_path, MODEL_CODE, ENTRYPOINT) as harness:
        await env.put_route(record)
        await env.put_instance(instance(record.model_id, harness.address))
        status, _, _ = await env.call("POST", "/models/open/latest/model", json={"data": {"x": 1}})
        assert status == 200


async def test_revoked_token_stops_working_on_a_second_gateway(env: Env, locked: str, settings: Settings) -> None:
    token = await put_token(env, locked)
    second = msgspec.structs.replace(settings, gateway_port=free_port(), gateway_metrics_port=0)
    async with (
        bus.connect(second, "test-gateway-2") as b,
        running(second, b) as gateway,
        aiohttp.ClientSession() as http,
    ):
        # A gateway started late knows the routes, instances and tokens as soon as it serves.
        url = second.gateway_url + "/models/locked/latest/model"
        auth = {"Authorization": f"Bearer {token}"}
        async with http.post(url, json={"data": {"x": 1}}, headers=auth) as response:
            assert response.status == 200

        await put_token(env, locked, revoked=True, secret=token)
        revision = int((await (await b.kv(TOKENS_BUCKET)).status()).stream_info.state.last_seq)
        await until(lambda: gateway.table.applied(TOKENS_BUCKET, revision))
        for base in (env.base, second.gateway_url):
            async with http.post(
                base + "/models/locked/latest/model", json={"data": {"x": 1}}, headers=auth
            ) as response:
                assert response.status == 401
