"""The whole platform: the five services as processes against real NATS and PostgreSQL."""

from __future__ import annotations

import json
import os
import queue
import subprocess
import sys
import threading
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import msgspec
import pytest

from infra.embedded import free_port
from infra.supervisor import Platform
from pier.config import Settings

TOKEN = "pier_e2e_token"


@asynccontextmanager
async def running_platform(settings: Settings) -> AsyncIterator[Platform]:
    """The five services on `settings` (with free ports of their own), stopped even when a test fails."""
    settings = msgspec.structs.replace(
        settings, api_port=free_port(), gateway_port=free_port(), gateway_metrics_port=free_port(), ack_wait=3.0
    )
    settings.home.mkdir(parents=True, exist_ok=True)
    (settings.home / "credentials.json").write_text(
        json.dumps({"api_url": settings.api_url, "gateway_url": settings.gateway_url, "token": TOKEN})
    )
    running = Platform(settings, TOKEN)
    try:
        running.start()
        await running.wait_healthy()
        yield running
    finally:
        running.stop()


@pytest.fixture
async def platform(settings: Settings) -> AsyncIterator[Platform]:
    async with running_platform(settings) as running:
        yield running


def pier(platform: Platform, *args: str, timeout: float = 180) -> subprocess.CompletedProcess[str]:
    """Run the `pier` CLI as a user would, reading the platform's credentials file."""
    env = {**os.environ, "PIER_HOME": str(platform.settings.home)}
    return subprocess.run(
        [sys.executable, "-m", "pier", *args], env=env, capture_output=True, text=True, timeout=timeout
    )


def follow(platform: Platform, *args: str) -> tuple[subprocess.Popen[str], queue.Queue[str]]:
    """A following `pier` command (`logs NAME -f`, `events NAME -f`) as a user runs it; its stdout,
    line by line, in a queue."""
    env = {**os.environ, "PIER_HOME": str(platform.settings.home)}
    follower = subprocess.Popen([sys.executable, "-m", "pier", *args], env=env, stdout=subprocess.PIPE, text=True)
    printed: queue.Queue[str] = queue.Queue()

    def read() -> None:
        for line in follower.stdout or []:
            printed.put(line)

    threading.Thread(target=read, daemon=True).start()
    return follower, printed


EXAMPLES = Path(__file__).parents[2] / "examples"
