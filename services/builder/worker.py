"""The StartBuild handler: source -> checks -> environment -> image, reported as events and a build log.

A build's outcome is always an event: BuildSucceeded, or BuildFailed with one clear line.
Only infrastructure trouble (the bus, a full disk) raises, so the command comes back later.
Every event id derives from the command's, so a redelivered command publishes the same
events and JetStream drops the copies.
"""

from __future__ import annotations

import asyncio
import shutil
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import structlog

from pier import isolation, metrics, tarballs
from pier.artifacts import ImageManifest, Store
from pier.bus import Bus
from pier.config import Settings
from pier.events import BuildFailed, BuildStarted, BuildSucceeded, StartBuild
from pier.git import parse_networks, parse_schemes
from services.builder import atomic, checks, environments, git, images, sources
from services.builder.environments import Environments
from services.builder.errors import BuildError
from services.builder.processes import BuildUser

logger = structlog.get_logger("builder")
# Served on `pier.metrics.builder`, merged into the api's GET /metrics.
BUILDS = metrics.REGISTRY.counter("pier_builder_builds_total", "Builds finished, by outcome", ("outcome",))
BUILD_SECONDS = metrics.REGISTRY.histogram(
    "pier_builder_build_duration_seconds",
    "Time from a build's start to its outcome",
    ("outcome",),
    buckets=(1, 5, 10, 30, 60, 120, 300, 600, 1200, 1800, 3600),
)
_MAX_REASON = 500


def _count_build(outcome: str, began: float) -> None:
    BUILDS.inc(outcome)
    BUILD_SECONDS.observe(time.monotonic() - began, outcome)


class BuildLog:
    """The build log of one version, line by line as the build runs."""

    def __init__(self, bus: Bus, model_id: str, version: int) -> None:
        self.bus, self.model_id, self.version = bus, model_id, version

    async def __call__(self, line: str) -> None:
        await self.bus.log(self.model_id, "build", line, version=self.version)


class Builder:
    def __init__(self, bus: Bus, settings: Settings) -> None:
        self.bus = bus
        self.settings = settings
        self.store = Store(settings.artifacts)
        # As root, uv and the import check (the user's code, its packages' setup code) run as the build
        # uid; otherwise as the platform's user, and every build log says so.
        self.not_isolated = isolation.not_isolated_reason()
        self.user: BuildUser | None = None
        if self.not_isolated is None:
            isolation.lock_down_home(settings.home, settings.artifacts)
            self.user = BuildUser(uid=isolation.BUILD_UID, home=isolation.build_home(settings.home))
            # The build uid runs uv and the interpreter environments are made from: let it reach them.
            for program in (shutil.which(environments.uv_binary()), sys.executable):
                if program:
                    isolation.make_searchable(Path(program))
        self.environments = Environments(self.store, settings.build_timeout, self.user)

    async def sweep(self) -> None:
        """Clear work folders that builders killed mid-build left behind."""
        for folder in (_folder_of(self.store.image), _folder_of(self.store.env)):
            removed = await asyncio.to_thread(atomic.sweep, folder, 2 * self.settings.build_timeout)
            if removed:
                logger.info("removed stale work folders", folder=str(folder), count=removed)

    async def handle(self, cmd: StartBuild) -> None:
        log = logger.bind(model_id=cmd.model_id, version=cmd.version)
        say = BuildLog(self.bus, cmd.model_id, cmd.version)
        await self.bus.publish(BuildStarted(id=cmd.derived_id("started"), model_id=cmd.model_id, version=cmd.version))
        origin = f"git {cmd.git.url}" if cmd.git else f"source {cmd.source[:12]}"
        await say(f"build started from {origin}")
        if self.not_isolated is not None:
            await say(f"pier: builds as the platform user: {self.not_isolated}; not isolated")
        log.info("build started", source=cmd.source, git=cmd.git.url if cmd.git else None)
        limit = asyncio.timeout(self.settings.build_timeout)
        began = time.monotonic()
        try:
            async with limit:
                manifest, built = await self._build(cmd, say)
        except BuildError as exc:
            reason = _one_line(str(exc))
        except TimeoutError:
            if not limit.expired():
                raise  # a bus or network timeout inside: infrastructure, so retried
            reason = f"the build took longer than {self.settings.build_timeout:g} s"
        else:
            _count_build("succeeded", began)
            await say(f"build succeeded: image {manifest.digest[:12]}")
            log.info("build succeeded", image=manifest.digest)
            await self.bus.publish(
                BuildSucceeded(
                    id=cmd.derived_id("succeeded"),
                    model_id=cmd.model_id,
                    version=cmd.version,
                    image=manifest.digest,
                    packages=manifest.packages,
                    source=built.source,
                    commit=built.commit,
                    env_hash=manifest.env_hash,
                )
            )
            return
        _count_build("failed", began)
        await say(f"build failed: {reason}")
        log.info("build failed", reason=reason)
        await self.bus.publish(
            BuildFailed(id=cmd.derived_id("failed"), model_id=cmd.model_id, version=cmd.version, reason=reason)
        )

    async def _fetch(self, cmd: StartBuild, work: Path, say: BuildLog) -> Built:
        """The source digest (and commit) to build: the upload's, or a git checkout stored as a source."""
        if cmd.git is None:
            return Built(source=cmd.source)
        fetch_dir = work / "git"
        await asyncio.to_thread(fetch_dir.mkdir, parents=True)
        try:
            fetched = await git.fetch(
                cmd.git,
                fetch_dir,
                self.settings.artifacts,
                self.settings.build_timeout,
                say,
                parse_schemes(self.settings.git_schemes),
                parse_networks(self.settings.git_allow_networks),
            )
        finally:
            await asyncio.to_thread(shutil.rmtree, fetch_dir, True)
        digest = await asyncio.to_thread(self.store.put_source, fetched.tarball)
        return Built(source=digest, commit=fetched.commit)

    async def _build(self, cmd: StartBuild, say: BuildLog) -> tuple[ImageManifest, Built]:
        await asyncio.to_thread(_folder_of(self.store.image).mkdir, parents=True, exist_ok=True)
        work = atomic.temp_beside(self.store.image("-"), f"v{cmd.version}")
        code = work / "code"
        try:
            await asyncio.to_thread(code.mkdir, parents=True)
            built = await self._fetch(cmd, work, say)
            extracted = await asyncio.to_thread(
                sources.extract, self.store.source(built.source), code, tarballs.source_limits(self.settings)
            )
            await say(f"source unpacked: {extracted.files} files, {_size(extracted.size)}")
            if (code / sources.IGNORE_FILE).is_file():
                await say(
                    f"{sources.IGNORE_FILE} excluded {extracted.excluded_files} files, {_size(extracted.excluded_size)}"
                )
            requirements = code / "requirements.txt"
            requirements_file = requirements if requirements.is_file() else None
            code_digest = await asyncio.to_thread(sources.tree_digest, code)
            env_hash = await asyncio.to_thread(environments.hash_for, requirements_file, cmd.environment)
            digest = images.image_digest(code_digest, env_hash, cmd.entrypoint)

            existing = await asyncio.to_thread(images.reuse, self.store, digest)
            if existing is not None:
                await say(f"image {digest[:12]} already built")
                return existing, built

            problem = await asyncio.to_thread(checks.static_problem, code, cmd.entrypoint)
            if problem:
                raise BuildError(problem)
            clash = await asyncio.to_thread(environments.harness_clash, requirements_file, cmd.environment)
            if clash:
                raise BuildError(clash)
            env = await self.environments.ensure(env_hash, requirements_file, say, cmd.environment)
            runtime = work / "runtime"
            await asyncio.to_thread(images.copy_runtime, runtime)
            await say(f"checking that {', '.join(cmd.entrypoint.files())} imports")
            problem = await checks.import_problem(
                env.python, runtime, code, cmd.entrypoint, self.settings.build_import_timeout, say, self.user
            )
            if problem:
                raise BuildError(problem)
            manifest = ImageManifest(
                digest=digest,
                code_digest=code_digest,
                env_hash=env_hash,
                python=str(env.python),
                entrypoint=cmd.entrypoint,
                packages=env.packages,
            )
            # Published the platform's and read-only: an instance reads its image, never changes it.
            await asyncio.to_thread(isolation.take_back_read_only, work)
            if not await asyncio.to_thread(images.commit, work, self.store.image(digest), manifest):
                await say(f"image {digest[:12]} was built concurrently; using that one")
            return manifest, built
        finally:
            # After a successful commit the folder has moved and there is nothing left to remove.
            await asyncio.to_thread(shutil.rmtree, work, True)


@dataclass(frozen=True)
class Built:
    source: str  # the digest of the source tarball the image was built from
    commit: str | None = None


def _folder_of(path_for: Callable[[str], Path]) -> Path:
    # The layout belongs to Store: ask it where a key would go rather than repeat its folder names.
    return path_for("-").parent


def _one_line(reason: str) -> str:
    line = " ".join(reason.split())
    return line if len(line) <= _MAX_REASON else line[: _MAX_REASON - 1] + "…"


def _size(n: int) -> str:
    if n < 1024:
        return f"{n} bytes"
    size = n / 1024
    for unit in ("KiB", "MiB"):
        if size < 1024:
            return f"{size:.1f} {unit}"
        size /= 1024
    return f"{size:.1f} GiB"
