"""Progress of the long steps of a command (upload, build, queue, start) on one line of the
terminal, rewritten in place, with the step's elapsed time. When stderr is not a terminal (a
pipe, a file, CI) it writes nothing at all: what scripts read stays the same."""

from __future__ import annotations

import shutil
import sys
import time
from collections.abc import Callable
from typing import TextIO

BAR = 24  # characters of the upload bar


def size(n: int) -> str:
    if n < 1024:
        return f"{n} bytes"
    if n < 1024 * 1024:
        return f"{n / 1024:.1f} KiB"
    return f"{n / (1024 * 1024):.1f} MiB"


def bar(done: int, total: int) -> str:
    filled = BAR * done // total if total else BAR
    return f"[{'#' * filled}{'.' * (BAR - filled)}] {size(done)} / {size(total)}"


class Progress:
    def __init__(self, stream: TextIO | None = None, clock: Callable[[], float] = time.monotonic) -> None:
        self.stream = stream or sys.stderr
        self.live = self.stream.isatty()
        self.clock = clock
        self.step = ""
        self.started = 0.0
        self.text = ""

    def show(self, step: str, text: str) -> None:
        """Show `text` for `step`; a new step ends the line of the one before (kept above)."""
        if not self.live:
            return
        if step != self.step:
            self.end()
            self.step, self.started = step, self.clock()
        self.text = text
        self._draw()

    def end(self) -> None:
        """End the current step's line, leaving it on the screen."""
        if self.live and self.step:
            self._draw()
            self.stream.write("\n")
            self.stream.flush()
        self.step = ""

    def _draw(self) -> None:
        width = shutil.get_terminal_size((100, 24)).columns
        line = f"{self.step:<7} {self.text}"
        elapsed = f"  {self.clock() - self.started:5.1f}s"
        line = line[: max(10, width - len(elapsed) - 1)] + elapsed
        self.stream.write(f"\r\x1b[K{line}")
        self.stream.flush()
