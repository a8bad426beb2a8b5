"""The slope of every sampled figure, and whether its growth is what retention allows."""

from __future__ import annotations

import csv
import statistics
from pathlib import Path

# Records the platform keeps on purpose, and for how long; anything else must stay flat.
RETAINED = {
    "pg_kib.api.log_batches": "logs, PIER_LOGS_MAX_AGE_DAYS (14 d)",
    "pg_kib.api.audit_events": "audit trail, PIER_AUDIT_MAX_AGE_DAYS (90 d)",
    "pg_kib.api.versions": "one row per version, until the model API is terminated",
    "pg_kib.api.instances": "one row per instance placed, until the model API is terminated",
    "pg_kib.api.usage": "usage records, kept for billing (no purge)",
    "pg_kib.api.inbox": "handled message ids, kept for de-duplication (no purge)",
    "pg_kib.scheduler.inbox": "handled message ids, kept for de-duplication (no purge)",
    "pg_kib.scheduler.instances": "one row per instance placed, until the model API is terminated",
    "pg_kib.scheduler.requests": "one row per placement asked for (no purge)",
    "pg_kib.scheduler.runs": "one row per run of an instance, for usage (no purge)",
    "stream_kib.PIER_EVENTS": "events, PIER_EVENTS_MAX_AGE_DAYS (60 d)",
    "stream_messages.PIER_EVENTS": "events, PIER_EVENTS_MAX_AGE_DAYS (60 d)",
    "stream_kib.PIER_LOGS": "logs, PIER_LOGS_MAX_AGE_DAYS (14 d)",
    "stream_messages.PIER_LOGS": "logs, PIER_LOGS_MAX_AGE_DAYS (14 d)",
    "stream_kib.PIER_AUDIT": "audit trail, PIER_AUDIT_MAX_AGE_DAYS (90 d)",
    "stream_messages.PIER_AUDIT": "audit trail, PIER_AUDIT_MAX_AGE_DAYS (90 d)",
}
WARM_UP = 120.0  # seconds left out of each slope: caches, pools and the first deploys filling up


def read(path: Path) -> list[dict[str, float]]:
    with open(path) as f:
        return [{k: float(v) for k, v in row.items() if v != ""} for row in csv.DictReader(f)]


def write(path: Path, rows: list[dict[str, float]]) -> None:
    columns = sorted({c for row in rows for c in row} - {"t"})
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, ["t", *columns])
        writer.writeheader()
        writer.writerows(rows)


def _flat_within(column: str, mean: float) -> float:
    """How much a figure may move over the run and still count as flat: noise, not a trend."""
    floor = 4.0 if column.startswith("rss_mib") else 4.0 if column.startswith("open_files") else 64.0
    return max(floor, 0.1 * abs(mean))


def slopes(rows: list[dict[str, float]]) -> list[dict[str, str]]:
    steady = [r for r in rows if r["t"] >= WARM_UP] or rows
    span = steady[-1]["t"] - steady[0]["t"]
    table = []
    for column in sorted({c for row in rows for c in row} - {"t"}):
        points = [(r["t"], r[column]) for r in steady if column in r]
        if len(points) < 3:
            continue
        xs, ys = zip(*points, strict=True)
        slope = statistics.linear_regression(xs, ys).slope if len(set(ys)) > 1 else 0.0
        mean = statistics.fmean(ys)
        growth = slope * span
        if abs(growth) <= _flat_within(column, mean):
            verdict = "flat"
        elif growth < 0:
            verdict = "shrinks"
        elif column in RETAINED:
            verdict = f"grows, kept by retention: {RETAINED[column]}"
        else:
            verdict = "GROWS, no retention explains it"
        first = next(r[column] for r in rows if column in r)
        table.append(
            {
                "figure": column,
                "first": f"{first:g}",
                "last": f"{ys[-1]:g}",
                "slope per hour": f"{slope * 3600:+.1f}",
                "verdict": verdict,
            }
        )
    return table


def markdown(table: list[dict[str, str]], header: str) -> str:
    columns = ["figure", "first", "last", "slope per hour", "verdict"]
    lines = [header, "", "| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(row[c] for c in columns) + " |" for row in table]
    return "\n".join(lines) + "\n"


def write_table(path: Path, table: list[dict[str, str]]) -> None:
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, ["figure", "first", "last", "slope per hour", "verdict"])
        writer.writeheader()
        writer.writerows(table)
