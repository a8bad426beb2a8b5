"""The wait queue and the placement decision over the GPU inventory, in memory and pure.

The controller keeps PostgreSQL as the record (requests, allocations) and rebuilds this from it at
start; every decision is made here, so it is fast (bench/scheduler.py) and testable without a bus.

Rules:
- All or nothing: a request of N instances x G GPUs starts only when every instance fits, each
  instance's G GPUs on one node. Nothing is held while waiting.
- One queue per GPU type, first come first served. CPU-only requests never wait.
- A later request may start before an earlier waiting one of its type only on nodes the earlier one
  could never use (nodes with fewer GPUs of that type in total than it asks for per instance). Any
  GPU it took elsewhere might be one the earlier request needs when the next GPU is freed, and
  without knowing how long a model API runs we cannot prove it would not delay it, so we never do.
"""

from __future__ import annotations

from collections.abc import Iterable

import msgspec

from services.scheduler.inventory import LOCAL_NODE, Inventory

MAX_GPUS_PER_INSTANCE = 4


class Request(msgspec.Struct, kw_only=True):
    """One model API version's ask. `key` identifies it (the controller uses `model_id:version`)."""

    key: str
    seq: int
    gpu_type: str | None
    gpu_count: int
    instances: int


class Slot(msgspec.Struct, kw_only=True, frozen=True):
    """Where one instance runs and the GPUs it is given."""

    node: str = LOCAL_NODE
    gpu_devices: tuple[str, ...] = ()


class Placement(msgspec.Struct, kw_only=True):
    request: Request
    slots: list[Slot]


class Plan(msgspec.Struct, kw_only=True):
    """What would happen to a request now: start, wait (and where in line), or never fit."""

    decision: str  # "start" | "wait" | "impossible"
    reason: str
    position: int | None = None
    ahead: int = 0


class Queue:
    def __init__(self, inventory: Inventory, used: Iterable[tuple[str, str]] = ()) -> None:
        taken = set(used)
        self.simulated = inventory.simulated
        self.capacity = inventory.capacity()
        self.free: dict[str, dict[str, list[str]]] = {t: {n: [] for n in nodes} for t, nodes in self.capacity.items()}
        for gpu in inventory.gpus:
            if (gpu.node, gpu.device) not in taken:
                self.free[gpu.type][gpu.node].append(gpu.device)
        self.waiting: dict[str, list[Request]] = {t: [] for t in self.capacity}

    # ---- questions --------------------------------------------------------------------------------

    def types(self) -> list[str]:
        return sorted(self.capacity)

    def impossible(self, gpu_type: str | None, gpu_count: int, instances: int) -> str | None:
        """Why a request could never start, even on an idle inventory; None when it could."""
        if gpu_count <= 0:
            return None
        if gpu_type not in self.capacity:
            return f"gpu_type: no GPUs of type {gpu_type!r}; there are: {', '.join(self.types()) or 'none'}"
        if gpu_count > MAX_GPUS_PER_INSTANCE:
            return f"gpu_count: at most {MAX_GPUS_PER_INSTANCE} GPUs per instance"
        fit = sum(c // gpu_count for c in self.capacity[gpu_type].values())
        if fit < instances:
            return (
                f"{instances} instances x {gpu_count} {gpu_type} GPUs on one node each can never fit: "
                f"the nodes hold at most {fit} such instances"
            )
        return None

    def position(self, key: str) -> tuple[str, int] | None:
        """(GPU type, 1-based place in line) of a waiting request."""
        for gpu_type, line in self.waiting.items():
            for n, req in enumerate(line, start=1):
                if req.key == key:
                    return gpu_type, n
        return None

    def totals(self) -> dict[str, dict[str, int]]:
        """Per type: total, free, and GPUs asked for by waiting requests."""
        return {
            t: {
                "total": sum(self.capacity[t].values()),
                "free": sum(len(d) for d in self.free[t].values()),
                "requested": sum(r.gpu_count * r.instances for r in self.waiting[t]),
                "waiting": len(self.waiting[t]),
            }
            for t in self.types()
        }

    def plan(self, gpu_type: str | None, gpu_count: int, instances: int) -> Plan:
        if gpu_count <= 0:
            return Plan(decision="start", reason="CPU only: starts now")
        why = self.impossible(gpu_type, gpu_count, instances)
        if why is not None:
            return Plan(decision="impossible", reason=why)
        assert gpu_type is not None
        line = self.waiting[gpu_type]
        probe = Request(key="", seq=0, gpu_type=gpu_type, gpu_count=gpu_count, instances=instances)
        if self._fit(gpu_type, probe, self._allowed(gpu_type, self._blocked(gpu_type, line))) is not None:
            return Plan(decision="start", reason=f"{instances} x {gpu_count} {gpu_type} GPUs are free: starts now")
        free = sum(len(d) for d in self.free[gpu_type].values())
        ahead = len(line)
        reason = (
            f"waits for {instances * gpu_count} {gpu_type} GPUs ({free} free of "
            f"{sum(self.capacity[gpu_type].values())}); {ahead} model API(s) ahead in line"
        )
        return Plan(decision="wait", reason=reason, position=ahead + 1, ahead=ahead)

    # ---- changes ----------------------------------------------------------------------------------

    def submit(self, req: Request) -> list[Placement]:
        """Queue a request and return what starts now (it, or nothing). Call `impossible` first."""
        if req.gpu_count <= 0 or req.gpu_type is None:
            return [Placement(request=req, slots=[Slot() for _ in range(req.instances)])]
        self.waiting[req.gpu_type].append(req)
        return self.schedule(req.gpu_type)

    def restore(self, req: Request) -> None:
        """Put a waiting request back at its place (at start, from the database)."""
        assert req.gpu_type is not None
        line = self.waiting[req.gpu_type]
        line.append(req)
        line.sort(key=lambda r: r.seq)

    def cancel(self, key: str) -> str | None:
        """Take a waiting request out of line; returns its GPU type (to schedule), or None."""
        for gpu_type, line in self.waiting.items():
            for n, req in enumerate(line):
                if req.key == key:
                    del line[n]
                    return gpu_type
        return None

    def release(self, gpu_type: str, slots: Iterable[Slot]) -> None:
        free = self.free.get(gpu_type)
        if free is None:
            return
        for slot in slots:
            devices = free.setdefault(slot.node, [])
            for device in slot.gpu_devices:
                if device not in devices:
                    devices.append(device)
            devices.sort(key=_device_order)

    def schedule(self, gpu_type: str) -> list[Placement]:
        """Start, in order, every waiting request of `gpu_type` the rules allow."""
        line = self.waiting.get(gpu_type, [])
        nodes = set(self.capacity.get(gpu_type, {}))
        blocked: set[str] = set()
        placed: list[Placement] = []
        remaining: list[Request] = []
        for n, req in enumerate(line):
            if blocked >= nodes:
                # Every node is promised to someone earlier in line: nothing later can start.
                remaining.extend(line[n:])
                break
            slots = self._fit(gpu_type, req, self._allowed(gpu_type, blocked))
            if slots is None:
                remaining.append(req)
                blocked |= self._usable(gpu_type, req.gpu_count)
                continue
            self._take(gpu_type, slots)
            placed.append(Placement(request=req, slots=slots))
        self.waiting[gpu_type] = remaining
        return placed

    # ---- internals --------------------------------------------------------------------------------

    def _usable(self, gpu_type: str, gpu_count: int) -> set[str]:
        return {node for node, c in self.capacity[gpu_type].items() if c >= gpu_count}

    def _blocked(self, gpu_type: str, line: list[Request]) -> set[str]:
        blocked: set[str] = set()
        for req in line:
            blocked |= self._usable(gpu_type, req.gpu_count)
        return blocked

    def _allowed(self, gpu_type: str, blocked: set[str]) -> set[str] | None:
        return None if not blocked else set(self.capacity[gpu_type]) - blocked

    def _fit(self, gpu_type: str, req: Request, allowed: set[str] | None) -> list[Slot] | None:
        """Best fit: fill the nodes with the fewest free GPUs first, keeping big holes for big asks."""
        count = req.gpu_count
        candidates = [
            (len(devices), node)
            for node, devices in self.free[gpu_type].items()
            if len(devices) >= count and (allowed is None or node in allowed)
        ]
        if sum(n // count for n, _ in candidates) < req.instances:
            return None
        candidates.sort()
        slots: list[Slot] = []
        for n, node in candidates:
            devices = self.free[gpu_type][node]
            for k in range(n // count):
                if len(slots) == req.instances:
                    return slots
                slots.append(Slot(node=node, gpu_devices=tuple(devices[k * count : (k + 1) * count])))
        return slots

    def _take(self, gpu_type: str, slots: list[Slot]) -> None:
        free = self.free[gpu_type]
        for slot in slots:
            taken = set(slot.gpu_devices)
            free[slot.node] = [d for d in free[slot.node] if d not in taken]


def _device_order(device: str) -> tuple[int, str]:
    return (int(device), "") if device.isdigit() else (1 << 30, device)
