"""`pier deploy` on a terminal: each long step (upload, build, queue, start) on a line of its own,
rewritten in place, with its elapsed time. Run under a pseudo-terminal, as a user's shell runs it.
(The quiet path, with no terminal, is what every other e2e test of `pier deploy` sees: test_deploy
checks that nothing of it shows there.)"""

from __future__ import annotations

import asyncio
import os
import pty
import re
import subprocess
import sys

import msgspec
import pytest

from infra.supervisor import Platform
from pier.config import Settings
from tests.e2e.conftest import EXAMPLES

GPU_FLAGS = ("--gpu-type", "a100", "--gpu-count", "2", "--instances", "1", "--unrestricted")
ELAPSED = r"\s+\d+\.\ds"


@pytest.fixture
def settings(settings: Settings) -> Settings:
    """Two simulated a100 GPUs: room for one model API that asks for both, so a second one waits."""
    return msgspec.structs.replace(settings, gpus="a100:2")


def _on_a_terminal(platform: Platform, *args: str) -> tuple[int, str]:
    """Run `pier` with a pseudo-terminal as its stdin, stdout and stderr; its exit code and all it wrote."""
    main, terminal = pty.openpty()
    env = {**os.environ, "PIER_HOME": str(platform.settings.home), "COLUMNS": "160"}
    with subprocess.Popen(
        [sys.executable, "-m", "pier", *args], stdin=terminal, stdout=terminal, stderr=terminal, env=env
    ) as proc:
        os.close(terminal)
        written = bytearray()
        try:
            while chunk := os.read(main, 4096):
                written += chunk
        except OSError:  # EIO: the terminal's other side closed, as the command ended
            pass
        finally:
            os.close(main)
        code = proc.wait(timeout=60)
    return code, written.decode(errors="replace")


def _steps(output: str) -> dict[str, str]:
    """The last state of each step's line (each redraw starts with a carriage return and a clear)."""
    seen: dict[str, str] = {}
    for draw in re.split(r"\r\x1b\[K|\r?\n", output):
        step = draw.split(" ", 1)[0]
        if step in ("upload", "build", "queue", "start"):
            seen[step] = draw
    return seen


async def test_deploy_on_a_terminal_shows_upload_build_start_and_the_queue(platform: Platform) -> None:
    code, output = await asyncio.to_thread(
        _on_a_terminal, platform, "deploy", str(EXAMPLES / "hello"), "--name", "first", *GPU_FLAGS
    )
    assert code == 0, output
    steps = _steps(output)
    assert re.fullmatch(rf"upload  \[#{{24}}\] [\d.]+ (bytes|KiB) / [\d.]+ (bytes|KiB){ELAPSED}", steps["upload"]), (
        steps
    )
    assert re.fullmatch(rf"build   .+{ELAPSED}", steps["build"]), steps
    assert re.fullmatch(rf"start   1/1 instances ready{ELAPSED}", steps["start"]), steps
    assert "\r\x1b[K" in output and "version 1 is serving" in output
    assert "  building" not in output  # the plain state lines are for pipes; the steps say it here

    code, output = await asyncio.to_thread(
        _on_a_terminal, platform, "deploy", str(EXAMPLES / "hello"), "--name", "second", *GPU_FLAGS
    )
    assert code == 0, output
    assert re.fullmatch(rf"queue   place 1 in line for a100 GPUs .+{ELAPSED}", _steps(output)["queue"]), output
