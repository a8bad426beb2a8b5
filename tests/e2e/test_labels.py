"""Routing modes and labels end to end: `pier promote` switches `prod` with no failed call."""

from __future__ import annotations

import asyncio

from infra.supervisor import Platform
from pier.client import ApiError, Client
from tests.e2e.conftest import TOKEN, pier
from tests.support import until


def _client(platform: Platform) -> Client:
    s = platform.settings
    return Client(api_url=s.api_url, gateway_url=s.gateway_url, token=TOKEN)


async def test_promote_switches_prod_while_latest_serves_the_newest(platform: Platform, tmp_path) -> None:  # type: ignore[no-untyped-def]
    code = tmp_path / "m"
    code.mkdir()
    deploy = ("deploy", str(code), "--name", "staged", "--unrestricted", "--routing-mode", "advanced")
    (code / "predict.py").write_text("def predict():\n    return 'one'\n")
    assert pier(platform, *deploy).returncode == 0
    promoted = pier(platform, "promote", "staged", "1")
    assert promoted.returncode == 0, promoted.stderr
    client = _client(platform)
    await until(lambda: _call(client, "prod") == "one")

    (code / "predict.py").write_text("def predict():\n    return 'two'\n")
    done = pier(platform, *deploy)
    assert done.returncode == 0, done.stdout + done.stderr
    # Advanced mode: latest is the new version, prod stays where it was promoted.
    assert _call(client, None) == "two"
    assert _call(client, "prod") == "one"

    seen: list[str] = []
    stop = asyncio.Event()

    async def stream() -> None:
        while not stop.is_set():
            seen.append(await asyncio.to_thread(_call, client, "prod"))

    task = asyncio.create_task(stream())
    try:
        await until(lambda: len(seen) >= 5, within=30)
        assert pier(platform, "promote", "staged", "2", "--label", "prod").returncode == 0
        await until(lambda: seen[-5:] == ["two"] * 5, within=30)
    finally:
        stop.set()
        await task
    assert set(seen) <= {"one", "two"}  # every call answered by a version: none failed
    # Version 1 lost its label and is not latest: it stops.
    await until(lambda: {i["version"] for i in client.model("staged")["running_instances"]} == {2}, within=30)
    assert [(lb["label"], lb["version"]) for lb in client.labels("staged")] == [("prod", 2)]


async def test_promote_in_basic_mode_is_refused_with_the_reason(platform: Platform, tmp_path) -> None:  # type: ignore[no-untyped-def]
    code = tmp_path / "b"
    code.mkdir()
    (code / "predict.py").write_text("def predict():\n    return 1\n")
    assert pier(platform, "deploy", str(code), "--name", "plain", "--unrestricted").returncode == 0
    done = pier(platform, "promote", "plain", "1")
    assert done.returncode != 0 and "routing mode" in done.stderr


def _call(client: Client, label: str | None) -> str:
    try:
        return str(client.predict("staged", data={}, label=label or "latest")["result"])
    except ApiError as exc:
        return f"HTTP {exc.status}"
