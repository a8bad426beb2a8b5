"""Builds do not run model code as the platform: as root, uv and the import check run as the build uid,
and what they leave is published the platform's and read-only (docs/security.md)."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from pier import isolation
from pier.config import Settings
from pier.events import BuildSucceeded
from tests.integration.test_builder import PREDICT, running_builder

# At import (the build's check runs it) it tries what a hostile package's import could, and prints it.
TRIES_AT_IMPORT = """
import os
import pathlib

def _attempt(what, action):
    try:
        action()
    except OSError as exc:
        print(f"door {what}: closed ({type(exc).__name__})", flush=True)
    else:
        print(f"door {what}: open", flush=True)

print(f"import check runs as uid {os.getuid()} gid {os.getgid()} groups {os.getgroups()}", flush=True)
for what, target in (("image", "IMAGE_FILE"), ("environment", "ENV_FILE")):
    _attempt(what, lambda: pathlib.Path(target).write_text("changed by another build"))
_attempt("credentials", lambda: pathlib.Path("CREDENTIALS_FILE").read_text())

def predict():
    return 1
"""


def _writable_by_others(folder: Path) -> list[str]:
    found = []
    for path in (folder, *folder.rglob("*")):
        info = path.lstat()
        if not stat.S_ISLNK(info.st_mode) and (info.st_mode & 0o022 or info.st_uid != os.geteuid()):
            found.append(f"{path} {stat.filemode(info.st_mode)} uid {info.st_uid}")
    return found


async def test_a_build_runs_its_code_as_the_build_uid_and_cannot_change_what_others_built(settings: Settings) -> None:
    if os.geteuid() != 0:
        pytest.skip("builds run as a uid of their own only when the platform runs as root")
    settings.home.mkdir(parents=True)
    (settings.home / "credentials.json").write_text('{"token": "pier_admin"}')
    async with running_builder(settings) as platform:
        first = await platform.outcome(await platform.build({"predict.py": PREDICT}))
        assert isinstance(first, BuildSucceeded), first
        manifest = platform.store.manifest(first.image)
        assert manifest is not None
        image, env = platform.store.image(first.image), platform.store.env(manifest.env_hash)
        code = (
            TRIES_AT_IMPORT.replace("IMAGE_FILE", str(image / "code" / "predict.py"))
            .replace("ENV_FILE", str(env / "pyvenv.cfg"))
            .replace("CREDENTIALS_FILE", str(settings.home / "credentials.json"))
        )
        cmd = await platform.build({"predict.py": code})
        second = await platform.outcome(cmd)
        assert isinstance(second, BuildSucceeded), second
        uid = isolation.BUILD_UID
        await platform.logged(cmd, f"import check runs as uid {uid} gid {uid} groups []")
        log = platform.log(cmd)

    doors = [line for line in log if line.startswith("door ")]
    assert doors == [
        "door image: closed (PermissionError)",
        "door environment: closed (PermissionError)",
        "door credentials: closed (PermissionError)",
    ], log
    assert (image / "code" / "predict.py").read_text() == PREDICT
    # What was built is the platform's, and nobody else may write a byte of it.
    for folder in (image, env, platform.store.image(second.image)):
        assert not _writable_by_others(folder), _writable_by_others(folder)[:5]
    # uv ran as the build uid, with a cache of its own (nothing it can write is linked into env/).
    cache = settings.home / isolation.BUILD_HOME / "uv-cache"
    assert cache.is_dir() and cache.stat().st_uid == uid
    assert (env / "pyvenv.cfg").stat().st_nlink == 1


async def test_a_build_as_an_unprivileged_platform_says_it_is_not_isolated(settings: Settings) -> None:
    if os.geteuid() == 0:
        pytest.skip("as root builds are isolated; the test above covers them")
    async with running_builder(settings) as platform:
        cmd = await platform.build({"predict.py": PREDICT})
        assert isinstance(await platform.outcome(cmd), BuildSucceeded)
        reason = isolation.not_isolated_reason()
        await platform.logged(cmd, f"pier: builds as the platform user: {reason}; not isolated")
