"""Placement speed and fairness: 10,000 requests of mixed sizes over 1,000 simulated GPUs of 4 types.

Run: `.venv/bin/python bench/scheduler.py`. Prints placements per second of the queue in memory (the
decision the scheduler makes; its PostgreSQL writes are not timed), the ratio to a baseline measured
in the same run (a plain first-fit over a flat free list, without queue rules), and whether any
request was overtaken unfairly: started while an earlier request of its type waited, on a node that
earlier request could have used (docs/scheduling.md, "The queue").
"""

from __future__ import annotations

import random
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from services.scheduler.inventory import parse
from services.scheduler.queue import Queue, Request

TYPES = ["a100", "h100", "l4", "t4"]
NODES_PER_TYPE = 31  # 8 GPUs each: 4 x 31 x 8 = 992, plus one 8-GPU node of a100 = 1,000
REQUESTS = 10_000


def inventory_spec() -> str:
    nodes = [f"{t}-{n}={t}:8" for t in TYPES for n in range(NODES_PER_TYPE)]
    nodes.append("a100-extra=a100:8")
    return ";".join(nodes)


def workload(seed: int = 7) -> list[Request]:
    rng = random.Random(seed)
    out = []
    for seq in range(1, REQUESTS + 1):
        count = rng.choice([1, 1, 1, 2, 2, 4])
        out.append(
            Request(key=str(seq), seq=seq, gpu_type=rng.choice(TYPES), gpu_count=count, instances=rng.choice([1, 2]))
        )
    return out


def run_queue(requests: list[Request], check: bool) -> tuple[float, int, int]:
    """Submit every request; after every 4 submissions the oldest running one stops (and frees GPUs).
    With `check`, every placement is compared with what waited (slow: the run is then not timed)."""
    q = Queue(parse(inventory_spec()))
    capacity = q.capacity
    running: list[tuple[str, list]] = []
    waiting_since: dict[str, Request] = {}
    unfair = placed = 0

    def account(placements: list) -> None:
        nonlocal unfair, placed
        for p in placements:
            r = p.request
            waiting_since.pop(r.key, None)
            for earlier in waiting_since.values() if check else ():
                if earlier.gpu_type == r.gpu_type and earlier.seq < r.seq:
                    usable = {n for n, c in capacity[r.gpu_type].items() if c >= earlier.gpu_count}
                    if any(slot.node in usable for slot in p.slots):
                        unfair += 1
                        break
            running.append((r.gpu_type, p.slots))
            placed += 1

    started = time.perf_counter()
    for n, r in enumerate(requests):
        if check:
            waiting_since[r.key] = r
        account(q.submit(r))
        if n % 4 == 3 and running:
            gpu_type, slots = running.pop(0)
            q.release(gpu_type, slots)
            account(q.schedule(gpu_type))
    while running:
        gpu_type, slots = running.pop(0)
        q.release(gpu_type, slots)
        account(q.schedule(gpu_type))
    elapsed = time.perf_counter() - started
    return elapsed, placed, unfair


def run_baseline(requests: list[Request]) -> float:
    """First fit over per-type free counts, no nodes, no queue: the cheapest possible decision."""
    free = {t: NODES_PER_TYPE * 8 for t in TYPES}
    free["a100"] += 8
    running: list[tuple[str, int]] = []
    started = time.perf_counter()
    for n, r in enumerate(requests):
        need = r.gpu_count * r.instances
        assert r.gpu_type is not None
        if free[r.gpu_type] >= need:
            free[r.gpu_type] -= need
            running.append((r.gpu_type, need))
        if n % 4 == 3 and running:
            t, k = running.pop(0)
            free[t] += k
    return time.perf_counter() - started


def _copy(requests: list[Request]) -> list[Request]:
    return [
        Request(key=r.key, seq=r.seq, gpu_type=r.gpu_type, gpu_count=r.gpu_count, instances=r.instances)
        for r in requests
    ]


def main() -> None:
    requests = workload()
    elapsed, placed, _ = run_queue(_copy(requests), check=False)
    _, _, unfair = run_queue(_copy(requests), check=True)
    baseline = run_baseline(requests)
    rate = placed / elapsed
    print(f"requests: {len(requests)}  GPUs: 1000 simulated, {len(TYPES)} types, 8 per node")
    print(f"placed: {placed}  in {elapsed:.3f} s  =>  {rate:,.0f} placements/s")
    print(
        f"baseline (flat first fit, no nodes, no queue): {len(requests) / baseline:,.0f} decisions/s;"
        f" the queue takes {elapsed / baseline:.0f}x its time"
    )
    print(f"unfair overtakes: {unfair}  ({'none' if unfair == 0 else 'RULE BROKEN'})")
    print(f"target 5,000 placements/s: {'met' if rate > 5000 else 'NOT met'}")


if __name__ == "__main__":
    main()
