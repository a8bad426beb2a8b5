"""The exit and disk watcher: reports every run that died on its own, and fails every run whose work
dir grew past its disk_size. Restarting either is the monitor's decision."""

from __future__ import annotations

import asyncio

import asyncpg

from services.scheduler.runtimes.base import Handle
from services.scheduler.state import ControllerState, log

WATCH_EVERY = 0.5
# Work dirs are measured against their disk_size every this many watcher rounds (du is not free).
DISK_EVERY = 4


class Watcher(ControllerState):
    async def check_exits(self) -> None:
        """Report every run that died on its own. Restarting it is the monitor's decision."""
        async with self._lock:
            rows = await self.pool.fetch("SELECT * FROM instances WHERE state = 'running' AND pid IS NOT NULL")
            for row in rows:
                handle = Handle(pid=row["pid"], start_time=row["start_time"], port=row["port"])
                ended = self.runtime.poll(row["instance_id"], handle)
                if ended is None:
                    continue
                line = await self.runtime.last_words(row["instance_id"], handle)
                reason = f"{ended.describe()}: {line}" if line else ended.describe()
                # Its worker processes may outlive it, and its work dir must not.
                await self.runtime.stop(row["instance_id"])
                await self._exited(row, row["generation"], ended.status, reason)
            self._rounds += 1
            if self._rounds % DISK_EVERY == 0:
                await self._check_disk(rows)

    async def _check_disk(self, rows: list[asyncpg.Record]) -> None:
        """Fail every run whose work dir grew past its model API's disk_size."""
        for row in rows:
            if row["disk_size"] <= 0:
                continue
            used = await asyncio.to_thread(self.runtime.disk_usage, row["instance_id"])
            if used <= row["disk_size"]:
                continue
            reason = f"disk use of {used} bytes is over its disk_size of {row['disk_size']} bytes"
            self.runtime.note(row["instance_id"], f"pier: stopping the instance: {reason}")
            await self.runtime.stop(row["instance_id"])
            await self._exited(row, row["generation"], None, f"exited: {reason}")

    async def watch(self, every: float = WATCH_EVERY) -> None:
        while True:
            try:
                await self.check_exits()
            except Exception:
                # A database or bus hiccup: the next round sees the same exits again.
                log.exception("exit watcher round failed")
            await asyncio.sleep(every)
