"""The first path end to end: `pier deploy` a folder, call it Domino-style, see it in the API."""

from __future__ import annotations

import json
import os
import signal

import pytest

from infra.supervisor import Platform
from pier.client import ApiError, Client
from services.scheduler.runtimes.local import stop_all
from tests.e2e.conftest import EXAMPLES, pier
from tests.support import until


def _client(platform: Platform) -> Client:
    s = platform.settings
    return Client(api_url=s.api_url, gateway_url=s.gateway_url, token="pier_e2e_token")


async def test_deploy_then_call_with_data_and_parameters(platform: Platform) -> None:
    # One instance, so the two calls below reach the same imported module (the default is two).
    done = pier(platform, "deploy", str(EXAMPLES / "hello"), "--name", "hello", "--instances", "1")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "curl" in done.stdout and "/models/hello/latest/model" in done.stdout
    # Not a terminal: no progress lines, only the plain ones (docs/cli.md, "Progress").
    assert "\r" not in done.stdout + done.stderr and "\x1b" not in done.stdout + done.stderr
    assert "hello: created; building version 1" in done.stdout and "instances ready" not in done.stderr

    # Restricted by default: a call needs one of its access tokens.
    refused = pier(platform, "call", "hello", "--data", '{"name": "Ada"}')
    assert refused.returncode != 0 and "401" in refused.stderr
    created = pier(platform, "tokens", "create", "hello", "--name", "demo")
    assert created.returncode == 0, created.stderr
    token = created.stdout.strip().splitlines()[-1]
    called = pier(platform, "call", "hello", "--data", '{"name": "Ada"}', "--token", token)
    assert called.returncode == 0, called.stderr
    assert json.loads(called.stdout)["greeting"] == "Hello, Ada!"

    client = _client(platform)
    first = client.predict("hello", parameters=["Grace"], token=token)
    second = client.predict("hello", data={"name": "Linus"}, token=token)
    assert first["result"]["greeting"] == "Hello, Grace!"
    # The script was imported once: module-level state is the same across calls.
    assert first["result"]["loaded_at"] == second["result"]["loaded_at"]
    assert first["request_id"] and first["release"]["model_version_number"] == 1

    model = client.model("hello")
    assert model["state"] == "running" and model["latest"] == 1
    assert [i["state"] for i in model["running_instances"]] == ["ready"]
    assert model["id"] in [m["id"] for m in client.models()]
    by_id = client.predict(model["id"], data={}, token=token)
    assert by_id["result"]["greeting"] == "Hello, world!"


async def test_a_second_deploy_makes_version_2_and_replaces_version_1(platform: Platform, tmp_path) -> None:  # type: ignore[no-untyped-def]
    code = tmp_path / "m"
    code.mkdir()
    (code / "predict.py").write_text("def predict(x):\n    return x + 1\n")
    assert pier(platform, "deploy", str(code), "--name", "inc", "--unrestricted").returncode == 0
    (code / "predict.py").write_text("def predict(x):\n    return x + 100\n")
    done = pier(platform, "deploy", str(code), "--name", "inc")
    assert done.returncode == 0, done.stdout + done.stderr
    client = _client(platform)
    answer = client.predict("inc", data={"x": 1})
    assert answer["result"] == 101 and answer["release"]["model_version_number"] == 2
    await until(lambda: [i["version"] for i in client.model("inc")["running_instances"]] == [2, 2], within=30)


async def test_deploy_of_broken_code_fails_with_the_reason(platform: Platform, tmp_path) -> None:  # type: ignore[no-untyped-def]
    code = tmp_path / "broken"
    code.mkdir()
    (code / "predict.py").write_text("import no_such_module_here\n\ndef predict():\n    return 1\n")
    done = pier(platform, "deploy", str(code), "--name", "broken")
    assert done.returncode != 0
    assert "no_such_module_here" in done.stderr
    assert _client(platform).model("broken")["state"] == "failed"


@pytest.mark.parametrize("victim", ["api", "builder", "scheduler", "monitor", "gateway"])
async def test_kill_9_of_a_service_during_a_deploy_loses_nothing(platform: Platform, tmp_path, victim: str) -> None:  # type: ignore[no-untyped-def]
    client = _client(platform)
    digest = client.upload_source(EXAMPLES / "hello")
    client.create_model(
        {"name": "sturdy", "source": digest, "file": "predict.py", "function": "predict", "access": "unrestricted"}
    )
    service = platform.services[victim]
    assert service.proc is not None
    os.kill(service.proc.pid, signal.SIGKILL)
    service.proc.wait()
    service.start()
    await platform.wait_healthy()
    model = client.wait("sturdy", 1, timeout=120)
    assert model["state"] == "running", model
    assert client.predict("sturdy", data={"name": "again"})["result"]["greeting"] == "Hello, again!"
    # Nothing built or started twice: two instances (the default), one image for the one version.
    assert len(model["running_instances"]) == 2
    images = list((platform.settings.artifacts / "images").iterdir())
    assert len([p for p in images if not p.name.startswith(".")]) == 1
    instance_dirs = list((platform.settings.home / "instances").iterdir())
    assert len(instance_dirs) == 2


async def test_model_apis_that_were_running_run_again_after_a_platform_restart(platform: Platform) -> None:
    """What a second `make up` does: every service and instance stopped, then started on the same data."""
    client = _client(platform)
    digest = client.upload_source(EXAMPLES / "hello")
    client.create_model(
        {"name": "durable", "source": digest, "file": "predict.py", "function": "predict", "access": "unrestricted"}
    )
    client.wait("durable", 1, timeout=120)
    platform.stop()
    assert stop_all(platform.settings.home) == 0  # nothing was left running
    platform.start()
    await platform.wait_healthy()

    def answers() -> bool:
        try:
            return client.predict("durable", data={"name": "back"})["result"]["greeting"] == "Hello, back!"
        except (ApiError, OSError):
            return False

    await until(answers, within=60, every=0.2)
    assert client.model("durable")["state"] == "running"
