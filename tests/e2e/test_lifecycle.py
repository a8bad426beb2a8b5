"""Stop, restart, terminate, the GPU wait queue and usage, end to end through the `pier` CLI, on two
simulated a100 GPUs (there is no GPU here)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import msgspec
import pytest

from infra.supervisor import Platform
from pier.client import ApiError, Client
from pier.config import Settings
from tests.e2e.conftest import TOKEN, pier
from tests.support import until

# Writes a file into its working directory when asked, and lists what is there.
SCRATCH_MODEL = """
import os
import pathlib


def predict(write=None):
    if write:
        pathlib.Path(write).write_text("left behind by a call")
    return {"files": sorted(os.listdir(".")), "cuda": os.environ.get("CUDA_VISIBLE_DEVICES")}
"""

GPU_FLAGS = ("--gpu-type", "a100", "--gpu-count", "2", "--instances", "1", "--unrestricted")


@pytest.fixture
def settings(settings: Settings) -> Settings:
    """The shared settings with two simulated a100 GPUs, declared before the platform starts."""
    return msgspec.structs.replace(settings, gpus="a100:2")


def _client(platform: Platform) -> Client:
    s = platform.settings
    return Client(api_url=s.api_url, gateway_url=s.gateway_url, token=TOKEN)


def _code(tmp_path: Path) -> Path:
    code = tmp_path / "scratch"
    code.mkdir(exist_ok=True)
    (code / "predict.py").write_text(SCRATCH_MODEL)
    return code


def _state(client: Client, name: str) -> str:
    return str(client.model(name)["state"])


def _usage(client: Client, name: str) -> dict[str, Any]:
    return dict(client.api("GET", f"/models/{name}/usage"))


def _files(client: Client, name: str, **data: Any) -> list[str] | None:
    """What the model's working dir holds, or None while no instance answers yet."""
    try:
        return list(client.predict(name, data=data)["result"]["files"])
    except (ApiError, OSError):
        return None


async def test_a_model_api_that_does_not_fit_waits_in_line_and_starts_when_gpus_are_freed(
    platform: Platform, tmp_path: Path
) -> None:
    client = _client(platform)
    code = str(_code(tmp_path))
    first = pier(platform, "deploy", code, "--name", "first", *GPU_FLAGS)
    assert first.returncode == 0, first.stdout + first.stderr
    assert "is serving" in first.stdout
    answer = client.predict("first", data={})["result"]
    assert sorted(answer["cuda"].split(",")) == ["0", "1"]

    # The review says a second one would wait, and why.
    plan = pier(platform, "plan", *GPU_FLAGS[:-1])
    assert plan.returncode == 0, plan.stdout + plan.stderr
    assert "simulated a100" in plan.stdout and "place 1 in line" in plan.stdout

    second = pier(platform, "deploy", code, "--name", "second", *GPU_FLAGS)
    assert second.returncode == 0, second.stdout + second.stderr
    assert "place 1 in line" in second.stdout
    shown = pier(platform, "show", "second", "--json")
    assert shown.returncode == 0, shown.stderr
    model = json.loads(shown.stdout)
    assert model["state"] == "waiting" and model["queue_position"] == 1
    # Waiting is not billed.
    assert _usage(client, "second")["instance_seconds"] == 0

    gpus = pier(platform, "gpus")
    assert gpus.returncode == 0, gpus.stderr
    assert "simulated" in gpus.stdout
    row = next(line.split() for line in gpus.stdout.splitlines() if line.strip().startswith("a100"))
    assert row[1:] == ["2", "0", "2", "1"]  # total, free, asked for by waiting ones, waiting

    stopped = pier(platform, "stop", "first")
    assert stopped.returncode == 0, stopped.stdout + stopped.stderr
    await until(lambda: _state(client, "second") == "running", within=60, every=0.2)
    await until(lambda: _state(client, "first") == "stopped", within=30, every=0.2)
    assert sorted(client.predict("second", data={})["result"]["cuda"].split(",")) == ["0", "1"]

    # Usage: the stopped one's stays where it was while the running one's grows.
    await until(lambda: _usage(client, "first")["running_instances"] == 0, within=30, every=0.2)
    first_usage = _usage(client, "first")
    assert first_usage["instance_seconds"] > 0
    assert first_usage["gpu_seconds"] == pytest.approx(2 * first_usage["instance_seconds"])
    second_before = _usage(client, "second")
    assert second_before["running_instances"] == 1
    await until(lambda: _usage(client, "second")["gpu_seconds"] > second_before["gpu_seconds"], within=30)
    assert _usage(client, "first") == first_usage

    gpus = pier(platform, "gpus", "--json")
    assert json.loads(gpus.stdout)["types"]["a100"]["waiting"] == 0


async def test_restart_gives_clean_working_dirs_from_the_same_image_and_keeps_the_gpus(
    platform: Platform, tmp_path: Path
) -> None:
    client = _client(platform)
    code = str(_code(tmp_path))
    done = pier(platform, "deploy", code, "--name", "scratch", *GPU_FLAGS)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "left.txt" in (_files(client, "scratch", write="left.txt") or [])
    waiter = pier(platform, "deploy", code, "--name", "waiter", *GPU_FLAGS)
    assert waiter.returncode == 0 and "place 1 in line" in waiter.stdout, waiter.stdout + waiter.stderr

    restarted = pier(platform, "restart", "scratch")
    assert restarted.returncode == 0, restarted.stdout + restarted.stderr
    await until(lambda: _state(client, "scratch") == "running", within=60, every=0.2)
    files = await until(lambda: _files(client, "scratch"), within=60, every=0.2)
    assert "left.txt" not in files and "predict.py" in files
    model = client.model("scratch")
    assert [v["number"] for v in model["versions"]] == [1]  # no new build
    # It kept its GPUs: the one waiting in line still waits.
    assert sorted(client.predict("scratch", data={})["result"]["cuda"].split(",")) == ["0", "1"]
    assert _state(client, "waiter") == "waiting"

    # Stopped, its GPUs go to the one waiting; restarted then, it is placed again and waits its turn.
    assert pier(platform, "stop", "scratch").returncode == 0
    await until(lambda: _state(client, "waiter") == "running", within=60, every=0.2)
    await until(lambda: _state(client, "scratch") == "stopped", within=30, every=0.2)
    assert pier(platform, "restart", "scratch").returncode == 0
    await until(lambda: _state(client, "scratch") == "waiting", within=30, every=0.2)
    assert client.model("scratch")["queue_position"] == 1
    assert pier(platform, "stop", "waiter").returncode == 0
    await until(lambda: _state(client, "scratch") == "running", within=60, every=0.2)
    assert await until(lambda: _files(client, "scratch"), within=60, every=0.2)


async def test_terminate_frees_the_name_and_a_failed_model_api_accepts_only_terminate(
    platform: Platform, tmp_path: Path
) -> None:
    client = _client(platform)
    code = str(_code(tmp_path))
    done = pier(platform, "deploy", code, "--name", "doomed", "--instances", "1", "--unrestricted")
    assert done.returncode == 0, done.stdout + done.stderr
    old_id = client.model("doomed")["id"]
    gone = pier(platform, "terminate", "doomed")
    assert gone.returncode == 0, gone.stdout + gone.stderr
    assert pier(platform, "show", "doomed").returncode != 0
    again = pier(platform, "deploy", code, "--name", "doomed", "--instances", "1", "--unrestricted")
    assert again.returncode == 0, again.stdout + again.stderr
    assert client.model("doomed")["id"] != old_id

    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "predict.py").write_text("import no_such_module_here\n\ndef predict():\n    return 1\n")
    failed = pier(platform, "deploy", str(broken), "--name", "broken", "--instances", "1", "--unrestricted")
    assert failed.returncode != 0
    assert _state(client, "broken") == "failed"
    for command in ("stop", "restart"):
        refused = pier(platform, command, "broken")
        assert refused.returncode != 0
        assert "409" in refused.stderr and "only terminate" in refused.stderr
    assert pier(platform, "terminate", "broken").returncode == 0
    assert not client.exists("broken")
