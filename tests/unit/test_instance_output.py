"""What user code prints is bounded by bytes a second on its way to the instance log, and what is
cut is counted there: nothing is dropped silently. A pipe and a file, a clock the test moves."""

from __future__ import annotations

import contextlib
import os
import re
from collections.abc import Iterator
from pathlib import Path

import pytest

from pier.harness.output import Copier


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def pipe() -> Iterator[tuple[int, int]]:
    read_end, write_end = os.pipe()
    yield read_end, write_end
    for fd in (read_end, write_end):
        with contextlib.suppress(OSError):
            os.close(fd)


def _cut(log: str) -> int:
    return sum(int(n) for n in re.findall(r"^pier: cut (\d+) bytes of output", log, re.MULTILINE))


def test_output_over_the_rate_is_cut_at_a_line_end_and_every_byte_cut_is_counted(
    tmp_path: Path, pipe: tuple[int, int]
) -> None:
    read_end, write_end = pipe
    line = b"x" * 99 + b"\n"
    written = line * 400  # 40,000 bytes at once (within a pipe's buffer); a second's worth is 1,000
    os.write(write_end, written)
    os.close(write_end)
    path = tmp_path / "instance.log"
    with path.open("wb") as sink:
        Copier(read_end, sink.fileno(), rate=1000, clock=Clock()).run()  # the clock stands still
    log = path.read_text()
    kept = [text for text in log.splitlines() if not text.startswith("pier: cut")]
    assert kept and all(text == "x" * 99 for text in kept)  # only whole lines
    assert len(kept) * len(line) <= 1000
    assert len(kept) * len(line) + _cut(log) == len(written)  # every byte either kept or counted
    assert log.endswith("(over 1000 bytes/s)\n")


def test_output_within_the_rate_passes_whole_and_says_nothing(tmp_path: Path, pipe: tuple[int, int]) -> None:
    read_end, write_end = pipe
    text = b"".join(f"line {n}\n".encode() for n in range(200))
    os.write(write_end, text)
    os.close(write_end)
    path = tmp_path / "instance.log"
    with path.open("wb") as sink:
        Copier(read_end, sink.fileno(), rate=1 << 20).run()  # returns at the pipe's end
    assert path.read_bytes() == text


def test_a_cut_is_reported_when_output_stops_and_at_the_end(tmp_path: Path, pipe: tuple[int, int]) -> None:
    read_end, write_end = pipe
    os.write(write_end, b"y" * 5000)  # one line longer than a second's worth: none of it kept
    os.close(write_end)
    path = tmp_path / "instance.log"
    with path.open("wb") as sink:
        Copier(read_end, sink.fileno(), rate=1000).run()
    assert path.read_text() == "pier: cut 5000 bytes of output (over 1000 bytes/s)\n"
