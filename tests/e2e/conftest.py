"""The whole platform: the five services as processes against real NATS and PostgreSQL."""

from __future__ import annotations

import json
import os
import subprocess
import sys
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
        settings, api_port=free_port(), gateway_port=free_port(), gateway_metrics_port=0, ack_wait=3.0
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


EXAMPLES = Path(__file__).parents[2] / "examples"
