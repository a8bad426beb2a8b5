"""Ships instance logs to the bus in batches: the complete lines new in an `instance.log` since the
last round go out as LogBatch messages of up to `log_batch_lines` lines, one round every
`log_batch_wait` seconds, so a call through the gateway costs the bus and the api no message.

The byte offset reached is committed to PostgreSQL after the batches are published (at most once a
second per instance), so a scheduler restart resumes where it was. A batch published again after a crash between the two
carries the same Nats-Msg-Id (instance id + its first byte offset); JetStream answers that it is a
duplicate, naming the original, and the shipper resumes from the original's end: no duplicates,
no losses, even when the batch read again is not cut where the first one was.
"""

from __future__ import annotations

import asyncio
import bisect
import itertools
import os
import time
from dataclasses import dataclass
from pathlib import Path

import asyncpg
import msgspec
import structlog

from pier import events
from pier.bus import Bus
from services.scheduler.runtimes.local import instances_root

log = structlog.get_logger("scheduler.logship")

# What a round reads of one log at most: 2 MiB a second at 0.5 s rounds, some 30,000 request-log
# lines, so a busy instance's log does not fall further and further behind.
CHUNK = 1024 * 1024
# A line longer than this is shipped in pieces rather than waiting for its end forever.
MAX_LINE = 64 * 1024
# A batch's text stays well under NATS's default 1 MiB payload, JSON escaping included.
MAX_BATCH_BYTES = 128 * 1024
# Which instances have an open log, re-read from PostgreSQL this often (seconds): the only query
# the shipper makes while nothing is logged.
REFRESH_EVERY = 1.0
# An instance's offset is noted in PostgreSQL at most this often (seconds) while its log grows: a
# restart re-reads from an older offset, and the batches read again are known duplicates.
COMMIT_EVERY = 1.0

_batch_decoder = msgspec.json.Decoder(events.LogBatch)


@dataclass
class _Open:
    instance_id: str
    model_id: str
    version: int
    finished: bool
    offset: int
    committed: float = 0.0  # when the offset was last noted (monotonic seconds)


class LogShipper:
    def __init__(self, pool: asyncpg.Pool, bus: Bus, home: Path) -> None:
        self.pool = pool
        self.bus = bus
        self.root = instances_root(home)
        self.batch_lines = bus.settings.log_batch_lines
        self.every = bus.settings.log_batch_wait
        if not 1 <= self.batch_lines <= events.LOG_BATCH_MAX:
            raise ValueError(f"PIER_LOG_BATCH_LINES: must be between 1 and {events.LOG_BATCH_MAX}")
        if self.every <= 0:
            raise ValueError("PIER_LOG_BATCH_WAIT: must be a positive number of seconds")
        self.open: dict[str, _Open] = {}
        self.refreshed = -REFRESH_EVERY

    async def run(self) -> None:
        while True:
            try:
                await self.ship_once()
            except Exception:
                # The bus or the database is away; the offsets in PostgreSQL say where to resume.
                log.exception("log shipping round failed")
                self.refreshed = -REFRESH_EVERY
                self.open.clear()
            await asyncio.sleep(self.every)

    async def ship_once(self) -> int:
        """Ship what is new in every open log (up to a chunk each); return how many lines were sent."""
        if time.monotonic() - self.refreshed >= REFRESH_EVERY:
            await self._refresh()
        sent = 0
        for instance in list(self.open.values()):
            sent += await self._ship(instance)
        return sent

    async def _refresh(self) -> None:
        rows = await self.pool.fetch(
            "SELECT instance_id, model_id, version, state, log_offset FROM instances WHERE log_open"
        )
        known, self.open = self.open, {}
        for row in rows:
            instance_id = row["instance_id"]
            # The offset in memory is ahead of (or equal to) the committed one: keep it.
            was = known.get(instance_id)
            self.open[instance_id] = _Open(
                instance_id=instance_id,
                model_id=row["model_id"],
                version=row["version"],
                finished=row["state"] not in ("starting", "running"),
                offset=max(row["log_offset"], was.offset if was else 0),
            )
        self.refreshed = time.monotonic()

    async def _ship(self, instance: _Open) -> int:
        path = self.root / instance.instance_id / "instance.log"
        size = _size(path)
        if size < 0 or (size == instance.offset and instance.finished):
            if instance.finished:  # not started yet, or never will be, or all of it is shipped
                await self._close(instance)
            return 0
        if size == instance.offset:
            return 0  # nothing new: no thread, no query
        if size < instance.offset:
            # The file was removed or replaced behind our back: start over rather than stall.
            log.warning("instance log shrank; shipping it again from the start", instance_id=instance.instance_id)
            instance.offset = 0
            await self._commit(instance)
            return 0
        start = instance.offset
        data = await asyncio.to_thread(_read, path, start)
        texts, starts = _split(data, final=instance.finished and start + len(data) >= size)
        sent = 0
        for first, last in _groups(starts, self.batch_lines):
            batch = events.LogBatch(
                at=time.time(),
                kind="instance",
                lines=texts[first:last],
                version=instance.version,
                instance_id=instance.instance_id,
                offset=start + starts[first],
                end=start + starts[last],
            )
            ack = await self.bus.publish_raw(
                events.logs_subject(instance.model_id, "instance"),
                events.encode(batch),
                msg_id=f"log:{instance.instance_id}:{batch.offset}",
            )
            if ack.duplicate:
                # Shipped before a crash, maybe cut elsewhere: go on from where that batch ended.
                instance.offset = await self._original_end(ack.seq, batch.end)
                break
            instance.offset = batch.end
            sent += last - first
        if instance.offset != start and (instance.finished or time.monotonic() - instance.committed >= COMMIT_EVERY):
            await self._commit(instance)
        return sent

    async def _original_end(self, seq: int | None, fallback: int) -> int:
        try:
            original = await self.bus.js.get_msg(events.LOGS_STREAM, seq)
            return _batch_decoder.decode(original.data or b"").end
        except Exception:  # gone (retention) or not a batch: what this batch covers is shipped
            return fallback

    async def _commit(self, instance: _Open) -> None:
        await self.pool.execute(
            "UPDATE instances SET log_offset = $2 WHERE instance_id = $1", instance.instance_id, instance.offset
        )
        instance.committed = time.monotonic()

    async def _close(self, instance: _Open) -> None:
        await self._commit(instance)  # where a restart of the instance goes on from
        # Only while it is still not running: a restart may have reopened it meanwhile.
        await self.pool.execute(
            "UPDATE instances SET log_open = false WHERE instance_id = $1 AND state NOT IN ('starting', 'running')",
            instance.instance_id,
        )
        self.open.pop(instance.instance_id, None)


def _size(path: Path) -> int:
    """The file's size, -1 when there is none: a stat, cheap enough for every round."""
    try:
        return os.stat(path).st_size
    except FileNotFoundError:
        return -1


def _groups(starts: list[int], most: int) -> list[tuple[int, int]]:
    """The lines (starting at `starts`, the last entry where the last one ends) cut into
    [first, last) runs of at most `most` lines and about MAX_BATCH_BYTES (at least one line each)."""
    groups: list[tuple[int, int]] = []
    first, count = 0, len(starts) - 1
    while first < count:
        # The first line that would end past the byte budget, by bisection: no loop per line.
        over = bisect.bisect_right(starts, starts[first] + MAX_BATCH_BYTES, first + 1) - 1
        last = max(first + 1, min(first + most, over, count))
        groups.append((first, last))
        first = last
    return groups


def _read(path: Path, offset: int) -> bytes:
    """Up to CHUNK bytes from `offset` (none when the file is gone)."""
    try:
        with path.open("rb") as f:
            f.seek(offset)
            return f.read(CHUNK)
    except FileNotFoundError:
        return b""


def _split(data: bytes, *, final: bool) -> tuple[list[str], list[int]]:
    """The complete lines of `data` as text, and the byte offset where each starts, with one more
    entry: where the last one ends (the bytes they cover). A trailing partial line waits for its
    end, unless the process is gone (`final`) or it is over MAX_LINE.

    A busy instance writes thousands of lines a second: they are cut and decoded a chunk at a time
    (`bytes.split`, one decode), not line by line, unless a line is over MAX_LINE or a partial one
    is due (`_split_each`, which gives the same answer)."""
    end = data.rfind(b"\n") + 1
    rest = len(data) - end
    if rest and (final or rest >= MAX_LINE):
        return _split_each(data, final=final)
    if not end:
        return [], [0]
    whole = data[: end - 1]
    lengths = [len(line) + 1 for line in whole.split(b"\n")]
    if max(lengths) > MAX_LINE + 1:
        return _split_each(data, final=final)
    # A newline is never part of a UTF-8 sequence, so decoding the lines together replaces exactly
    # what decoding each would.
    text = whole.decode(errors="replace")
    texts = text.split("\n")
    if "\r" in text:
        texts = [line.rstrip("\r") for line in texts]
    return texts, [0, *itertools.accumulate(lengths)]


def _split_each(data: bytes, *, final: bool) -> tuple[list[str], list[int]]:
    """`_split`, a line at a time: cuts lines over MAX_LINE and takes a due partial one."""
    texts: list[str] = []
    starts: list[int] = []
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
        starts.append(pos)
        texts.append(text.rstrip(b"\r").decode(errors="replace"))
        pos = nxt
    starts.append(pos)
    return texts, starts
