"""One sample of a running platform: memory and open files of each process, PostgreSQL table sizes,
NATS stream sizes. Column names are stable, so samples line up as rows of one CSV."""

from __future__ import annotations

import os
from pathlib import Path

import asyncpg
import nats

from infra.processes import process_group, processes_under
from tests.faults.platform import Faulted


def _pss_kib(pid: int) -> int:
    """Proportional set size: shared pages split among their sharers, so sums over processes
    (PostgreSQL's backends share its buffers) count each page once."""
    try:
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            if line.startswith("Pss:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def _fds(pid: int) -> int:
    try:
        return len(os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        return 0


def _group(pgid: int) -> list[int]:
    return [int(e.name) for e in os.scandir("/proc") if e.name.isdigit() and process_group(int(e.name)) == pgid]


def processes(running: Faulted) -> dict[str, list[int]]:
    """The pids of each part: a service's one process, the servers' whole process groups (PostgreSQL
    is a postmaster and a backend per connection), every process of every instance."""
    parts = {name: [s.proc.pid] for name, s in running.platform.services.items() if s.proc is not None}
    for name, server in (("nats-server", running.nats), ("postgres", running.postgres)):
        if server.proc is not None:
            parts[name] = _group(server.proc.pid)
    parts["instances"] = [r.pid for r in processes_under(running.settings.home / "instances")]
    return parts


async def sample(running: Faulted) -> dict[str, float]:
    row: dict[str, float] = {}
    for name, pids in processes(running).items():
        row[f"rss_mib.{name}"] = round(sum(map(_pss_kib, pids)) / 1024, 2)
        row[f"open_files.{name}"] = sum(map(_fds, pids))
    row["processes.instances"] = len(processes(running)["instances"])
    conn = await asyncpg.connect(running.postgres.url("pier"))
    try:
        tables = await conn.fetch(
            "SELECT n.nspname || '.' || c.relname AS name, pg_total_relation_size(c.oid) AS size"
            " FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace"
            " WHERE c.relkind = 'r' AND n.nspname NOT IN ('pg_catalog', 'information_schema')"
            " AND n.nspname NOT LIKE 'pg_toast%'"
        )
    finally:
        await conn.close()
    for table in tables:
        row[f"pg_kib.{table['name']}"] = round(table["size"] / 1024, 1)
    nc = await nats.connect(running.nats.url, connect_timeout=5, allow_reconnect=False)
    try:
        for info in await nc.jetstream().streams_info():
            row[f"stream_kib.{info.config.name}"] = round((info.state.bytes or 0) / 1024, 1)
            row[f"stream_messages.{info.config.name}"] = info.state.messages or 0
    finally:
        await nc.close()
    return row
