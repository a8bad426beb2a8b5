"""The local runtime's process identity and log helpers, without NATS or PostgreSQL."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import msgspec

from services.scheduler.logship import MAX_LINE, _split
from services.scheduler.runtimes.local import Exit, Handle, _stat, last_line, stop_all


def _record(home: Path, instance_id: str, handle: Handle) -> None:
    directory = home / "instances" / instance_id
    directory.mkdir(parents=True)
    (directory / "pid").write_bytes(msgspec.json.encode(handle))


def test_stop_all_never_signals_a_recycled_pid(tmp_path: Path) -> None:
    # Our own pid, recorded with another start time: what a recycled pid looks like.
    me = _stat(os.getpid())
    assert me is not None
    _record(tmp_path, "recycled", Handle(pid=os.getpid(), start_time=me.start_time - 1, port=1))
    assert stop_all(tmp_path) == 0


def test_stop_all_stops_the_whole_process_group(tmp_path: Path) -> None:
    # A leader with a child of its own, as the harness has with several workers.
    script = (
        "import subprocess, sys, time; "
        "subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)']); time.sleep(60)"
    )
    proc = subprocess.Popen([sys.executable, "-c", script], start_new_session=True)
    try:
        stat = _stat(proc.pid)
        assert stat is not None
        _record(tmp_path, "a", Handle(pid=proc.pid, start_time=stat.start_time, port=1))
        assert stop_all(tmp_path, timeout=5.0) == 1
        assert proc.wait(5) == -signal.SIGTERM
        assert not (tmp_path / "instances" / "a" / "pid").exists()
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def test_last_line_skips_trailing_blank_lines(tmp_path: Path) -> None:
    log = tmp_path / "instance.log"
    log.write_text("Traceback (most recent call last):\n  ...\nImportError: no module named x\n\n  \n")
    assert last_line(log) == "ImportError: no module named x"
    assert last_line(tmp_path / "missing.log") == ""


def test_exit_describes_status_and_signal() -> None:
    assert Exit(status=3).describe() == "exited with status 3"
    assert Exit(status=-9).describe() == "exited with status -9 (SIGKILL)"
    assert Exit(status=None).describe() == "exited with status unknown"


def test_split_keeps_a_partial_line_until_it_ends_or_the_process_is_gone() -> None:
    assert _split(b"one\r\ntwo\npart", final=False) == (["one", "two"], [0, 5, 9])
    assert _split(b"one\r\ntwo\npart", final=True) == (["one", "two", "part"], [0, 5, 9, 13])


def test_split_cuts_an_endless_line() -> None:
    texts, starts = _split(b"x" * (MAX_LINE + 10), final=False)
    assert len(texts) == 1 and starts == [0, MAX_LINE]
