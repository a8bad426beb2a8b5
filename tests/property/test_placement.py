"""Placement and the wait queue as a state machine: any sequence of submits, releases and cancels
over any inventory keeps the rules of services/scheduler/queue.py (docs/scheduling.md):

- no GPU is held twice, and none is lost (every GPU is free or held by exactly one placement);
- all or nothing: a placement has every instance, each with all its GPUs on one node;
- one line per GPU type, in arrival order; a request starts ahead of an earlier waiting one only
  on nodes the earlier one could never use (the documented exception);
- nothing waits that the rules would let start now;
- `plan` tells, before a submit, whether that submit starts or waits.
"""

from __future__ import annotations

from hypothesis import strategies as st
from hypothesis.stateful import Bundle, RuleBasedStateMachine, consumes, invariant, precondition, rule

from services.scheduler.inventory import Gpu, Inventory
from services.scheduler.queue import MAX_GPUS_PER_INSTANCE, Placement, Queue, Request

TYPES = ("a100", "t4")


@st.composite
def inventories(draw: st.DrawFn) -> Inventory:
    """One to three nodes, each with up to five GPUs of each type."""
    gpus: list[Gpu] = []
    for n in range(draw(st.integers(1, 3))):
        index = 0
        for gpu_type in TYPES:
            for _ in range(draw(st.integers(0, 5))):
                gpus.append(Gpu(node=f"n{n}", device=str(index), type=gpu_type))
                index += 1
    return Inventory(gpus=tuple(gpus), simulated=True)


class Scheduling(RuleBasedStateMachine):
    running = Bundle("running")

    def __init__(self) -> None:
        super().__init__()
        self.queue: Queue | None = None
        self.inventory = Inventory()
        self.seq = 0
        self.held: dict[str, Placement] = {}  # key -> what started, until released
        self.events: list[tuple[str, Request]] = []  # ("start" | "wait", request), for the FIFO check

    @precondition(lambda self: self.queue is None)
    @rule(inventory=inventories())
    def start(self, inventory: Inventory) -> None:
        self.inventory = inventory
        self.queue = Queue(inventory)

    def _started(self, placements: list[Placement]) -> list[Placement]:
        """Record what started, checking the FIFO rule against everything still waiting."""
        assert self.queue is not None
        for placement in placements:
            req = placement.request
            assert req.key not in self.held, f"{req.key} started twice"
            self.held[req.key] = placement
            if req.gpu_type is None:
                continue
            capacity = self.queue.capacity[req.gpu_type]
            for earlier in self.queue.waiting[req.gpu_type]:
                if earlier.seq < req.seq:
                    # The exception: only on nodes the earlier request can never use.
                    for slot in placement.slots:
                        assert capacity[slot.node] < earlier.gpu_count, (
                            f"{req.key} overtook {earlier.key} on {slot.node}, a node it could use"
                        )
        return placements

    @precondition(lambda self: self.queue is not None)
    @rule(
        target=running,
        gpu_type=st.sampled_from((*TYPES, None)),
        gpu_count=st.integers(1, MAX_GPUS_PER_INSTANCE),
        instances=st.integers(1, 3),
    )
    def submit(self, gpu_type: str | None, gpu_count: int, instances: int) -> str:
        assert self.queue is not None
        count = 0 if gpu_type is None else gpu_count
        if gpu_type is not None and self.queue.impossible(gpu_type, count, instances) is not None:
            return ""  # the api refuses it with a 400 before it reaches the queue
        self.seq += 1
        req = Request(key=f"r{self.seq}", seq=self.seq, gpu_type=gpu_type, gpu_count=count, instances=instances)
        plan = self.queue.plan(gpu_type, count, instances)
        placed = self._started(self.queue.submit(req))
        started = [p.request.key for p in placed]
        assert started in ([], [req.key]), "a submit starts the request itself or nothing"
        assert plan.decision == ("start" if started else "wait"), (plan, started)
        if not started:
            assert self.queue.position(req.key) == (gpu_type, plan.position)
        return req.key

    @rule(key=consumes(running))
    def release(self, key: str) -> None:
        """A model API stops: its GPUs go back and whatever now fits starts."""
        assert self.queue is not None
        placement = self.held.pop(key, None)
        if placement is None:
            # Still waiting (or refused): stopping it takes it out of line.
            gpu_type = self.queue.cancel(key)
            if gpu_type is not None:
                self._started(self.queue.schedule(gpu_type))
            return
        gpu_type = placement.request.gpu_type
        if gpu_type is not None:
            self.queue.release(gpu_type, placement.slots)
            self._started(self.queue.schedule(gpu_type))

    # ---- invariants -------------------------------------------------------------------------

    @invariant()
    def no_gpu_twice_and_none_lost(self) -> None:
        if self.queue is None:
            return
        owners: dict[tuple[str, str, str], str] = {}
        for key, placement in self.held.items():
            for slot in placement.slots:
                for device in slot.gpu_devices:
                    gpu = (placement.request.gpu_type or "", slot.node, device)
                    assert gpu not in owners, f"GPU {gpu} given to {owners[gpu]} and {key}"
                    owners[gpu] = key
        free = {(t, node, d) for t, nodes in self.queue.free.items() for node, ds in nodes.items() for d in ds}
        assert not free & set(owners), f"GPUs both free and held: {free & set(owners)}"
        every = {(g.type, g.node, g.device) for g in self.inventory.gpus}
        assert free | set(owners) == every
        for t, total in self.queue.totals().items():
            assert total["free"] == sum(1 for gpu in free if gpu[0] == t)

    @invariant()
    def all_or_nothing(self) -> None:
        types = {(g.node, g.device): g.type for g in self.inventory.gpus}
        for placement in self.held.values():
            req = placement.request
            assert len(placement.slots) == req.instances
            for slot in placement.slots:
                assert len(set(slot.gpu_devices)) == len(slot.gpu_devices) == req.gpu_count
                assert all(types.get((slot.node, d)) == req.gpu_type for d in slot.gpu_devices)

    @invariant()
    def lines_are_in_arrival_order_and_nothing_waits_that_could_start(self) -> None:
        if self.queue is None:
            return
        for gpu_type, line in self.queue.waiting.items():
            assert [r.seq for r in line] == sorted(r.seq for r in line)
            capacity = self.queue.capacity[gpu_type]
            free = {node: len(ds) for node, ds in self.queue.free[gpu_type].items()}
            for n, req in enumerate(line):
                assert req.key not in self.held
                # The nodes no earlier waiting request could ever use are the only ones it may take.
                allowed = [node for node in capacity if all(capacity[node] < e.gpu_count for e in line[:n])]
                fits = sum(free[node] // req.gpu_count for node in allowed)
                assert fits < req.instances, f"{req.key} waits though it fits on {allowed}"


TestScheduling = Scheduling.TestCase
