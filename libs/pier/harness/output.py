"""What user code writes on stdout and stderr, bounded on its way to the instance log, and counted
when cut: never dropped silently.

At start the harness puts a pipe on fds 1 and 2 (its worker processes and anything the model's code
runs inherit them) and starts `python -m pier.harness.output RATE` on the other end, with the
instance log as its stdout. That copier lets through at most RATE bytes a second (a token bucket
holding one second's worth, so a burst of up to RATE bytes passes at once) and cuts the rest at a
line's end; then it writes

    pier: cut 123456 bytes of output (over 1048576 bytes/s)

into the log, at most once a second while output is being cut, and once more at its end. It is a
process of its own, not a thread, so what was written before the harness died (a traceback, a
fatal error of a C extension) still reaches the log: the copier drains the pipe until every writer
has closed it, and ignores SIGTERM and SIGINT so a stop does not lose the last lines.

The harness's own lines and the request log do not pass through it: they are written to the
instance log directly (`write`), bounded already (the request log drops, counted: requestlog.py).
"""

from __future__ import annotations

import os
import select
import signal
import subprocess
import sys
import time
from collections.abc import Callable

# Bytes a second of stdout and stderr an instance keeps when nothing says otherwise (1 MiB).
DEFAULT_RATE = 1 << 20
# The most often a "cut" line is written (seconds).
REPORT_EVERY = 1.0
_CHUNK = 64 * 1024

# Where the harness writes its own lines: the instance log, once `bound` has run; stdout before.
_log_fd = 1


def write(text: str) -> None:
    """Write `text` to the instance log, all of it (the harness's own lines and the request log)."""
    data = memoryview(text.encode(errors="replace"))
    while data:
        data = data[os.write(_log_fd, data) :]


def bound(rate: int) -> None:
    """Route fds 1 and 2 through a copier that keeps at most `rate` bytes a second of them.
    A rate of 0 leaves them as they are (unbounded)."""
    global _log_fd
    if rate <= 0:
        return
    sys.stdout.flush()
    sys.stderr.flush()
    _log_fd = os.dup(1)
    os.set_inheritable(_log_fd, False)
    read_end, write_end = os.pipe()
    subprocess.Popen(
        [sys.executable, "-m", "pier.harness.output", str(rate)],
        stdin=read_end,
        stdout=_log_fd,
        stderr=_log_fd,
        close_fds=True,
    )
    os.close(read_end)
    os.dup2(write_end, 1)
    os.dup2(write_end, 2)
    os.close(write_end)


class Copier:
    """Copies `source` to `sink`, keeping at most `rate` bytes a second and counting what it cuts."""

    def __init__(
        self, source: int, sink: int, rate: int, clock: Callable[[], float] = time.monotonic,
        report_every: float = REPORT_EVERY,
    ) -> None:  # fmt: skip
        self.source, self.sink, self.rate, self.clock, self.report_every = source, sink, rate, clock, report_every
        self.budget = float(rate)
        self.refilled = clock()
        self.cut = 0  # bytes cut in all
        self._reported = 0
        self._last_report = -report_every
        self._at_line_start = True

    def run(self) -> None:
        while True:
            pending = self.cut > self._reported
            if pending and not select.select([self.source], [], [], self.report_every)[0]:
                self._report(self.clock())  # output stopped after a cut: say so without waiting for more
                continue
            data = os.read(self.source, _CHUNK)
            if not data:
                break
            self.take(data)
        self._report(self.clock(), final=True)

    def take(self, data: bytes) -> None:
        now = self.clock()
        self.budget = min(float(self.rate), self.budget + (now - self.refilled) * self.rate)
        self.refilled = now
        keep = data
        if len(data) > self.budget:
            keep = data[: int(self.budget)]
            # Cut at a line's end, so the log holds no line's first half next to another's second.
            keep = keep[: keep.rfind(b"\n") + 1]
        self.budget -= len(keep)
        self.cut += len(data) - len(keep)
        if keep:
            self._write(keep)
        self._report(now)

    def _report(self, now: float, final: bool = False) -> None:
        if self.cut <= self._reported or not (final or now - self._last_report >= self.report_every):
            return
        line = f"pier: cut {self.cut - self._reported} bytes of output (over {self.rate} bytes/s)\n"
        self._write(("" if self._at_line_start else "\n").encode() + line.encode())
        self._reported, self._last_report = self.cut, now

    def _write(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            view = view[os.write(self.sink, view) :]
        self._at_line_start = data.endswith(b"\n")


def main() -> None:
    # A stop signals the whole process group: drain until the last writer has gone instead.
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    Copier(0, 1, int(sys.argv[1])).run()


if __name__ == "__main__":
    main()
