"""Model code must not own the platform: a deployed function tries each door out of its instance and
every one is closed (docs/security.md). The file-system and process doors need the platform to run
as root (so instances run as users of their own); the harness secret holds for any user."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import msgspec
import pytest

from infra.supervisor import Platform
from pier.artifacts import Store
from pier.client import Client
from tests.e2e.conftest import TOKEN, pier

# Tries what it is asked to and says what happened to each attempt; `whoami` is what it runs as.
# Raw: its \0 and \r\n stay escapes in the model's source, not NUL bytes and line breaks in it.
DOOR_TRIER = r"""
import os
import pathlib
import socket
import struct
import urllib.request


def _postgres(port):
    # A startup message as the superuser; AuthenticationOk (R, 0) means the door is open.
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        body = struct.pack("!I", 196608) + b"user\0postgres\0database\0postgres\0\0"
        s.sendall(struct.pack("!I", len(body) + 4) + body)
        kind, _, code = struct.unpack("!cII", s.recv(9))
        if kind == b"R" and code == 0:
            return "logged in without a password"
        if kind != b"R":  # not an answer to a well-formed startup: the probe itself is wrong
            raise RuntimeError(f"PostgreSQL answered {kind!r}")
        raise PermissionError(f"PostgreSQL asked for authentication (message {kind!r}, code {code})")


def _nats(port):
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.recv(4096)  # INFO
        s.sendall(b'CONNECT {"verbose": false}\r\nPING\r\n')
        answer = s.recv(4096)
        if answer.startswith(b"PONG"):
            return "connected without credentials"
        raise PermissionError(f"NATS refused: {answer.strip().decode()}")


def _attempt(kind, target):
    if kind == "read":
        return pathlib.Path(target).read_bytes()[:60]
    if kind == "list":
        return os.listdir(target)
    if kind == "write":
        return pathlib.Path(target).write_text("written by another model API")
    if kind == "postgres":
        return _postgres(int(target))
    if kind == "nats":
        return _nats(int(target))
    if kind == "call":
        return urllib.request.urlopen(target, data=b'{"data": {}}', timeout=10).read()[:60]
    raise ValueError(kind)


def predict(doors):
    outcome = {}
    for name, (kind, target) in doors.items():
        try:
            outcome[name] = "open: " + repr(_attempt(kind, target))
        except Exception as exc:
            outcome[name] = f"closed: {type(exc).__name__}: {exc}"
    outcome["whoami"] = [os.getuid(), os.getgid(), os.getgroups(), os.environ.get("HOME")]
    return outcome
"""

VICTIM = """
def predict():
    return "the other model API"
"""

ROOT_ONLY = "instances run as users of their own only when the platform runs as root"


def _client(platform: Platform) -> Client:
    s = platform.settings
    return Client(api_url=s.api_url, gateway_url=s.gateway_url, token=TOKEN)


def _deploy(platform: Platform, tmp_path: Path, name: str, code: str, *flags: str) -> dict[str, Any]:
    folder = tmp_path / name
    folder.mkdir()
    (folder / "predict.py").write_text(code)
    done = pier(platform, "deploy", str(folder), "--name", name, "--unrestricted", "--instances", "1", *flags)
    assert done.returncode == 0, done.stdout + done.stderr
    return dict(_client(platform).model(name))


def _instance(model: dict[str, Any]) -> dict[str, Any]:
    [instance] = model["running_instances"]
    return dict(instance)


def _image(model: dict[str, Any]) -> str:
    [version] = [v for v in model["versions"] if v["number"] == model["latest"]]
    return str(version["image"])


async def test_model_code_finds_every_door_out_of_its_instance_closed(platform: Platform, tmp_path: Path) -> None:
    home = platform.settings.home
    store = Store(platform.settings.artifacts)
    victim = _deploy(platform, tmp_path, "victim", VICTIM)
    # Two workers: the calls run in processes the harness forked, which must be no less confined.
    trier = _deploy(platform, tmp_path, "trier", DOOR_TRIER, "--workers", "2")
    other, own = _instance(victim), _instance(trier)
    manifest = store.manifest(_image(trier))
    assert manifest is not None
    # A git credential as the api keeps them (tokens, ssh keys), readable by its owner.
    (platform.settings.artifacts / "credentials").mkdir(exist_ok=True)
    secret_file = platform.settings.artifacts / "credentials" / "deploy-key.json"
    secret_file.write_text(json.dumps({"token": "ghp_not_for_models"}))
    api = platform.services["api"].proc
    assert api is not None
    doors = {
        "credentials.json": ("read", str(home / "credentials.json")),
        "instances listing": ("list", str(home / "instances")),
        "other work dir listing": ("list", str(home / "instances" / other["instance_id"] / "work")),
        "other work dir file": ("read", str(home / "instances" / other["instance_id"] / "work" / "predict.py")),
        "other instance log": ("read", str(home / "instances" / other["instance_id"] / "instance.log")),
        "other pid file (its secret)": ("read", str(home / "instances" / other["instance_id"] / "pid")),
        "api environ": ("read", f"/proc/{api.pid}/environ"),
        "git credential": ("read", str(secret_file)),
        "sources": ("list", str(platform.settings.artifacts / "sources")),
        "own image code": ("write", str(store.image(_image(trier)) / "code" / "predict.py")),
        "own image runtime": ("write", str(store.image(_image(trier)) / "runtime" / "pier" / "spec.py")),
        "other image": ("write", str(store.image(_image(victim)) / "code" / "predict.py")),
        "shared environment": ("write", str(store.env(manifest.env_hash) / "pyvenv.cfg")),
        "other harness without the secret": ("call", f"http://{other['address']}/model"),
        "postgres as its superuser": ("postgres", str(urlparse(platform.settings.database_url).port)),
        "nats without credentials": ("nats", str(urlparse(platform.settings.nats_url).port)),
    }
    outcome = _client(platform).predict("trier", data={"doors": doors})["result"]
    uid, gid, groups, work_home = outcome.pop("whoami")

    harness = outcome.pop("other harness without the secret")
    assert harness.startswith("closed: HTTPError: HTTP Error 403"), harness
    # The servers' own doors hold for any user: both need credentials no instance is given.
    for server in ("postgres as its superuser", "nats without credentials"):
        assert outcome.pop(server).startswith("closed: PermissionError"), server
    if os.geteuid() != 0:
        # The rest needs a user of its own: as the platform's user these doors are its own.
        assert own["isolated"] is False and other["isolated"] is False
        shown = pier(platform, "show", "trier")
        assert "not isolated (runs as the platform user)" in shown.stdout, shown.stdout
        log = pier(platform, "logs", "trier", "--instance")
        assert "pier: runs as the platform user:" in log.stdout + log.stderr
        pytest.skip(f"{ROOT_ONLY}; only the harness secret was checked")
    assert own["isolated"] is True and other["isolated"] is True
    assert uid != 0 and gid == uid and groups == [], (uid, gid, groups)
    assert work_home == str(home / "instances" / own["instance_id"] / "work")
    still_open = {name: how for name, how in outcome.items() if not how.startswith("closed: PermissionError")}
    assert not still_open, still_open
    # And nothing the attempts wrote landed anywhere.
    assert (store.image(_image(victim)) / "code" / "predict.py").read_text() == VICTIM
    assert "written by" not in (store.env(manifest.env_hash) / "pyvenv.cfg").read_text()


def test_each_instance_runs_as_a_user_of_its_own_and_pier_show_says_so(platform: Platform, tmp_path: Path) -> None:
    if os.geteuid() != 0:
        pytest.skip(ROOT_ONLY)
    model = _deploy(platform, tmp_path, "pair", VICTIM, "--instances", "2")  # the last --instances wins
    uids = set()
    for instance in model["running_instances"]:
        pid_file = platform.settings.home / "instances" / instance["instance_id"] / "pid"
        handle = msgspec.json.decode(pid_file.read_bytes())
        assert instance["isolated"] is True
        assert os.stat(f"/proc/{handle['pid']}").st_uid == handle["uid"] != 0
        uids.add(handle["uid"])
    assert len(uids) == 2
    shown = pier(platform, "show", "pair")
    assert shown.returncode == 0 and "not isolated" not in shown.stdout, shown.stdout
