"""pier.tasks: loops that outlive one cancel() still end, and a failing loop's error is not lost."""

from __future__ import annotations

import asyncio

import pytest

from pier.tasks import cancel_and_wait, together


class Stubborn:
    """A loop that shrugs off its first cancellation, as one around Python 3.11's `asyncio.wait_for`
    does when the cancel lands just as the awaited reply arrives."""

    def __init__(self) -> None:
        self.cancels = 0
        self.ended = False

    async def run(self) -> None:
        try:
            while True:
                try:
                    await asyncio.sleep(3600)
                except asyncio.CancelledError:
                    self.cancels += 1
                    if self.cancels > 1:
                        raise
        finally:
            self.ended = True


async def test_a_task_group_would_wait_on_a_stubborn_loop_forever() -> None:
    # What the helpers exist for: one cancel() is not enough.
    loop = Stubborn()
    task = asyncio.create_task(loop.run())
    await asyncio.sleep(0)
    task.cancel()
    done, _ = await asyncio.wait([task], timeout=0.2)
    assert not done and loop.cancels == 1
    await cancel_and_wait([task], every=0.05)
    assert task.cancelled() and loop.ended


async def test_together_stops_every_loop_when_cancelled_even_a_stubborn_one() -> None:
    loops = [Stubborn(), Stubborn()]
    runner = asyncio.create_task(together(*(loop.run() for loop in loops)))
    await asyncio.sleep(0.05)
    runner.cancel()  # one cancel, as pier.service.run gives on SIGTERM
    with pytest.raises(asyncio.CancelledError):
        await asyncio.wait_for(runner, timeout=30)
    assert all(loop.ended for loop in loops)


async def test_together_raises_a_failing_loops_error_and_stops_the_others() -> None:
    survivor = Stubborn()

    async def failing() -> None:
        await asyncio.sleep(0.01)
        raise RuntimeError("the database went away")

    with pytest.raises(RuntimeError, match="the database went away"):
        await asyncio.wait_for(together(survivor.run(), failing()), timeout=30)
    assert survivor.ended


async def test_together_returns_once_every_loop_has_returned() -> None:
    finished: list[int] = []

    async def finish(n: int) -> None:
        await asyncio.sleep(0.01 * n)
        finished.append(n)

    await together(finish(2), finish(1))
    assert sorted(finished) == [1, 2]
