"""The request log never slows a call: when the instance log falls behind, request-log lines are
dropped, counted in `/metrics` and in a "pier: dropped N request-log lines" line."""

from __future__ import annotations

import asyncio
import os
import re
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import pytest

from infra.embedded import free_port
from tests.support import until

CODE = """
def total(values):
    return sum(values)
"""


@pytest.fixture
def stalled_harness(tmp_path: Path) -> Iterator[tuple[subprocess.Popen[bytes], int]]:
    """A harness whose stdout is a pipe nobody reads yet: once the pipe is full, writes block."""
    (tmp_path / "predict.py").write_text(CODE)
    port = free_port()
    env = {
        **os.environ,
        "PIER_ENTRYPOINT": '{"file": "predict.py", "function": "total"}',
        "PIER_WORKING_DIR": str(tmp_path),
        "PIER_PORT": str(port),
        "PIER_REQUEST_LOG_BUFFER": "100",
    }
    harness = subprocess.Popen(
        [sys.executable, "-m", "pier.harness"], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
    )
    try:
        yield harness, port
    finally:
        harness.kill()
        harness.wait(timeout=10)
        assert harness.stdout is not None
        harness.stdout.close()


def _dropped(metrics: str) -> int:
    found = re.search(r"^pier_request_log_dropped_total (\d+)$", metrics, re.M)
    assert found, metrics
    return int(found.group(1))


async def test_a_flood_of_calls_drops_request_log_lines_counted_and_no_call_waits(
    stalled_harness: tuple[subprocess.Popen[bytes], int],
) -> None:
    harness, port = stalled_harness
    base = f"http://127.0.0.1:{port}"
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as session:

        async def up() -> bool:
            try:
                async with session.get(f"{base}/ping") as r:
                    return r.status == 200
            except aiohttp.ClientError:
                return False

        await until(up, within=30, every=0.1)

        # The pipe holds about a thousand lines, the buffer a hundred more; then lines are dropped.
        # (Were the log written on the loop, the calls would hang here once the pipe is full.)
        async def call(n: int) -> int:
            async with session.post(f"{base}/model", json={"parameters": [[1.0, 2.0]]}) as r:
                await r.read()
                return r.status

        statuses: list[int] = []
        for start in range(0, 2000, 100):
            statuses += await asyncio.gather(*(call(n) for n in range(start, start + 100)))
        assert statuses == [200] * 2000
        async with session.get(f"{base}/metrics") as r:
            dropped = _dropped(await r.text())
        assert dropped > 0

        # Draining the pipe lets the writer go on; it says how many lines it dropped.
        output: list[str] = []

        def drain() -> None:
            assert harness.stdout is not None
            for raw in harness.stdout:
                output.append(raw.decode(errors="replace"))

        threading.Thread(target=drain, daemon=True).start()

        def reported() -> int:
            said = [re.search(r"pier: dropped (\d+) request-log lines", line) for line in list(output)]
            return sum(int(m.group(1)) for m in said if m)

        await until(lambda: reported() == dropped, within=30, every=0.1)
        logged = sum(line.startswith("request ") for line in list(output))
        assert logged + dropped == 2000
