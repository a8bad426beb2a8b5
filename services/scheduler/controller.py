"""The scheduler's controller: turns place / stop / restart commands into running instances, notices
instances that die, and after a restart of the scheduler adopts what still runs.

Its parts, one module each: placement.py (the queue, GPU allocations, the inventory record),
lifecycle.py (start, adopt, restart, stop, exits, reconcile), metering.py (usage per run) and
watcher.py (exits and disk use). They share state.py. One lock serialises commands, the exit watcher
and reconcile, so none of them sees another's half-done work (a restart's deliberate SIGTERM must not
look like a crash to the watcher).
"""

from __future__ import annotations

import structlog

from pier.events import PlaceModel, StopModel
from services.scheduler.lifecycle import Lifecycle
from services.scheduler.metering import Metering
from services.scheduler.placement import Placing
from services.scheduler.state import OUTBOX_CHANNEL, Command
from services.scheduler.watcher import Watcher

__all__ = ["OUTBOX_CHANNEL", "Controller"]


class Controller(Placing, Lifecycle, Metering, Watcher):
    async def handle(self, cmd: Command) -> None:
        async with self._lock:
            with structlog.contextvars.bound_contextvars(command=cmd.tag(), command_id=cmd.id):
                if isinstance(cmd, PlaceModel):
                    await self._place(cmd)
                elif isinstance(cmd, StopModel):
                    await self._stop(cmd)
                else:
                    await self._restart(cmd)
