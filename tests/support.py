"""Helpers shared by tests: poll with a deadline instead of sleeping."""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import Awaitable, Callable
from typing import Any


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
