"""The soak: the fault suite's platform and workload (tests/faults), with no fault, for a long time.

    .venv/bin/pip install -e '.[bench]'
    .venv/bin/python -m bench.soak --minutes 30 [--every 10] [--out docs/soak]
    .venv/bin/python -m bench.soak --summarize docs/soak/samples.csv   # the table and plot again

Calls at a fixed rate to two model APIs, a new version of a third every few seconds, a fourth
stopped and restarted now and then. Every `--every` s: memory (PSS) and open files of each service,
of nats-server and PostgreSQL (their whole process groups) and of all instances together; the size
of every PostgreSQL table and every NATS stream. Written to OUT: samples.csv, soak.png, summary.csv
and summary.md (the slope of each figure and whether retention explains its growth). Everything it
starts is stopped on the way out, on Ctrl-C too.
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import time
from collections import Counter
from pathlib import Path

from bench.soak import plot, sampling, summary
from tests.faults.platform import under_load


def _report(out: Path, rows: list[dict[str, float]], header: str) -> str:
    summary.write(out / "samples.csv", rows)
    table = summary.slopes(rows)
    summary.write_table(out / "summary.csv", table)
    text = summary.markdown(table, header)
    (out / "summary.md").write_text(text)
    plot.draw(rows, out / "soak.png", header.splitlines()[0].lstrip("# "))
    return text


def soak(minutes: float, every: float, out: Path) -> str:
    rows: list[dict[str, float]] = []
    with tempfile.TemporaryDirectory(prefix="pier-soak-") as root, under_load(Path(root), None) as running:
        began = time.monotonic()
        tally = running.workload.phase("soak")
        while (now := time.monotonic()) - began < minutes * 60:
            rows.append({"t": round(now - began, 1), **asyncio.run(sampling.sample(running))})
            summary.write(out / "samples.csv", rows)  # as it goes: an interrupted soak keeps its figures
            print(f"{rows[-1]['t']:7.0f} s  calls {dict(tally.calls)}  operations {len(tally.ops)}", flush=True)
            time.sleep(max(0.0, began + len(rows) * every - time.monotonic()))
        ended = time.monotonic()
        running.workload.stop()
        # Each loop waits for its operation before it asks for the next: one unfinished at the end
        # and younger than the bound was in flight, not stuck.
        bound = running.workload.op_bound
        outcomes = Counter(
            op.outcome if op.done is not None else "in flight at the end" if ended - op.asked < bound else "stuck"
            for op in tally.ops
        )
        twice = (running.sampler.started_twice, running.sampler.gpus_twice)
    calls = ", ".join(f"{n} {k}" for k, n in sorted(tally.calls.items()))
    ops = Counter(op.what for op in tally.ops)
    header = (
        f"# Soak: {minutes:g} minutes, a sample every {every:g} s\n\n"
        f"Calls: {calls}; lost (no answer): {len(tally.failures)}.\n"
        f"Operations: {dict(ops)}; outcomes: {dict(outcomes)}.\n"
        f"Instances started twice: {len(twice[0])}; GPUs handed out twice: {len(twice[1])}.\n\n"
        f"Slopes leave out the first {summary.WARM_UP:g} s. Units are in each figure's name "
        "(MiB, open files, KiB, messages); the slope is per hour."
    )
    return _report(out, rows, header)


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.soak", description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, default=30.0)
    parser.add_argument("--every", type=float, default=10.0, help="seconds between samples")
    parser.add_argument("--out", type=Path, default=Path("docs/soak"))
    parser.add_argument("--summarize", type=Path, help="draw the table and plot of an earlier samples.csv")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    if args.summarize:
        rows = summary.read(args.summarize)
        earlier = args.out / "summary.md"
        header = earlier.read_text().split("\n| figure", 1)[0].strip() if earlier.exists() else "# Soak"
        print(_report(args.out, rows, header))
    else:
        print(soak(args.minutes, args.every, args.out))


if __name__ == "__main__":
    main()
