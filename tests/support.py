"""Helpers shared by tests: poll with a deadline instead of sleeping."""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import msgspec

from pier.http import SECRET_HEADER


async def until(predicate: Callable[[], Any | Awaitable[Any]], within: float = 10.0, every: float = 0.02) -> Any:
    """Wait until `predicate()` (sync or async) is truthy and return its value; fail after `within` s."""
    async with asyncio.timeout(within):
        while True:
            value = predicate()
            if inspect.isawaitable(value):
                value = await value
            if value:
                return value
            await asyncio.sleep(every)


def instance_headers(home: Path, address: str) -> dict[str, str]:
    """The header an instance at `address` wants from its callers (the gateway's and the monitor's
    secret), read from its pid file as a test that calls the instance directly must."""
    port = int(address.rsplit(":", 1)[1])
    for pid_file in (home / "instances").glob("*/pid"):
        handle = msgspec.json.decode(pid_file.read_bytes())
        if handle["port"] == port:
            return {SECRET_HEADER: handle["secret"]}
    return {}
