"""Child processes for a build (uv, the import check), with their output streamed line by line."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

LineSink = Callable[[str], Awaitable[None]]


class ProcessTimeout(Exception):
    def __init__(self, limit: float) -> None:
        super().__init__(f"took longer than {limit:g} s")
        self.limit = limit


@dataclass(frozen=True)
class BuildUser:
    """Who a build's processes run as when the platform is root: the build uid, with a HOME of its own."""

    uid: int
    home: Path


@dataclass
class Finished:
    returncode: int
    lines: list[str] = field(default_factory=list)


async def run(
    args: Sequence[str],
    on_line: LineSink,
    *,
    timeout: float,
    cwd: Path | None = None,
    env: Mapping[str, str] | None = None,
    user: int | None = None,
) -> Finished:
    """Run `args`, sending each line of stdout and stderr (merged) to `on_line` as it appears.

    The child leads its own process group, so a timeout or a cancelled build kills whatever it
    spawned too (uv runs helpers) instead of leaving them to run on unowned. With `user`, it runs as
    that uid and gid (the build uid), with no supplementary groups.
    """
    proc = await asyncio.create_subprocess_exec(
        *args,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
        cwd=cwd,
        env=dict(env) if env is not None else None,
        start_new_session=True,
        # uvloop (the services' loop) takes no user=/group=: the child switches itself before exec.
        preexec_fn=_become(user) if user is not None else None,
        limit=1 << 20,  # a user's print of a long line must not break the build log
    )
    assert proc.stdout is not None
    finished = Finished(returncode=-1)
    try:
        async with asyncio.timeout(timeout):
            async for raw in proc.stdout:
                line = raw.decode(errors="replace").rstrip()
                finished.lines.append(line)
                await on_line(line)
            finished.returncode = await proc.wait()
    except TimeoutError:
        raise ProcessTimeout(timeout) from None
    finally:
        if proc.returncode is None:
            _kill_group(proc.pid)
            # Reaped off the cancellation path: a shielded wait so the child never lingers as a zombie.
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.shield(proc.wait())
    return finished


def _become(uid: int) -> Callable[[], None]:
    def switch() -> None:
        os.setgroups([])  # none of the platform's supplementary groups
        os.setgid(uid)
        os.setuid(uid)

    return switch


def _kill_group(pid: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, signal.SIGKILL)
