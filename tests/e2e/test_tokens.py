"""Access tokens end to end: create (shown once), call with Bearer or Basic, list, revoke, open up."""

from __future__ import annotations

import json

import pytest

from infra.supervisor import Platform
from pier.client import ApiError, Client
from tests.e2e.conftest import EXAMPLES, TOKEN, pier
from tests.support import until


def _client(platform: Platform) -> Client:
    s = platform.settings
    return Client(api_url=s.api_url, gateway_url=s.gateway_url, token=TOKEN)


async def test_token_lifecycle_from_create_to_revoke(platform: Platform) -> None:
    assert pier(platform, "deploy", str(EXAMPLES / "hello"), "--name", "vault").returncode == 0
    client = _client(platform)
    assert client.model("vault")["access"] == "restricted"
    with pytest.raises(ApiError) as refused:
        client.predict("vault", data={"name": "x"})
    assert refused.value.status == 401

    created = pier(platform, "tokens", "create", "vault", "--name", "ci")
    assert created.returncode == 0, created.stderr
    secret = created.stdout.strip().splitlines()[-1]
    assert client.predict("vault", data={"name": "Ada"}, token=secret)["result"]["greeting"] == "Hello, Ada!"

    listed = pier(platform, "tokens", "list", "vault", "--json")
    tokens = json.loads(listed.stdout)
    assert [t["name"] for t in tokens] == ["ci"]
    assert secret not in listed.stdout
    assert tokens[0]["creator"] == "admin"
    await until(lambda: client.tokens("vault")[0]["last_used"] is not None)

    revoked = pier(platform, "tokens", "revoke", "vault", tokens[0]["id"])
    assert revoked.returncode == 0, revoked.stderr

    def refused_now() -> bool:
        try:
            client.predict("vault", data={}, token=secret)
        except ApiError as exc:
            return exc.status == 401
        return False

    await until(refused_now)
    assert client.tokens("vault") == []


async def test_settings_change_makes_a_model_api_unrestricted(platform: Platform) -> None:
    assert pier(platform, "deploy", str(EXAMPLES / "hello"), "--name", "opened").returncode == 0
    client = _client(platform)
    client.change_settings("opened", {"access": "unrestricted"})

    def open_now() -> bool:
        try:
            return bool(client.predict("opened", data={"name": "all"})["result"])
        except ApiError:
            return False

    await until(open_now)
