"""Ships instance logs to the bus: each complete line of `instance.log` becomes a log message.

The byte offset reached is committed to PostgreSQL after the lines are published, so a scheduler
restart resumes where it was. A line published again after a crash between the two carries the same
Nats-Msg-Id (instance id + byte offset) and JetStream drops the copy: no duplicates, no losses.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import asyncpg
import structlog

from pier import events
from pier.bus import Bus
from services.scheduler.runtimes.local import instances_root

log = structlog.get_logger("scheduler.logship")

SHIP_EVERY = 0.25
CHUNK = 256 * 1024
# A line longer than this is shipped in pieces rather than waiting for its end forever.
MAX_LINE = 64 * 1024


class LogShipper:
    def __init__(self, pool: asyncpg.Pool, bus: Bus, home: Path) -> None:
        self.pool = pool
        self.bus = bus
        self.root = instances_root(home)

    async def run(self, every: float = SHIP_EVERY) -> None:
        while True:
            try:
                while await self.ship_once():
                    pass
            except Exception:
                # The bus or the database is away; the offsets say where to resume.
                log.exception("log shipping round failed")
            await asyncio.sleep(every)

    async def ship_once(self) -> int:
        """Ship what is new in every open log, one chunk each; return how many lines were sent."""
        rows = await self.pool.fetch(
            "SELECT instance_id, model_id, version, state, log_offset FROM instances WHERE log_open"
        )
        sent = 0
        for row in rows:
            sent += await self._ship(row)
        return sent

    async def _ship(self, row: asyncpg.Record) -> int:
        instance_id = row["instance_id"]
        finished = row["state"] not in ("starting", "running")
        offset = row["log_offset"]
        path = self.root / instance_id / "instance.log"
        data, size = await asyncio.to_thread(_read, path, offset)
        if size < 0:  # not started yet, or never will be
            if finished:
                await self._close(instance_id)
            return 0
        if size < offset:
            # The file was removed or replaced behind our back: start over rather than stall.
            log.warning("instance log shrank; shipping it again from the start", instance_id=instance_id)
            await self.pool.execute("UPDATE instances SET log_offset = 0 WHERE instance_id = $1", instance_id)
            return 0
        lines, consumed = _split(data, final=finished)
        for start, line in lines:
            record = events.LogLine(
                at=time.time(), kind="instance", line=line, version=row["version"], instance_id=instance_id
            )
            await self.bus.publish_raw(
                events.logs_subject(row["model_id"], "instance"),
                events.encode(record),
                msg_id=f"log:{instance_id}:{offset + start}",
            )
        if consumed:
            await self.pool.execute(
                "UPDATE instances SET log_offset = $2 WHERE instance_id = $1", instance_id, offset + consumed
            )
        if finished and offset + consumed >= size:
            await self._close(instance_id)
        return len(lines)

    async def _close(self, instance_id: str) -> None:
        # Only while it is still not running: a restart may have reopened it meanwhile.
        await self.pool.execute(
            "UPDATE instances SET log_open = false WHERE instance_id = $1 AND state NOT IN ('starting', 'running')",
            instance_id,
        )


def _read(path: Path, offset: int) -> tuple[bytes, int]:
    """Up to CHUNK bytes from `offset`, and the file's size (-1 when there is no file)."""
    try:
        with path.open("rb") as f:
            size = f.seek(0, 2)
            if size <= offset:
                return b"", size
            f.seek(offset)
            return f.read(CHUNK), size
    except FileNotFoundError:
        return b"", -1


def _split(data: bytes, *, final: bool) -> tuple[list[tuple[int, str]], int]:
    """Complete lines of `data` as (byte offset, text), and how many bytes they cover. A trailing
    partial line waits for its end, unless the process is gone (`final`) or it is over MAX_LINE."""
    lines: list[tuple[int, str]] = []
    pos = 0
    while pos < len(data):
        end = data.find(b"\n", pos)
        if end == -1:
            rest = len(data) - pos
            if not (final or rest >= MAX_LINE):
                break
            end = pos + min(rest, MAX_LINE)
            text, nxt = data[pos:end], end
        else:
            if end - pos > MAX_LINE:
                end = pos + MAX_LINE
                text, nxt = data[pos:end], end
            else:
                text, nxt = data[pos:end], end + 1
        lines.append((pos, text.rstrip(b"\r").decode(errors="replace")))
        pos = nxt
    return lines, pos
