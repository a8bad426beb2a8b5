"""`pier logs` through the whole platform: newest first, build and deployment logs, a live follower,
and logs that survive a restart of every service."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from pathlib import Path

import aiohttp
import msgspec
import nats
from nats.aio.msg import Msg

from infra.supervisor import Platform
from pier import events
from pier.client import ApiError, Client
from pier.config import Settings
from tests.e2e.conftest import TOKEN, follow, pier, running_platform
from tests.support import until

# Each call writes a line to the instance's stdout, which is its instance log.
CODE = """
def predict(n):
    print(f"call {n}", flush=True)
    return n
"""


def _client(platform: Platform) -> Client:
    s = platform.settings
    return Client(api_url=s.api_url, gateway_url=s.gateway_url, token=TOKEN)


def _deploy(platform: Platform, tmp_path: Path, name: str) -> Client:
    code = tmp_path / name
    code.mkdir()
    (code / "predict.py").write_text(CODE)
    done = pier(platform, "deploy", str(code), "--name", name, "--unrestricted", "--instances", "1")
    assert done.returncode == 0, done.stdout + done.stderr
    return _client(platform)


def _calls_logged(client: Client, name: str, *numbers: int) -> bool:
    lines = [x["line"] for x in client.logs(name, kind="instance", limit=1000)["lines"]]
    return all(f"call {n}" in lines for n in numbers)


def _printed(platform: Platform, *args: str) -> list[str]:
    done = pier(platform, "logs", *args)
    assert done.returncode == 0, done.stderr
    return done.stdout.splitlines()


def _with_reader_gone(platform: Platform, *args: str) -> subprocess.CompletedProcess[str]:
    """The CLI writing to a pipe whose reading end is already closed."""
    read_end, write_end = os.pipe()
    os.close(read_end)
    env = {**os.environ, "PIER_HOME": str(platform.settings.home)}
    try:
        return subprocess.run(
            [sys.executable, "-m", "pier", *args], env=env, stdout=write_end, stderr=subprocess.PIPE, text=True
        )
    finally:
        os.close(write_end)


def _position(lines: list[str], text: str) -> int:
    return next(n for n, line in enumerate(lines) if text in line)


async def test_pier_logs_prints_instance_build_and_deployment_logs_newest_first(
    platform: Platform, tmp_path: Path
) -> None:
    client = _deploy(platform, tmp_path, "chatty")
    for n in (1, 2, 3):
        assert client.predict("chatty", data={"n": n})["result"] == n
    await until(lambda: _calls_logged(client, "chatty", 1, 2, 3), within=30, every=0.1)

    calls = [
        line.split()[-2:] for line in _printed(platform, "chatty") if line.endswith(("call 1", "call 2", "call 3"))
    ]
    assert calls == [["call", "3"], ["call", "2"], ["call", "1"]]

    # `pier logs NAME | head` whose reader has gone: no traceback, as with any Unix tool.
    cut = _with_reader_gone(platform, "logs", "chatty")
    assert cut.stderr == "" and cut.returncode == 1, cut.stderr

    build = _printed(platform, "chatty", "--build")
    assert build and all(" v1 " in line for line in build)  # each build line names its version

    deployment = _printed(platform, "chatty", "--deployment")
    instance_id = client.model("chatty")["running_instances"][0]["instance_id"]
    # The lifecycle in order, read from the bottom up.
    ready = _position(deployment, f"instance {instance_id} ready")
    started = _position(deployment, f"instance {instance_id} started at")
    placed = _position(deployment, "placed 1 instance(s)")
    built = _position(deployment, "version 1: build succeeded")
    building = _position(deployment, "version 1: build started")
    assert ready < started < placed < built < building


async def test_a_follower_sees_a_new_line_within_two_seconds(platform: Platform, tmp_path: Path) -> None:
    client = _deploy(platform, tmp_path, "live")
    client.predict("live", data={"n": 1})
    await until(lambda: _calls_logged(client, "live", 1), within=30, every=0.1)

    follower, printed = follow(platform, "logs", "live", "-f")

    def next_line_with(text: str, within: float) -> str:
        deadline = time.monotonic() + within
        while True:
            line = printed.get(timeout=max(0.0, deadline - time.monotonic()))
            if text in line:
                return line

    try:
        next_line_with("call 1", within=30)  # the backlog: the follower is connected
        client.predict("live", data={"n": 2})
        # Shipped within a round (PIER_LOG_BATCH_WAIT, 0.5 s), folded, polled (0.2 s): about a
        # second at worst, with room for a loaded machine.
        assert next_line_with("call 2", within=2.0).rstrip().endswith("call 2")
    finally:
        follower.terminate()
        follower.wait(timeout=10)


async def test_logs_survive_a_restart_of_every_service(platform: Platform, tmp_path: Path) -> None:
    client = _deploy(platform, tmp_path, "kept")
    client.predict("kept", data={"n": 7})
    await until(lambda: _calls_logged(client, "kept", 7), within=30, every=0.1)
    before = {kind: _printed(platform, "kept", f"--{kind}") for kind in ("build", "deployment")}

    platform.stop()
    platform.start()
    await platform.wait_healthy()

    def answers() -> bool:
        try:
            return bool(client.predict("kept", data={"n": 8})["result"] == 8)
        except (ApiError, OSError):
            return False

    await until(answers, within=60, every=0.2)
    await until(lambda: _calls_logged(client, "kept", 7, 8), within=30, every=0.1)
    assert _printed(platform, "kept", "--build") == before["build"]
    # The deployment log grew (the instance started again) and kept every old line, in order.
    after = _printed(platform, "kept", "--deployment")
    assert after[-len(before["deployment"]) :] == before["deployment"]


QUIET = """
def total(values):
    return sum(values)
"""


def _instance_lines(client: Client, name: str) -> list[str]:
    """Every instance log line the api serves for `name`, page after page, newest first."""
    lines: list[str] = []
    before = None
    while True:
        page = client.logs(name, kind="instance", limit=1000, before=before)
        lines += [x["line"] for x in page["lines"]]
        if (before := page["next_before"]) is None:
            return lines


async def test_a_thousand_calls_travel_in_a_handful_of_log_messages_and_all_are_readable(
    settings: Settings, tmp_path: Path
) -> None:
    # A window longer than the calls take, so the count says how lines are batched, not how fast
    # this machine is; with the default 0.5 s the same lines go in about (duration / 0.5 s) messages.
    async with running_platform(msgspec.structs.replace(settings, log_batch_wait=2.0)) as platform:
        code = tmp_path / "quiet"
        code.mkdir()
        (code / "predict.py").write_text(QUIET)
        done = pier(platform, "deploy", str(code), "--name", "quiet", "--function", "total", "--unrestricted")
        assert done.returncode == 0, done.stdout + done.stderr
        client = _client(platform)
        model_id = client.model("quiet")["id"]

        carrying: list[int] = []  # per message on the logs subject: how many request-log lines it had
        nc = await nats.connect(platform.settings.nats_url)
        try:

            async def count(msg: Msg) -> None:
                try:
                    lines = msgspec.json.decode(msg.data, type=events.LogBatch).lines
                except msgspec.ValidationError:  # a message of one line
                    lines = [msgspec.json.decode(msg.data, type=events.LogLine).line]
                carrying.append(sum("flood-" in line for line in lines))

            await nc.subscribe(events.logs_subject(model_id, "instance"), cb=count)
            url = f"{platform.settings.gateway_url}/models/quiet/latest/model"
            body = {"data": {"values": [float(n) for n in range(16)]}}
            async with aiohttp.ClientSession() as session:

                async def call(n: int) -> int:
                    async with session.post(url, json=body, headers={"X-Request-Id": f"flood-{n}"}) as r:
                        return r.status

                statuses: list[int] = []
                for start in range(0, 1000, 50):
                    statuses += await asyncio.gather(*(call(n) for n in range(start, start + 50)))
            assert statuses == [200] * 1000

            wanted = {f"request flood-{n} " for n in range(1000)}

            def all_readable() -> bool:
                logged = {line.split("POST")[0] for line in _instance_lines(client, "quiet")}
                return wanted <= logged

            await until(all_readable, within=30, every=0.5)
            assert sum(carrying) == 1000
            assert len([n for n in carrying if n]) <= 5, carrying
        finally:
            await nc.close()
