"""Health checks through the whole platform: a model API whose health can be flipped (its health
function reads a file in the instance's working dir) leaves the gateway's rotation, is restarted and
comes back; repeated crashes end in `failed`; a bad policy is refused with the rule it breaks."""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any

from infra.supervisor import Platform
from pier.client import ApiError, Client
from tests.e2e.conftest import TOKEN, pier
from tests.support import until

# HOLD and CRASH are absolute paths the test controls: while HOLD exists a run of the instance waits in
# its import (it is `starting`, so out of rotation); while CRASH exists a run exits during its import.
CODE = """
import os
import time
from pathlib import Path

HOLD = Path({hold!r})
CRASH = Path({crash!r})
while HOLD.exists():
    time.sleep(0.05)
if CRASH.exists():
    raise SystemExit("crashing on purpose: " + str(CRASH))


def predict(crash=False):
    if crash:
        os._exit(3)
    return {{"instance": os.environ["PIER_INSTANCE_ID"], "request_timeout": os.environ["PIER_REQUEST_TIMEOUT"]}}


def health():
    # The working dir is fresh for every run, so a restart makes the instance healthy again.
    return not Path("unhealthy").exists()
"""

# Quick: 2 failed probes 0.5 s apart make an instance unhealthy (0.5 * 2 > a request timeout of 0.5).
QUICK = ("--period", "0.5", "--timeout", "0.5", "--failure-threshold", "2", "--request-timeout", "0.5")


def _client(platform: Platform) -> Client:
    s = platform.settings
    return Client(api_url=s.api_url, gateway_url=s.gateway_url, token=TOKEN)


def _code(tmp_path: Path) -> tuple[Path, Path, Path]:
    code, hold, crash = tmp_path / "flip", tmp_path / "hold", tmp_path / "crash"
    code.mkdir()
    (code / "predict.py").write_text(CODE.format(hold=str(hold), crash=str(crash)))
    return code, hold, crash


def _work_dir(platform: Platform, instance_id: str) -> Path:
    return platform.settings.home / "instances" / instance_id / "work"


def _states(client: Client, name: str) -> dict[str, str]:
    return {i["instance_id"]: i["state"] for i in client.model(name)["running_instances"]}


def _answered_by(client: Client, name: str, **data: Any) -> dict[str, Any]:
    return dict(client.predict(name, data=data)["result"])


def _in_deployment_log(client: Client, name: str, text: str) -> bool:
    return any(text in x["line"] for x in client.logs(name, kind="deployment", limit=1000)["lines"])


async def test_an_unhealthy_instance_leaves_the_rotation_is_restarted_and_comes_back(
    platform: Platform, tmp_path: Path
) -> None:
    code, hold, _ = _code(tmp_path)
    deployed = pier(
        platform, "deploy", str(code), "--name", "flip", "--unrestricted", "--instances", "2",
        "--health-function", "health", *QUICK,
    )  # fmt: skip
    assert deployed.returncode == 0, deployed.stdout + deployed.stderr
    client = _client(platform)
    await until(lambda: list(_states(client, "flip").values()) == ["ready", "ready"], within=30)
    sick, healthy = sorted(_states(client, "flip"))

    # The restart of the sick one waits in its import until we let it go, so it stays out meanwhile.
    hold.touch()
    (_work_dir(platform, sick) / "unhealthy").touch()
    await until(lambda: _states(client, "flip").get(sick) != "ready", within=30, every=0.1)
    answers = [_answered_by(client, "flip")["instance"] for _ in range(20)]
    assert answers == [healthy] * 20
    unhealthy = f"instance {sick} unhealthy: 2 health checks failed in a row; the last: health() returned False"
    await until(lambda: _in_deployment_log(client, "flip", unhealthy), within=10, every=0.1)

    hold.unlink()
    await until(lambda: _states(client, "flip") == {sick: "ready", healthy: "ready"}, within=30, every=0.1)
    # Back in rotation: the balancer sends it calls again.
    await until(lambda: _answered_by(client, "flip")["instance"] == sick, within=30, every=0.05)
    await until(lambda: _in_deployment_log(client, "flip", f"instance {sick} restarted"), within=10, every=0.1)


async def test_a_settings_change_restarts_instances_one_at_a_time_with_the_new_request_timeout(
    platform: Platform, tmp_path: Path
) -> None:
    code, _, _ = _code(tmp_path)
    deployed = pier(
        platform, "deploy", str(code), "--name", "tune", "--unrestricted", "--instances", "2",
        "--health-function", "health", *QUICK,
    )  # fmt: skip
    assert deployed.returncode == 0, deployed.stdout + deployed.stderr
    client = _client(platform)
    await until(lambda: list(_states(client, "tune").values()) == ["ready", "ready"], within=30)

    changed = pier(platform, "settings", "tune", "--request-timeout", "0.75")
    assert changed.returncode == 0, changed.stderr
    assert "request timeout:    0.75 s" in changed.stdout

    def rolled_out() -> bool:
        # Calls keep being served (a failed call fails the test) while the instances restart one by one.
        _answered_by(client, "tune")
        return not client.settings("tune")["restarting"] and list(_states(client, "tune").values()) == ["ready"] * 2

    await until(rolled_out, within=60, every=0.05)
    seen: dict[str, str] = {}

    def both_answered() -> bool:
        answer = _answered_by(client, "tune")
        seen[answer["instance"]] = answer["request_timeout"]
        return len(seen) == 2

    await until(both_answered, within=30, every=0.05)
    assert set(seen.values()) == {"0.75"}


async def test_repeated_crashes_end_in_failed_with_the_reason(platform: Platform, tmp_path: Path) -> None:
    code, _, crash = _code(tmp_path)
    client = _client(platform)
    digest = client.upload_source(code)
    client.create_model(dict(
        name="crashy", source=digest, file="predict.py", function="predict", health_function="health",
        access="unrestricted", instances=1, period=0.5, timeout=0.5, failure_threshold=2, request_timeout=0.5,
        max_restarts=2, restart_backoff=0.2, restart_backoff_max=0.4,
    ))  # fmt: skip
    assert client.wait("crashy", 1, timeout=120)["state"] == "running"

    # From now on every run exits in its import; the running one is ended by a call.
    crash.touch()
    with contextlib.suppress(ApiError, OSError):  # the instance dies under the call: what it is for
        client.predict("crashy", data={"crash": True}, deadline=0)  # once: no retry
    await until(lambda: client.model("crashy")["state"] == "failed", within=60, every=0.2)

    shown = pier(platform, "show", "crashy")
    assert shown.returncode == 0, shown.stderr
    state_line = next(line for line in shown.stdout.splitlines() if "state:" in line)
    assert "failed" in state_line and "crashing on purpose" in state_line
    assert "2 restarts within 600 s; the limit is 2" in state_line

    # Newest first: the failure comes before every restart, and only the stop it caused is newer.
    def deployment_log_once_stopped() -> list[str] | None:
        out = pier(platform, "logs", "crashy", "--deployment")
        assert out.returncode == 0, out.stderr
        lines = out.stdout.splitlines()
        return lines if lines and "stopped" in lines[0] else None

    lines = await until(deployment_log_once_stopped, within=30, every=0.2)
    failure = next(n for n, line in enumerate(lines) if "failed" in line)
    assert "crashing on purpose" in lines[failure]
    assert all("stopped" in line for line in lines[:failure])
    restarts = [n for n, line in enumerate(lines) if "restarting in" in line]
    assert len(restarts) == 2 and min(restarts) > failure


async def test_a_policy_that_could_restart_an_instance_under_a_call_is_refused(
    platform: Platform, tmp_path: Path
) -> None:
    code, _, _ = _code(tmp_path)
    refused = pier(
        platform, "deploy", str(code), "--name", "strict", "--unrestricted",
        "--period", "1", "--failure-threshold", "3", "--request-timeout", "5",
    )  # fmt: skip
    assert refused.returncode != 0
    assert "period * failure_threshold" in refused.stderr and "request_timeout" in refused.stderr
    assert not _client(platform).exists("strict")

    assert pier(platform, "deploy", str(code), "--name", "strict", "--unrestricted", *QUICK).returncode == 0
    changed = pier(platform, "settings", "strict", "--request-timeout", "2")
    assert changed.returncode != 0
    assert "period * failure_threshold (0.5 s * 2 = 1 s) must be greater than request_timeout (2 s)" in changed.stderr
    assert "request_timeout: period * failure_threshold must be greater than request_timeout" in changed.stderr
    # Unchanged.
    assert _client(platform).settings("strict")["request_timeout"] == 0.5
