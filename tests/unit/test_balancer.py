"""How many calls the gateway keeps at a fast instance at once: enough to keep its worker busy.

An instance simulated by its timing alone (virtual time: a worker serves calls one after another).
No network: what is under test is the balancer's admission, which decides whether a fast model
API's throughput through the gateway comes near what the instance serves directly."""

from __future__ import annotations

import asyncio
from collections import deque

import msgspec

from pier.events import INSTANCES_BUCKET, InstanceRecord
from services.gateway.balancer import MAX_PER_WORKER, PIPELINE_BUDGET, Balancer
from services.gateway.table import Table


def _table() -> Table:
    table = Table()
    record = InstanceRecord(instance_id="i-1", model_id="m", version=1, address="127.0.0.1:1", state="ready")
    table.apply(INSTANCES_BUCKET, "i-1", msgspec.json.encode(record), 1)
    return table


async def _settled_depth(service_time: float, clients: int = 64, answers: int = 2000) -> int:
    """`clients` callers, each sending its next call once the last is answered, to a one-worker
    instance simulated in virtual time: it serves calls in arrival order, `service_time` each. The
    median number of calls at the instance over the last half of the run."""
    balancer = Balancer(_table())
    loop = asyncio.get_running_loop()
    clock = 0.0
    at_instance: deque[tuple[float, asyncio.Future[None]]] = deque()

    async def caller() -> None:
        while True:
            instance = await balancer.acquire("m", 1, (), 1000, 3600.0)
            assert instance is not None
            sent, answered = clock, loop.create_future()
            at_instance.append((sent, answered))
            await answered
            balancer.release(instance, clock - sent)

    async def settle() -> None:
        for _ in range(5):  # the released slot goes to a waiter, which sends
            await asyncio.sleep(0)

    callers = [asyncio.create_task(caller()) for _ in range(clients)]
    depths: list[int] = []
    try:
        await settle()
        worker_free = 0.0
        for _ in range(answers):
            sent, answered = at_instance.popleft()
            clock = worker_free = max(worker_free, sent) + service_time
            answered.set_result(None)
            await settle()
            depths.append(len(at_instance))
    finally:
        for task in callers:
            task.cancel()
        await asyncio.gather(*callers, return_exceptions=True)
    return sorted(depths[answers // 2 :])[answers // 4]


async def test_a_fast_function_gets_a_deep_pipeline_that_stays_within_the_budget() -> None:
    # 150 us a call (the sum of 16 floats, measured): the 10 ms budget holds dozens of calls. Judged
    # by the round trip alone, which includes the wait behind the calls sent ahead, it settled at 7.
    depth = await _settled_depth(150e-6)
    assert depth >= 32
    # The last call in line waits no longer than the budget: queueing stays visible at the gateway.
    assert depth <= MAX_PER_WORKER and depth * 150e-6 <= PIPELINE_BUDGET


async def test_a_slow_function_gets_one_call_per_worker() -> None:
    # 50 ms a call: nothing waits at the instance, so queueing and shedding stay at the gateway.
    assert await _settled_depth(0.05) == 1


async def test_a_10_ms_function_gets_two_calls_per_worker() -> None:
    assert await _settled_depth(0.01) == 2
