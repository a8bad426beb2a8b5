"""The request log: one line per call, written to the instance log by a thread of its own through a
bounded buffer, so a call never waits for the log.

When the log cannot keep up (stdout is a pipe nobody drains fast enough, a disk that stalls), the
buffer fills and further request-log lines are dropped, counted: the count is the metric
`pier_request_log_dropped_total` (`GET /metrics` on the instance), and a line
"pier: dropped N request-log lines" in the instance log says how many went, at most every
`report_every` seconds. Only these lines are ever dropped this way: what user code prints goes to
stdout and stderr, bounded by bytes a second and counted when cut (output.py).
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable

from pier.harness import output

# Lines held while the writer is behind (about 1 MiB); past this, request-log lines are dropped.
CAPACITY = int(os.environ.get("PIER_REQUEST_LOG_BUFFER", "10000"))
# How often the writer wakes to write what the calls of that time logged, in one write (seconds).
EVERY = 0.05
# The most often a "dropped" line is written (seconds).
REPORT_EVERY = 10.0


class RequestLog:
    def __init__(
        self,
        write: Callable[[str], None] = output.write,
        capacity: int = CAPACITY,
        every: float = EVERY,
        report_every: float = REPORT_EVERY,
    ) -> None:
        self.write, self.capacity, self.every, self.report_every = write, capacity, every, report_every
        self.dropped = 0  # in all, since the instance started
        self._reported = 0
        self._last_report = -report_every
        self._lines: list[str] = []
        self._lock = threading.Lock()
        self._closing = threading.Event()
        self._thread: threading.Thread | None = None

    def __call__(self, line: str) -> None:
        """Keep `line` for the writer, or count it dropped when the buffer is full; never blocks on I/O."""
        if len(self._lines) >= self.capacity:
            self.dropped += 1
            return
        with self._lock:  # held by the writer only to swap the list
            self._lines.append(line)
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="request-log", daemon=True)
            self._thread.start()

    def metrics(self) -> bytes:
        """The Prometheus text for `GET /metrics`."""
        return (
            "# HELP pier_request_log_dropped_total Request-log lines dropped because the instance log fell behind\n"
            "# TYPE pier_request_log_dropped_total counter\n"
            f"pier_request_log_dropped_total {self.dropped}\n"
        ).encode()

    def close(self, timeout: float = 5.0) -> None:
        """Write what is held, and stop the writer (at the instance's end)."""
        self._closing.set()
        if self._thread is not None:
            self._thread.join(timeout)
        else:
            self._flush()

    def _run(self) -> None:
        while not self._closing.wait(self.every):
            self._flush()
        self._flush()

    def _flush(self) -> None:
        with self._lock:
            lines, self._lines = self._lines, []
        dropped = self.dropped
        now = time.monotonic()
        if dropped > self._reported and (self._closing.is_set() or now - self._last_report >= self.report_every):
            lines.append(f"pier: dropped {dropped - self._reported} request-log lines (the log fell behind the calls)")
            self._reported, self._last_report = dropped, now
        if lines:
            self.write("\n".join(lines) + "\n")  # may block: only this thread waits, while the buffer fills
