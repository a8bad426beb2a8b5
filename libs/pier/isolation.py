"""Who model code runs as on this host, and what of PIER_HOME it can reach (docs/security.md).

As root, each instance runs as a uid/gid of its own from a reserved range (no passwd entry is
needed to setuid as root), chosen once per instance and recorded in its pid file. Its work dir is
its own (mode 0700); the image and the shared environment stay the platform's and read-only to it;
PIER_HOME, instances/ and artifacts/ are searchable but not listable, and the credentials in them
are the platform's alone. Builds (uv, the import check) run as one more uid, the build uid, on
folders it owns until they are handed back to the platform, read-only, before they are published.
Not as root, model code runs as the platform's user, and says so.
"""

from __future__ import annotations

import hashlib
import os
import stat
from collections.abc import Iterable
from pathlib import Path

# Below 65534 (nobody), so the range also exists in user namespaces that map only 16-bit ids.
UID_BASE = 40000
UID_COUNT = 20000
# Builds run as this one, outside the instances' range: a build never owns an instance's files.
BUILD_UID = UID_BASE - 1
# Under PIER_HOME, the build uid's own: its HOME and its uv cache (a cache the build uid can write).
BUILD_HOME = "build"
# Folders of the artifact store an instance must never read; the others (images, envs) it needs.
PRIVATE_ARTIFACTS = ("credentials", "sources")


def not_isolated_reason() -> str | None:
    """Why instances cannot run as users of their own here, or None when they can."""
    if os.geteuid() != 0:
        return f"the platform runs as uid {os.geteuid()}, not root, so it cannot switch users"
    return None


def instance_uid(instance_id: str, taken: Iterable[int]) -> int:
    """The uid for an instance: derived from its id, the next free one if another instance holds it."""
    used = set(taken)
    start = int.from_bytes(hashlib.sha256(instance_id.encode()).digest()[:4], "big") % UID_COUNT
    for step in range(UID_COUNT):
        uid = UID_BASE + (start + step) % UID_COUNT
        if uid not in used:
            return uid
    raise RuntimeError(f"all {UID_COUNT} instance uids from {UID_BASE} are in use")


def lock_down_home(home: Path, artifacts: Path) -> None:
    """Modes for the platform's folders that leave an instance only its own work dir, its image and
    its environment. Idempotent; blocking."""
    home.mkdir(parents=True, exist_ok=True)
    make_searchable(home)  # the folders above it (a pytest tmp dir is 0700, say)
    for folder in (home, home / "instances", artifacts, artifacts / "images", artifacts / "envs"):
        folder.mkdir(parents=True, exist_ok=True)
        # Searchable (an instance reaches its own paths by name), not listable, not writable.
        os.chmod(folder, 0o711)
    for name in PRIVATE_ARTIFACTS:
        (artifacts / name).mkdir(exist_ok=True)
        os.chmod(artifacts / name, 0o700)
    credentials = home / "credentials.json"
    if credentials.exists():
        os.chmod(credentials, 0o600)
    for entry in home.iterdir():
        # Everything else in PIER_HOME (logs, the bus's store, ...) is the platform's alone. The
        # PostgreSQL folder belongs to its own user and is 0700 already: leave it as it is.
        if entry.name not in ("instances", "artifacts") and entry.stat().st_uid == os.geteuid():
            mode = stat.S_IMODE(entry.lstat().st_mode)
            if not entry.is_symlink() and mode & 0o077:
                os.chmod(entry, mode & 0o700)


def build_home(home: Path) -> Path:
    """The build uid's HOME, created its own (0700) the first time. Blocking."""
    path = home / BUILD_HOME
    path.mkdir(mode=0o700, exist_ok=True)
    os.chown(path, BUILD_UID, BUILD_UID)
    return path


def hand_over(path: Path, uid: int) -> None:
    """Make a folder (and what it holds) `uid`'s, so a build running as it can write there. Blocking."""
    for root, dirs, files in os.walk(path):
        for name in (*dirs, *files):
            os.lchown(os.path.join(root, name), uid, uid)
    os.chown(path, uid, uid)


def take_back_read_only(path: Path) -> None:
    """Make a finished environment or image the platform's, writable by nobody else, before it is
    published: what a build uid (or the code it ran) left in it can no longer change it. Blocking."""
    me = os.geteuid(), os.getegid()
    for root, dirs, files in os.walk(path):
        for name in (*dirs, *files):
            full = os.path.join(root, name)
            os.lchown(full, *me)
            mode = os.lstat(full).st_mode
            if not stat.S_ISLNK(mode):
                # Readable by instances where it was readable; set-id bits do not survive a change of owner.
                os.chmod(full, stat.S_IMODE(mode) & 0o755)
    os.chown(path, *me)
    os.chmod(path, 0o755)


def make_searchable(path: Path) -> None:
    """Let other users pass through every folder above `path` (o+x, not o+r: they still cannot list
    them), as the embedded PostgreSQL does for its binaries: an instance's interpreter may live under
    a folder like /root. Blocking."""
    for folder in {*path.absolute().parents, *path.resolve().parents}:
        mode = stat.S_IMODE(folder.stat().st_mode)
        if not mode & stat.S_IXOTH:
            os.chmod(folder, mode | stat.S_IXOTH)


def own_work_dir(work: Path, uid: int) -> None:
    """Give the run's fresh copy of the code to its uid, private to it. Blocking."""
    hand_over(work, uid)
    os.chmod(work, 0o700)
