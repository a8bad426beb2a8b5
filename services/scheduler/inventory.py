"""The GPU inventory: which GPUs of which type are on which node.

Real GPUs are found with NVML (the `nvidia-ml-py` package) where a driver answers. Elsewhere GPUs are
declared in `PIER_GPUS` and marked **simulated**, so nobody mistakes them for hardware:

    PIER_GPUS="a100:4,rtx3090:2"                  one node, `local`
    PIER_GPUS="node-a=a100:4;node-b=a100:2,t4:1"  several nodes (still one host for the local driver)

A device's id is its index on its node, in the order declared (what CUDA_VISIBLE_DEVICES takes).
"""

from __future__ import annotations

import re

import msgspec
import structlog

log = structlog.get_logger("scheduler.inventory")

LOCAL_NODE = "local"
_TYPE_RE = re.compile(r"^[a-z0-9][a-z0-9_.-]{0,31}$")


class Gpu(msgspec.Struct, kw_only=True, frozen=True):
    node: str
    device: str
    type: str


class Inventory(msgspec.Struct, kw_only=True, frozen=True):
    gpus: tuple[Gpu, ...] = ()
    simulated: bool = True

    def types(self) -> list[str]:
        return sorted({g.type for g in self.gpus})

    def capacity(self) -> dict[str, dict[str, int]]:
        """GPU type -> node -> how many GPUs of that type the node has."""
        out: dict[str, dict[str, int]] = {}
        for g in self.gpus:
            per_node = out.setdefault(g.type, {})
            per_node[g.node] = per_node.get(g.node, 0) + 1
        return out


class InventoryError(ValueError):
    pass


def parse(spec: str) -> Inventory:
    """Simulated GPUs from a PIER_GPUS value; a malformed value is an error naming the part."""
    gpus: list[Gpu] = []
    spec = spec.strip()
    if not spec:
        return Inventory(simulated=True)
    for n, part in enumerate(p.strip() for p in spec.split(";") if p.strip()):
        node, sep, kinds = part.partition("=")
        if not sep:
            node, kinds = (LOCAL_NODE if n == 0 else f"node-{n + 1}"), part
        node = node.strip()
        index = 0
        for item in (k.strip() for k in kinds.split(",") if k.strip()):
            kind, _, count = item.partition(":")
            kind = kind.strip().lower()
            if not _TYPE_RE.match(kind) or not count.strip().isdigit():
                raise InventoryError(f"PIER_GPUS: {item!r} is not TYPE:COUNT (e.g. a100:4)")
            for _ in range(int(count)):
                gpus.append(Gpu(node=node, device=str(index), type=kind))
                index += 1
    return Inventory(gpus=tuple(gpus), simulated=True)


def _nvml_type(name: str) -> str:
    """`NVIDIA A100-SXM4-40GB` -> `a100`, `NVIDIA GeForce RTX 3090` -> `rtx3090`."""
    words = name.lower().replace("nvidia", "").replace("geforce", "").split()
    if not words:
        return "gpu"
    if words[0] in ("rtx", "gtx", "tesla", "quadro") and len(words) > 1:
        return (words[0] + words[1]).split("-")[0] if words[0] in ("rtx", "gtx") else words[1].split("-")[0]
    return words[0].split("-")[0]


def from_nvml() -> Inventory | None:
    """The GPUs of this host, or None where NVML is missing or finds none."""
    try:
        import pynvml  # type: ignore[import-not-found,unused-ignore]
    except ImportError:
        return None
    try:
        pynvml.nvmlInit()
    except Exception:  # NVMLError: no driver on this host
        return None
    try:
        count = pynvml.nvmlDeviceGetCount()
        gpus = []
        for index in range(count):
            name = pynvml.nvmlDeviceGetName(pynvml.nvmlDeviceGetHandleByIndex(index))
            name = name.decode() if isinstance(name, bytes) else str(name)
            gpus.append(Gpu(node=LOCAL_NODE, device=str(index), type=_nvml_type(name)))
    finally:
        pynvml.nvmlShutdown()
    return Inventory(gpus=tuple(gpus), simulated=False) if gpus else None


def discover(declared: str) -> Inventory:
    """Real GPUs when NVML sees any, otherwise the simulated ones from PIER_GPUS."""
    found = from_nvml()
    if found is not None:
        if declared:
            log.warning("PIER_GPUS ignored: NVML found real GPUs", gpus=len(found.gpus))
        return found
    inventory = parse(declared)
    if inventory.gpus:
        log.info("simulated GPUs from PIER_GPUS", types=inventory.types(), gpus=len(inventory.gpus))
    return inventory
