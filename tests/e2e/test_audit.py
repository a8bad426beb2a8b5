"""The audit feed on the whole platform: `pier events`, and an api killed right after a change."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import queue
import signal
from typing import Any

import asyncpg

from infra.supervisor import Platform
from pier.client import Client
from services.api import audit
from tests.e2e.conftest import EXAMPLES, TOKEN, follow, pier
from tests.support import until


def _client(platform: Platform) -> Client:
    return Client(api_url=platform.settings.api_url, gateway_url=platform.settings.gateway_url, token=TOKEN)


def _create(client: Client, name: str) -> None:
    digest = client.upload_source(EXAMPLES / "hello")
    client.create_model({"name": name, "source": digest, "file": "predict.py", "function": "predict"})


def _actions(client: Client, name: str) -> list[str]:
    return [e["action"] for e in client.events(name)["events"]]


async def test_pier_events_shows_who_changed_what_and_follows_new_changes(platform: Platform) -> None:
    client = _client(platform)
    _create(client, "ledger")
    secret = client.create_token("ledger", "ci")["token"]
    client.change_settings("ledger", {"request_timeout": 30})

    shown = pier(platform, "events", "ledger")
    assert shown.returncode == 0, shown.stderr
    lines = shown.stdout.splitlines()
    assert [line.split()[3] for line in lines] == ["settings.change", "token.create", "model.create"]
    assert "admin settings.change ledger request_timeout: 60.0 -> 30.0" in lines[0]
    assert 'name="ci"' in lines[1]

    as_json = pier(platform, "events", "ledger", "--json")
    assert [json.loads(line)["action"] for line in as_json.stdout.splitlines()] == [
        "settings.change",
        "token.create",
        "model.create",
    ]
    everything = pier(platform, "events", "--all")
    assert everything.returncode == 0 and "token.create ledger" in everything.stdout
    neither = pier(platform, "events")
    assert neither.returncode == 2 and "--all" in neither.stderr
    assert secret not in shown.stdout + as_json.stdout + everything.stdout

    follower, printed = follow(platform, "events", "ledger", "-f")
    seen: list[str] = []

    def saw(action: str) -> bool:
        with contextlib.suppress(queue.Empty):
            while True:
                seen.append(printed.get_nowait())
        return any(f" {action} " in line for line in seen)

    try:
        await until(lambda: saw("settings.change"), within=30)  # the recent ones first, oldest first
        assert seen[0].split()[3] == "model.create"
        client.create_token("ledger", "later")
        await until(lambda: saw("token.create") and any('name="later"' in line for line in seen), within=30)
    finally:
        follower.send_signal(signal.SIGINT)
        follower.wait(timeout=30)
    assert follower.returncode == 0


def _create_token_of_a_dying_api(client: Client) -> None:
    with contextlib.suppress(Exception):  # the api is killed while it answers
        client.create_token("sturdy", "survivor")


async def test_a_change_is_not_lost_when_the_api_is_killed_right_after_it(platform: Platform) -> None:
    client = _client(platform)
    _create(client, "sturdy")
    conn = await asyncpg.connect(platform.settings.database_url, server_settings={"search_path": "api"})
    try:
        # The lock that numbers events: while the test holds it, a change is made but no event recorded.
        await conn.execute("SELECT pg_advisory_lock($1)", audit.ORDER_KEY)
        creating = asyncio.create_task(asyncio.to_thread(_create_token_of_a_dying_api, client))

        async def made() -> Any:
            return await conn.fetchval("SELECT count(*) FROM model_tokens WHERE name = 'survivor'")

        await until(made, within=30)
        api = platform.services["api"]
        assert api.proc is not None
        os.kill(api.proc.pid, signal.SIGKILL)
        api.proc.wait()
        await creating
        await conn.execute("SELECT pg_advisory_unlock($1)", audit.ORDER_KEY)
        # Killed after the change and before its event.
        assert await conn.fetchval("SELECT count(*) FROM audit_events WHERE action = 'token.create'") == 0
    finally:
        await conn.close()
    api.start()
    await platform.wait_healthy()

    def recorded() -> Any:
        return [e for e in client.events("sturdy")["events"] if e["action"] == "token.create"]

    (event,) = await until(recorded, within=30)
    assert event["fields"]["name"] == "survivor" and event["actor"] == "admin" and event["recovered"] is True
    assert _actions(client, "sturdy") == ["token.create", "model.create"]
