"""Scheduled rebuilds: a run's output becomes a new serving version; a failing run changes nothing."""

from __future__ import annotations

from pathlib import Path

from infra.supervisor import Platform
from pier.client import Client
from tests.e2e.conftest import TOKEN, pier
from tests.support import until

TRAIN = """
from pathlib import Path
import sys
if Path("fail").exists():
    sys.exit("training diverged")
n = int(Path("weights.txt").read_text()) + 1
Path("weights.txt").write_text(str(n))
print("trained", n)
"""
PREDICT = "from pathlib import Path\n\ndef predict():\n    return int(Path('weights.txt').read_text())\n"


async def test_a_run_deploys_a_new_version_and_a_failing_run_leaves_the_old_one_serving(
    platform: Platform, tmp_path: Path
) -> None:
    s = platform.settings
    client = Client(api_url=s.api_url, gateway_url=s.gateway_url, token=TOKEN)
    code = tmp_path / "m"
    code.mkdir()
    (code / "predict.py").write_text(PREDICT)
    (code / "train.py").write_text(TRAIN)
    (code / "weights.txt").write_text("1")
    digest = client.upload_source(code)
    client.create_model(
        {"name": "trained", "source": digest, "file": "predict.py", "function": "predict", "access": "unrestricted"}
    )
    assert client.wait("trained", 1, timeout=180)["state"] == "running"

    made = pier(platform, "schedules", "create", "trained", "--cron", "0 3 * * *", "--command", "python train.py")
    assert made.returncode == 0, made.stderr
    schedule = client.api("GET", "/models/trained/schedules")[0]
    assert pier(platform, "schedules", "run", "trained", schedule["id"]).returncode == 0

    def runs() -> list[dict]:  # type: ignore[type-arg]
        return list(client.api("GET", f"/models/trained/schedules/{schedule['id']}/runs"))

    first = await until(lambda: [r for r in runs() if r["state"] != "queued"], within=120)
    assert first[0]["state"] == "succeeded", first
    assert "trained 2" in first[0]["log"]
    assert first[0]["version"] == 2
    model = client.wait("trained", 2, timeout=180)
    assert model["latest"] == 2 and model["state"] == "running"

    # The next run starts from version 2's files; make it fail.
    (code / "fail").write_text("")
    client.create_version(
        "trained", {"source": client.upload_source(code), "file": "predict.py", "function": "predict"}
    )
    assert client.wait("trained", 3, timeout=180)["latest"] == 3
    assert pier(platform, "schedules", "run", "trained", schedule["id"]).returncode == 0
    failed = await until(lambda: [r for r in runs() if r["state"] == "failed"], within=120)
    assert failed[0]["reason"] == "the command exited with code 1"
    assert "training diverged" in failed[0]["log"]
    model = client.model("trained")
    assert model["latest"] == 3 and [v["number"] for v in model["versions"]] == [3, 2, 1]

    listed = pier(platform, "schedules", "list", "trained")
    assert "succeeded" in listed.stdout and "-> version 2" in listed.stdout and "failed" in listed.stdout
    assert pier(platform, "schedules", "delete", "trained", schedule["id"]).returncode == 0
    assert client.api("GET", "/models/trained/schedules") == []
