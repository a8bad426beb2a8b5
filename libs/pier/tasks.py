"""Running loops side by side and stopping them so that each really ends.

On Python 3.11, `asyncio.wait_for` (which nats-py uses for every request, fetch and watch) swallows a
cancellation that lands just as its inner future completes. A loop around such a call then goes on
after one `cancel()`, and a TaskGroup, which cancels its tasks once, waits for it forever: a service
that never stops on SIGTERM, a test that never ends. Everything here cancels again until done."""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine, Iterable
from typing import Any


async def cancel_and_wait(tasks: Iterable[asyncio.Task[Any]], every: float = 1.0) -> None:
    """Cancel `tasks` and return once each has ended, cancelling again while one still runs."""
    pending = {task for task in tasks if not task.done()}
    while pending:
        for task in pending:
            task.cancel()
        _, pending = await asyncio.wait(pending, timeout=every)


async def together(*loops: Coroutine[Any, Any, None]) -> None:
    """Run `loops` until each has returned, one raises (its error is raised here) or this is
    cancelled; every one of them has ended when this returns."""
    tasks = [asyncio.create_task(loop) for loop in loops]
    try:
        done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_EXCEPTION)
        for task in done:
            if not task.cancelled() and (error := task.exception()) is not None:
                raise error
    finally:
        await cancel_and_wait(tasks)
