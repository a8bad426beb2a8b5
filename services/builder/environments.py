"""Python environments built with uv, one per distinct set of inputs, shared by every image that needs it.

An environment is built in a temporary sibling folder and renamed into place once its completion
marker is written, so `envs/<hash>/` either holds a whole environment or does not exist. As root,
uv runs as the build uid on a folder it owns, which becomes the platform's, read-only to everyone
else, before the rename publishes it. uv's
venvs survive the rename: the interpreter is a link to the base Python, and `--relocatable`
keeps the scripts in bin/ path-independent.
"""

from __future__ import annotations

import asyncio
import hashlib
import importlib.metadata
import os
import shutil
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import msgspec
from packaging.requirements import InvalidRequirement, Requirement
from packaging.utils import canonicalize_name

from pier import isolation
from pier.artifacts import Store
from pier.events import BaseEnvironment
from services.builder import atomic
from services.builder.errors import BuildError
from services.builder.processes import BuildUser, LineSink, ProcessTimeout, run

MARKER = ".pier-env.json"
# What the harness imports inside an instance, pinned to the platform's own versions so the
# harness runs against what it was tested with (tests/unit/test_builder_environments.py checks
# that this list covers every third-party import of pier/harness/).
HARNESS_PACKAGES = ("httptools", "msgspec", "uvloop")


class _Marker(msgspec.Struct):
    packages: list[str]


@dataclass(frozen=True)
class Environment:
    hash: str
    path: Path
    packages: list[str]

    @property
    def python(self) -> Path:
        return self.path / "bin" / "python"


def python_version() -> str:
    return ".".join(str(part) for part in sys.version_info[:3])


def harness_requirements() -> list[str]:
    return [f"{name}=={importlib.metadata.version(name)}" for name in HARNESS_PACKAGES]


def env_hash(python: str, requirements: str | None, harness: Sequence[str], base_packages: Sequence[str] = ()) -> str:
    """The identity of an environment: same inputs, same hash, one shared folder."""
    inputs: dict[str, object] = {"python": python, "requirements": requirements, "harness": sorted(harness)}
    if base_packages:
        # Only present when a compute environment adds packages, so existing hashes stay valid.
        inputs["base"] = sorted(base_packages)
    return hashlib.sha256(msgspec.json.encode(inputs, order="sorted")).hexdigest()


def hash_for(requirements: Path | None, base: BaseEnvironment | None = None) -> str:
    """The environment hash for this platform, a base environment and a source's requirements.txt
    (if any). Blocking."""
    text = requirements.read_text(encoding="utf-8", errors="replace") if requirements else None
    python = base.python if base and base.python else python_version()
    return env_hash(python, text, harness_requirements(), base.packages if base else ())


def harness_clash(requirements: Path | None, base: BaseEnvironment | None = None) -> str | None:
    """A requirement that excludes the version of a package the harness runs with, named with both
    constraints; None when there is none. Found before uv runs, so the user reads what to change
    instead of a resolver trace (clashes through dependencies are still uv's to report). Blocking."""
    wanted: list[tuple[str, str]] = []
    if base is not None:
        wanted += [(f"environment {base.name or 'base'}", package) for package in base.packages]
    if requirements:
        for line in requirements.read_text(encoding="utf-8", errors="replace").splitlines():
            line = line.split(" #", 1)[0].strip()
            if line and not line.startswith(("#", "-")):
                wanted.append((requirements.name, line))
    pinned = {canonicalize_name(name): version for name, version in _harness_pins()}
    for where, text in wanted:
        try:
            requirement = Requirement(text)
        except InvalidRequirement:
            continue  # uv reports it, in its own words
        name = canonicalize_name(requirement.name)
        if name in pinned and requirement.specifier and not requirement.specifier.contains(pinned[name], True):
            return (
                f"{where} asks for {requirement.name}{requirement.specifier}, but the harness inside every"
                f" instance needs {requirement.name}=={pinned[name]}; change or drop that requirement"
            )
    return None


def _harness_pins() -> list[tuple[str, str]]:
    return [(name, importlib.metadata.version(name)) for name in HARNESS_PACKAGES]


def uv_binary() -> str:
    return shutil.which("uv", path=str(Path(sys.executable).parent)) or "uv"


def uv_error(lines: Sequence[str]) -> str:
    """What went wrong, in one line, from uv's plain (NO_COLOR) output: its `error:` line and the
    innermost `cause:` beneath it, which is usually the one naming the package."""
    stripped = [line.strip() for line in lines if line.strip()]
    for i, line in enumerate(stripped):
        if line.startswith("error:"):
            error = line.removeprefix("error:").strip()
            causes = [c.removeprefix("cause:").strip() for c in stripped[i + 1 :] if c.startswith("cause:")]
            return f"{error.rstrip(':')}: {causes[-1]}" if causes else error
    return stripped[-1] if stripped else "uv exited with an error and no output"


class Environments:
    def __init__(self, store: Store, timeout: float, user: BuildUser | None = None) -> None:
        self.store = store
        self.timeout = timeout
        self.user = user
        # Builds in this process that need the same environment wait for one another instead of
        # both running uv; other processes are kept apart by the rename.
        self._locks: dict[str, asyncio.Lock] = {}

    async def ensure(
        self, digest: str, requirements: Path | None, on_line: LineSink, base: BaseEnvironment | None = None
    ) -> Environment:
        """The environment `digest` (from `hash_for(requirements, base)`), built now unless it exists."""
        final = self.store.env(digest)
        async with self._locks.setdefault(digest, asyncio.Lock()):
            packages = await asyncio.to_thread(_read_marker, final)
            if packages is not None:
                await on_line(f"environment {digest[:12]} cached")
                return Environment(digest, final, packages)
            await on_line(f"creating environment {digest[:12]}")
            final.parent.mkdir(parents=True, exist_ok=True)
            tmp = atomic.temp_beside(final, digest[:12])
            try:
                await asyncio.to_thread(tmp.mkdir)
                if self.user is not None:
                    await asyncio.to_thread(isolation.hand_over, tmp, self.user.uid)
                packages = await self._create(tmp, requirements, on_line, base)
                await asyncio.to_thread(isolation.take_back_read_only, tmp)
                if not await asyncio.to_thread(atomic.rename_into_place, tmp, final, MARKER):
                    packages = await asyncio.to_thread(_read_marker, final) or packages
            finally:
                await asyncio.to_thread(shutil.rmtree, tmp, True)
            await on_line(f"environment {digest[:12]} ready with {len(packages)} packages")
            return Environment(digest, final, packages)

    async def _create(
        self, tmp: Path, requirements: Path | None, on_line: LineSink, base: BaseEnvironment | None
    ) -> list[str]:
        python = str(tmp / "bin" / "python")
        interpreter = base.python if base and base.python else sys.executable
        await self._uv(["venv", "--relocatable", "--python", interpreter, str(tmp)], on_line, "creating the venv")
        install = ["pip", "install", "--python", python]
        if requirements:
            install += ["-r", str(requirements)]
        # The compute environment's packages resolve together with the user's requirements: layered
        # on top means the user's pins win only where both can hold, and a conflict is uv's error.
        install += base.packages if base else []
        await self._uv([*install, *harness_requirements()], on_line, "installing requirements")

        async def quiet(_: str) -> None:
            return None

        frozen = await self._uv(["pip", "freeze", "--quiet", "--python", python], quiet, "listing packages")
        packages = pinned_packages(frozen)
        await asyncio.to_thread((tmp / MARKER).write_bytes, msgspec.json.encode(_Marker(packages=packages)))
        return packages

    async def _uv(self, args: list[str], on_line: LineSink, doing: str) -> list[str]:
        # The builder's own settings (the admin token among them) stay out of reach of package
        # builds, which run arbitrary setup code.
        env = {k: v for k, v in os.environ.items() if not k.startswith("PIER_")}
        # Bytecode now, while the environment is still being built: published, it is read-only.
        env.update(NO_COLOR="1", UV_NO_PROGRESS="1", UV_COMPILE_BYTECODE="1")
        if self.user is not None:
            # A HOME and a cache of the build uid's own; copies, not hard links to that cache, so
            # nothing in the published environment shares a file with what the build uid can write.
            env.update(HOME=str(self.user.home), UV_CACHE_DIR=str(self.user.home / "uv-cache"), UV_LINK_MODE="copy")
        # cwd is the store, not the user's code, so a uv.toml shipped in a source is never picked up.
        try:
            finished = await run(
                [uv_binary(), *args],
                on_line,
                timeout=self.timeout,
                cwd=self.store.root,
                env=env,
                user=self.user.uid if self.user else None,
            )
        except ProcessTimeout as exc:
            raise BuildError(f"{doing} {exc}") from None
        if finished.returncode != 0:
            raise BuildError(f"{doing} failed: {uv_error(finished.lines)}")
        return finished.lines


def pinned_packages(lines: Sequence[str]) -> list[str]:
    """The requirement lines of `uv pip freeze` output (name==version, or name @ URL), without the
    status lines uv writes to the same stream (`Using Python 3.11.7 environment at: ...`)."""
    packages = []
    for line in (line.strip() for line in lines):
        if not line or line.startswith("#"):
            continue
        if line.startswith("-e "):
            packages.append(line)  # an editable install: its path is the pin
            continue
        try:
            Requirement(line)
        except InvalidRequirement:
            continue
        packages.append(line)
    return packages


def _read_marker(path: Path) -> list[str] | None:
    try:
        packages = msgspec.json.decode((path / MARKER).read_bytes(), type=_Marker).packages
    except FileNotFoundError:
        return None
    # Environments made before the freeze ran --quiet recorded uv's status line as a package.
    return pinned_packages(packages)
