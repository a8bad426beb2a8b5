"""What the platform did twice, from its own records and the processes it runs, never from the
workload's side.

- builds twice: `pier.events.build.succeeded` messages the events stream holds for one version
  (the builder publishes one per build it finishes; a second is a build done again and announced
  again to every consumer, beyond what JetStream's de-duplication caught);
- instance starts twice: the scheduler's `runs` table (one open row per run of an instance) with
  two open runs of one instance, or two live process groups in one instance's folder;
- GPUs twice: one simulated device in the CUDA_VISIBLE_DEVICES of two live instances at once.
"""

from __future__ import annotations

import contextlib
import os
import threading
import time
from collections import Counter
from pathlib import Path

import asyncpg
import msgspec
import nats
import nats.errors
import nats.js.errors
from nats.js.api import ConsumerConfig, DeliverPolicy

from infra.processes import process_group, processes_under
from pier import events
from pier.config import Settings


async def builds_announced(settings: Settings) -> Counter[tuple[str, int]]:
    """How many build.succeeded messages the events stream holds, per (model id, version)."""
    counts: Counter[tuple[str, int]] = Counter()
    nc = await nats.connect(settings.nats_url, connect_timeout=5, allow_reconnect=False)
    try:
        js = nc.jetstream()
        subject = events.BuildSucceeded.subject()
        config = ConsumerConfig(deliver_policy=DeliverPolicy.ALL, filter_subject=subject, inactive_threshold=30.0)
        sub = await js.pull_subscribe(subject, stream=events.EVENTS_STREAM, config=config)
        try:
            while True:
                try:
                    batch = await sub.fetch(256, timeout=1.0)
                except (nats.errors.TimeoutError, TimeoutError):
                    break
                for msg in batch:
                    body = msgspec.json.decode(msg.data)
                    counts[(body["model_id"], int(body["version"]))] += 1
                    await msg.ack()
        finally:
            with contextlib.suppress(Exception):
                await sub.unsubscribe()
    finally:
        await nc.close()
    return counts


async def runs_open_twice(settings: Settings) -> set[str]:
    """Instances the scheduler records as started again while a run of theirs was still open."""
    conn = await asyncpg.connect(settings.database_url, server_settings={"search_path": "scheduler"})
    try:
        rows = await conn.fetch(
            "SELECT instance_id FROM runs WHERE ended_at IS NULL GROUP BY instance_id HAVING count(*) > 1"
        )
    finally:
        await conn.close()
    return {r["instance_id"] for r in rows}


def _devices(pid: int) -> list[str]:
    try:
        environ = Path(f"/proc/{pid}/environ").read_bytes()
    except OSError:
        return []
    for item in environ.split(b"\0"):
        if item.startswith(b"CUDA_VISIBLE_DEVICES="):
            return [d for d in item.split(b"=", 1)[1].decode().split(",") if d]
    return []


class Sampler:
    """Looks at the live instances every `every` s; keeps every instance seen running twice and
    every GPU seen in two instances at once."""

    def __init__(self, home: Path, every: float = 0.25) -> None:
        self.root = home / "instances"
        self.every = every
        self.started_twice: set[str] = set()
        self.gpus_twice: set[str] = set()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="sampler", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=10)

    def _run(self) -> None:
        while not self._stop.wait(self.every):
            with contextlib.suppress(OSError):
                self.sample()

    def sample(self) -> None:
        if not self.root.is_dir():
            return
        groups: dict[str, set[int]] = {}
        for record in processes_under(self.root):
            try:
                cwd = os.readlink(f"/proc/{record.pid}/cwd").removesuffix(" (deleted)")
            except OSError:
                continue
            instance = Path(cwd).relative_to(self.root.resolve()).parts[0]
            pgid = process_group(record.pid)
            if pgid is not None:
                groups.setdefault(instance, set()).add(pgid)
        holders: dict[str, set[str]] = {}
        for instance, pgids in groups.items():
            if len(pgids) > 1:
                self.started_twice.add(instance)
            for pgid in pgids:
                for device in _devices(pgid):
                    holders.setdefault(device, set()).add(instance)
        for device, instances in holders.items():
            if len(instances) > 1:
                self.gpus_twice.add(f"{device}: {', '.join(sorted(instances))}")


def wait_gone(pid: int, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not Path(f"/proc/{pid}").exists():
            return True
        time.sleep(0.05)
    return False
