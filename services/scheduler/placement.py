"""Where each instance of a model goes: the seam where GPU inventory and the wait queue plug in.

Today every instance runs on this host without GPUs. The GPU issue replaces `place` with a
decision over the inventory (type x count on one node, or queue the request when it does not fit).
"""

from __future__ import annotations

import msgspec
import structlog

from pier.events import PlaceModel

log = structlog.get_logger("scheduler.placement")


class Slot(msgspec.Struct, kw_only=True, frozen=True):
    """Where one instance runs and what it is given."""

    gpu_devices: tuple[str, ...] = ()


def place(cmd: PlaceModel) -> list[Slot]:
    """One slot per requested instance."""
    if cmd.gpu_count > 0:
        log.warning(
            "GPUs requested but not yet allocated; running on CPU",
            model_id=cmd.model_id,
            version=cmd.version,
            gpu_type=cmd.gpu_type,
            gpu_count=cmd.gpu_count,
        )
    return [Slot() for _ in range(max(cmd.instances, 0))]
