"""The commands of the API's operations that only the API had: labels, usage, versions, your own
keys, a named source, a schedule's runs, the restart policy and gateway settings; `--json` prints
the API's answer; a route is called from `pier call --route`; an API error is one line."""

from __future__ import annotations

import json

from infra.supervisor import Platform
from tests.e2e.conftest import EXAMPLES, pier


def _json(platform: Platform, *args: str) -> object:
    done = pier(platform, *args, "--json")
    assert done.returncode == 0, done.stdout + done.stderr
    return json.loads(done.stdout)


async def test_the_commands_of_every_operation_against_a_running_platform(platform: Platform) -> None:
    deployed = pier(
        platform, "deploy", str(EXAMPLES / "routes"), "--name", "routes", "--unrestricted", "--instances", "1"
    )
    assert deployed.returncode == 0, deployed.stdout + deployed.stderr

    assert _json(platform, "labels", "routes") == []
    assert "no labels" in pier(platform, "labels", "routes").stdout
    used = _json(platform, "usage", "routes")
    assert isinstance(used, dict) and set(used) >= {"gpu_seconds", "instance_seconds", "running_instances"}
    versions = _json(platform, "versions", "routes")
    assert isinstance(versions, list) and [v["number"] for v in versions] == [1]

    called = pier(
        platform, "call", "routes", "--route", "/classify", "--data", '{"text": "a great day", "threshold": 0.3}'
    )
    assert called.returncode == 0, called.stderr
    assert json.loads(called.stdout)["positive"] is True
    stats = pier(platform, "call", "routes", "--route", "/stats", "--verb", "GET", "--data", '{"top": 1}')
    assert stats.returncode == 0, stats.stderr

    # The restart policy and gateway settings, which only the API could change before.
    changed = _json(
        platform, "settings", "routes", "--max-restarts", "9", "--restart-window", "700", "--routing-mode", "advanced"
    )
    assert isinstance(changed, dict) and changed["health"]["max_restarts"] == 9
    assert changed["health"]["restart_window"] == 700
    shown = _json(platform, "show", "routes")
    assert isinstance(shown, dict) and shown["routing_mode"] == "advanced"

    # An API error is one line naming the field.
    bad = pier(platform, "settings", "routes", "--restart-backoff", "50", "--restart-backoff-max", "1")
    assert bad.returncode == 1 and bad.stderr.startswith("error: HTTP 400"), bad.stderr
    assert len(bad.stderr.strip().splitlines()) == 1 and "restart_backoff_max" in bad.stderr

    # Your own API keys: created (the secret once, last), listed without secrets, deleted.
    made = pier(platform, "keys", "create", "laptop")
    assert made.returncode == 0, made.stderr
    secret = made.stdout.strip().splitlines()[-1]
    keys = _json(platform, "keys", "list")
    assert isinstance(keys, list) and [k["name"] for k in keys if k["name"] == "laptop"] == ["laptop"]
    assert secret not in json.dumps(keys)
    key_id = next(k["id"] for k in keys if k["name"] == "laptop")
    assert pier(platform, "keys", "delete", key_id).returncode == 0
    assert not [k for k in _json(platform, "keys", "list") if k["name"] == "laptop"]  # type: ignore[union-attr]

    # A named source, and the commands of schedules whose runs are listed.
    pushed = pier(platform, "sources", "push", str(EXAMPLES / "hello"), "--name", "hello-src")
    assert pushed.returncode == 0, pushed.stderr
    source = _json(platform, "sources", "show", "hello-src")
    assert isinstance(source, dict) and pushed.stdout.strip().endswith(source["digest"])
    assert _json(platform, "git-credentials", "list") == []
    made = pier(platform, "schedules", "create", "routes", "--cron", "0 3 * * *", "--command", "python -V")
    assert made.returncode == 0, made.stderr
    schedule_id = made.stdout.split()[1].rstrip(":")
    assert _json(platform, "schedules", "runs", "routes", schedule_id) == []
