"""Working as a team, end to end with the CLI: users, sign-in profiles, organizations, sharing a
model API, calling it with one's own API key, visibility, transfer, disabling a user."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from pathlib import Path

from infra.supervisor import Platform
from pier.client import ApiError, Client
from tests.e2e.conftest import EXAMPLES, TOKEN
from tests.support import until


def _pier(
    platform: Platform, config: Path, *args: str, token: str | None = None, stdin: str | None = None
) -> subprocess.CompletedProcess[str]:
    """The CLI as a user whose profile lives under `config` (XDG_CONFIG_HOME)."""
    env = {**os.environ, "PIER_HOME": str(platform.settings.home), "XDG_CONFIG_HOME": str(config)}
    env.pop("PIER_TOKEN", None)
    if token is not None:
        env["PIER_TOKEN"] = token
    return subprocess.run(
        [sys.executable, "-m", "pier", *args], env=env, capture_output=True, text=True, timeout=300, input=stdin
    )


async def test_a_team_shares_a_model_api_from_the_cli(platform: Platform, tmp_path: Path) -> None:
    admin, ada_home, bob_home = tmp_path / "admin", tmp_path / "ada", tmp_path / "bob"

    created = _pier(platform, admin, "users", "create", "ada", "--email", "ada@example.org")
    assert created.returncode == 0, created.stderr
    ada_key = created.stdout.strip().splitlines()[-1]
    bob_key = _pier(platform, admin, "users", "create", "bob", "--email", "bob@example.org").stdout.splitlines()[-1]
    listed = _pier(platform, admin, "users", "list")
    assert "ada@example.org" in listed.stdout and ada_key not in listed.stdout

    login = _pier(platform, ada_home, "login", "--token", ada_key)
    assert login.returncode == 0, login.stderr
    assert "signed in as ada" in login.stdout
    profile = ada_home / "pier" / "profile.json"
    assert stat.S_IMODE(profile.stat().st_mode) == 0o600
    assert _pier(platform, ada_home, "whoami").stdout.startswith("ada ")
    # PIER_TOKEN still wins over the profile; without a profile, make up's credentials are used.
    assert _pier(platform, ada_home, "whoami", token=TOKEN).stdout.startswith("admin (admin)")
    assert _pier(platform, admin, "whoami").stdout.startswith("admin (admin)")
    bad = _pier(platform, bob_home, "login", "--token", "pier_000000000000_nope")
    assert bad.returncode == 1 and "401" in bad.stderr
    assert not (bob_home / "pier" / "profile.json").exists()
    assert _pier(platform, bob_home, "login", "--token", bob_key).returncode == 0
    passwd = _pier(platform, ada_home, "users", "passwd", stdin="correct horse battery staple\n")
    assert passwd.returncode == 0 and "password of ada set" in passwd.stdout, passwd.stderr
    session = Client(api_url=platform.settings.api_url).sign_in("ada", "correct horse battery staple")
    assert session["user"] == "ada" and session["csrf_token"]

    assert _pier(platform, admin, "orgs", "create", "team").returncode == 0
    assert _pier(platform, admin, "orgs", "add", "team", "bob").returncode == 0
    assert "team" in _pier(platform, bob_home, "orgs", "list").stdout
    assert "team" in _pier(platform, bob_home, "whoami").stdout

    deployed = _pier(platform, ada_home, "deploy", str(EXAMPLES / "hello"), "--name", "shared")
    assert deployed.returncode == 0, deployed.stderr
    assert _pier(platform, bob_home, "show", "shared").returncode == 1  # private, and bob has no role yet

    shared = _pier(platform, ada_home, "collaborators", "add", "shared", "org:team", "--role", "editor")
    assert shared.returncode == 0, shared.stderr
    collaborators = _pier(platform, bob_home, "collaborators", "list", "shared").stdout
    assert "ada" in collaborators and "org:team" in collaborators and "editor" in collaborators

    s = platform.settings
    gateway = Client(api_url=s.api_url, gateway_url=s.gateway_url, token=TOKEN)

    def bob_calls() -> dict[str, object] | None:
        try:
            return gateway.predict("shared", data={"name": "Bob"}, token=bob_key)
        except ApiError:
            return None

    answer = await until(bob_calls)  # the gateway learns bob's role as fast as its watch
    assert answer["result"]["greeting"] == "Hello, Bob!"

    refused = _pier(platform, bob_home, "settings", "shared", "--visibility", "public")
    assert refused.returncode == 1 and "403" in refused.stderr and "owner" in refused.stderr
    opened = _pier(platform, ada_home, "settings", "shared", "--visibility", "public")
    assert opened.returncode == 0 and "visibility:         public" in opened.stdout

    moved = _pier(platform, ada_home, "transfer", "shared", "bob")
    assert moved.returncode == 0, moved.stderr
    assert json.loads(_pier(platform, admin, "show", "shared", "--json").stdout)["owner"] == "bob"
    removed = _pier(platform, bob_home, "collaborators", "remove", "shared", "org:team")
    assert removed.returncode == 0, removed.stderr

    assert _pier(platform, admin, "users", "disable", "bob").returncode == 0
    whoami = _pier(platform, bob_home, "whoami")
    assert whoami.returncode == 1 and "disabled" in whoami.stderr
    await until(lambda: bob_calls() is None)
    assert _pier(platform, admin, "users", "enable", "bob").returncode == 0
    assert _pier(platform, bob_home, "whoami").stdout.startswith("bob ")
