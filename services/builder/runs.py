"""Scheduled runs: a command in a fresh copy of a model API's source, with its image's environment.

The command runs as an argument list (shlex-split, no shell) with the environment's bin/ first on
PATH, in a folder of its own, under a time limit. When it exits 0 the folder, as the command left
it, is stored as a new source; the api makes the version. Outcomes are events whose ids derive
from the command's, so a redelivered run publishes the same outcome and JetStream drops the copy.
"""

from __future__ import annotations

import asyncio
import os
import shlex
import shutil
from pathlib import Path

import structlog

from pier import tarballs
from pier.artifacts import Store
from pier.bus import Bus
from pier.config import Settings
from pier.events import RunSchedule, ScheduleRunFailed, ScheduleRunSucceeded
from services.builder import atomic, sources
from services.builder.errors import BuildError
from services.builder.processes import LineSink, ProcessTimeout, run

logger = structlog.get_logger("builder")
KEEP_LINES = 200


class Runner:
    def __init__(self, bus: Bus, settings: Settings) -> None:
        self.bus = bus
        self.settings = settings
        self.store = Store(settings.artifacts)

    async def handle(self, cmd: RunSchedule) -> None:
        log = logger.bind(model_id=cmd.model_id, schedule_id=cmd.schedule_id, run_id=cmd.run_id)
        lines: list[str] = []

        async def keep(line: str) -> None:
            lines.append(line)
            del lines[:-KEEP_LINES]

        work = atomic.temp_beside(self.store.image("-"), f"run-{cmd.run_id[:8]}")
        try:
            digest = await self._run(cmd, work, keep)
        except BuildError as exc:
            log.info("scheduled run failed", reason=str(exc))
            await self.bus.publish(
                ScheduleRunFailed(
                    id=cmd.derived_id("failed"),
                    model_id=cmd.model_id,
                    schedule_id=cmd.schedule_id,
                    run_id=cmd.run_id,
                    reason=str(exc),
                    log=lines,
                )
            )
            return
        finally:
            await asyncio.to_thread(shutil.rmtree, work, True)
        log.info("scheduled run succeeded", source=digest)
        await self.bus.publish(
            ScheduleRunSucceeded(
                id=cmd.derived_id("succeeded"),
                model_id=cmd.model_id,
                schedule_id=cmd.schedule_id,
                run_id=cmd.run_id,
                source=digest,
                log=lines,
            )
        )

    async def _run(self, cmd: RunSchedule, work: Path, keep: LineSink) -> str:
        manifest = await asyncio.to_thread(self.store.manifest, cmd.image)
        if manifest is None:
            raise BuildError(f"image {cmd.image[:12]} is not in the artifact store")
        try:
            args = shlex.split(cmd.command)
        except ValueError as exc:
            raise BuildError(f"the command cannot be parsed: {exc}") from None
        if not args:
            raise BuildError("the command is empty")
        code = work / "code"
        await asyncio.to_thread(code.mkdir, parents=True)
        await asyncio.to_thread(
            sources.extract,
            self.store.source(cmd.source),
            code,
            tarballs.source_limits(self.settings),
            apply_ignore=False,
        )
        venv = Path(manifest.python).parent.parent
        env = {
            "PATH": os.pathsep.join([str(venv / "bin"), os.environ.get("PATH", "/usr/bin:/bin")]),
            "VIRTUAL_ENV": str(venv),
            "HOME": str(work),
            "LANG": os.environ.get("LANG", "C.UTF-8"),
            "PYTHONUNBUFFERED": "1",
            "PYTHONDONTWRITEBYTECODE": "1",
        }
        await keep(f"$ {cmd.command}")
        try:
            finished = await run(args, keep, timeout=cmd.timeout, cwd=code, env=env)
        except ProcessTimeout as exc:
            raise BuildError(f"the command {exc}") from None
        except OSError as exc:
            raise BuildError(f"the command cannot start: {exc.strerror} ({args[0]})") from None
        if finished.returncode != 0:
            raise BuildError(f"the command exited with code {finished.returncode}")
        data = await asyncio.to_thread(sources.pack, code)
        return await asyncio.to_thread(self.store.put_source, data)
