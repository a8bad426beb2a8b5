"""The end of a following command (`pier logs -f`, `pier events -f`): Ctrl-C."""

from __future__ import annotations

import contextlib
import os
import signal
import sys
from collections.abc import Iterator
from types import FrameType
from typing import NoReturn


def _stop(signum: int, frame: FrameType | None) -> NoReturn:
    """Exit 0 at once, what was printed flushed. Not by way of KeyboardInterrupt: it unwinds the
    stream's generator first, and closing the stream there can wait forever on the HTTP client's
    connection pool, whose lock the interrupt may have left taken (a follower that ignored
    Ctrl-C, seen in the suite, even with the exit in an `except KeyboardInterrupt`)."""
    with contextlib.suppress(Exception):  # a print cut short may refuse a second write: exit anyway
        sys.stdout.flush()
    os._exit(0)


@contextlib.contextmanager
def ctrl_c_ends() -> Iterator[None]:
    """While the block runs, SIGINT (Ctrl-C) ends the command with status 0 at once."""
    previous = signal.signal(signal.SIGINT, _stop)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
