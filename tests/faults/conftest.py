"""One platform for the whole fault suite (tests/faults/platform.py); the table of every fault's
figures is printed at the end of the run."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.faults.platform import Faulted, under_load

HOME_SIZE = "768m"  # the images, environments and instances of four model APIs fit with room to spare
COLUMNS = ("fault", "200", "503", "504", "other", "refused", "cut", "lost", "ops", "stuck", "failed",
           "builds 2x", "starts 2x", "gpus 2x", "crashed")  # fmt: skip
REPORT: list[dict[str, object]] = []


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if not REPORT:
        return
    widths = {c: max(len(c), *(len(str(row.get(c, ""))) for row in REPORT)) for c in COLUMNS}
    terminalreporter.section("faults under load")
    terminalreporter.write_line("  ".join(c.rjust(widths[c]) for c in COLUMNS))
    for row in REPORT:
        terminalreporter.write_line("  ".join(str(row.get(c, "")).rjust(widths[c]) for c in COLUMNS))
    for row in REPORT:
        if row.get("notes"):
            terminalreporter.write_line(f"{row['fault']}: {row['notes']}")


@pytest.fixture(scope="module")
def faulted(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Faulted]:
    with under_load(tmp_path_factory.mktemp("faults"), HOME_SIZE) as running:
        yield running
