"""Processes the supervisor starts and must never leave behind.

A process is known by its pid *and* its start time (field 22 of /proc/<pid>/stat), so a pid the
kernel has recycled for another program is never signalled. Linux only, as the local runtime is.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import subprocess
import time
from collections.abc import Callable, Iterable
from pathlib import Path

import msgspec

_PR_SET_PDEATHSIG = 1
_POLL = 0.05


class PidRecord(msgspec.Struct, frozen=True):
    pid: int
    start_time: int


def _stat(pid: int) -> list[str] | None:
    """The fields of /proc/<pid>/stat from the state (field 3) on, or None when there is no such live process."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # The command name (field 2) may hold spaces and parentheses: split after its last ')'.
    fields = raw[raw.rindex(")") + 2 :].split()
    return None if fields[0] in ("Z", "X") else fields


def start_time(pid: int) -> int | None:
    """The process's start time in clock ticks since boot, or None when there is no such live process."""
    fields = _stat(pid)
    return None if fields is None else int(fields[19])


def process_group(pid: int) -> int | None:
    fields = _stat(pid)
    return None if fields is None else int(fields[2])


def alive(record: PidRecord) -> bool:
    return start_time(record.pid) == record.start_time


def die_with_parent(sig: int) -> Callable[[], None]:
    """A `preexec_fn` that makes the child receive `sig` when the process that started it dies, even
    by SIGKILL (PR_SET_PDEATHSIG). The kernel sends it when the *thread* that forked exits, so
    children must be started from the main thread, never from `asyncio.to_thread`."""
    parent = os.getpid()
    # Looked up here, not in the child: a dlopen between fork and exec can deadlock.
    prctl = ctypes.CDLL(None, use_errno=True).prctl

    def preexec() -> None:
        prctl(_PR_SET_PDEATHSIG, sig, 0, 0, 0)
        if os.getppid() != parent:  # the parent died before prctl took effect
            os._exit(1)

    return preexec


def write_record(path: Path, pid: int) -> None:
    """Remember a server we started, so the next start can stop it if we die without stopping it."""
    started = start_time(pid)
    if started is None:
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_bytes(msgspec.json.encode(PidRecord(pid, started)))
    tmp.replace(path)


def read_record(path: Path) -> PidRecord | None:
    try:
        return msgspec.json.decode(path.read_bytes(), type=PidRecord)
    except (OSError, msgspec.DecodeError):
        return None


def stop_recorded(path: Path, sig: int, timeout: float) -> bool:
    """Stop the process recorded in `path` if it is still the one we started; True if it was running."""
    record = read_record(path)
    running = record is not None and alive(record)
    if record is not None and running:
        stop_pids([record], sig, timeout)
    path.unlink(missing_ok=True)
    return running


def stop_pids(records: Iterable[PidRecord], sig: int, timeout: float) -> None:
    """Send `sig` to every process at once, wait up to `timeout` for all, then SIGKILL the rest."""
    targets = list(records)
    for record in targets:
        _signal(record, sig)
    if not _wait(targets, timeout):
        for record in targets:
            _signal(record, signal.SIGKILL)
        _wait(targets, 5.0)


def stop_children(procs: Iterable[subprocess.Popen[bytes]], sig: int, timeout: float) -> None:
    """As `stop_pids`, for our own children, which are reaped too (no zombies left)."""
    live = [p for p in procs if p.poll() is None]
    for proc in live:
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(sig)
    deadline = time.monotonic() + timeout
    for proc in live:
        try:
            proc.wait(max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            proc.kill()
    for proc in live:
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(5.0)


def processes_under(root: Path) -> list[PidRecord]:
    """Live processes whose working directory is `root` or inside it (deleted or not): how model API
    instances are found when no pid file names them."""
    prefix = str(root.resolve())
    found = []
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            cwd = os.readlink(f"/proc/{entry.name}/cwd").removesuffix(" (deleted)")
        except OSError:
            continue
        if cwd == prefix or cwd.startswith(prefix + os.sep):
            started = start_time(int(entry.name))
            if started is not None:
                found.append(PidRecord(int(entry.name), started))
    return found


def unrecorded_under(root: Path, pid_files: Iterable[Path]) -> list[PidRecord]:
    """Processes under `root` (as `processes_under`) in no process group that a pid file names: runs
    whose starter died before it recorded them. A recorded group whose leader is gone still counts as
    recorded: its pid is not reused while the group lives, and its owner stops it."""
    recorded = set()
    for path in pid_files:
        record = read_record(path)
        if record is not None and start_time(record.pid) in (None, record.start_time):
            recorded.add(record.pid)
    return [r for r in processes_under(root) if process_group(r.pid) not in recorded]


def kill_group(pgid: int) -> None:
    """SIGKILL what is left of a process group whose leader is gone (PostgreSQL's backends after
    its postmaster was killed). The kernel reuses no pid while a group carries it, so the members
    found are that group's."""
    if any(e.name.isdigit() and process_group(int(e.name)) == pgid for e in os.scandir("/proc")):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pgid, signal.SIGKILL)


def _signal(record: PidRecord, sig: int) -> None:
    if alive(record):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(record.pid, sig)


def _wait(records: list[PidRecord], timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while any(alive(r) for r in records):
        if time.monotonic() > deadline:
            return False
        time.sleep(_POLL)
    return True
