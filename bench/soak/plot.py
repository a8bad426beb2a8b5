"""The samples drawn as one PNG: memory and open files of each process, table and stream sizes."""

from __future__ import annotations

from pathlib import Path

PANELS = (
    ("rss_mib.", "memory (PSS, MiB)"),
    ("open_files.", "open files"),
    ("pg_kib.", "PostgreSQL tables (KiB), the 8 largest"),
    ("stream_kib.", "NATS streams (KiB)"),
)


def draw(rows: list[dict[str, float]], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")  # no display: a file is all we want
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 2, figsize=(14, 9), sharex=True)
    colours = plt.get_cmap("tab20").colors  # more lines than the default cycle has colours
    minutes = [r["t"] / 60 for r in rows]
    for ax, (prefix, label) in zip(axes.flat, PANELS, strict=True):
        columns = sorted({c for r in rows for c in r if c.startswith(prefix)})
        if prefix == "pg_kib.":
            columns = sorted(columns, key=lambda c: -rows[-1].get(c, 0))[:8]
        for colour, column in zip(colours, columns, strict=False):
            values = [r.get(column, float("nan")) for r in rows]
            ax.plot(minutes, values, label=column.removeprefix(prefix), color=colour)
        ax.set_title(label)
        ax.set_xlabel("minutes")
        ax.legend(fontsize=7, loc="upper left")
        ax.grid(alpha=0.3)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
