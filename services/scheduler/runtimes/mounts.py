"""Volumes under the local driver: each run in a private mount namespace of its own (util-linux
`unshare --mount --propagation private`), where each volume's host folder is bind-mounted at its mount
path, and remounted read-only when asked, before the harness starts (as the run's own user, through
`setpriv`, when the run is isolated). The host's mounts never change; nothing is left to unmount.

That needs root and util-linux; where either is missing, `refused()` says why, the scheduler publishes
it, and the api refuses volumes at create instead of starting an instance without them.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

from pier import volumes as pier_volumes
from pier.volumes import Volume

TOOLS = ("unshare", "mount", "setpriv")


def refused() -> str:
    """Why this host cannot give instances their volumes, or "" when it can. Blocking (a trial unshare)."""
    if os.geteuid() != 0:
        return f"the local runtime mounts volumes only as root (the scheduler runs as uid {os.geteuid()})"
    missing = [tool for tool in TOOLS if shutil.which(tool) is None]
    if missing:
        return f"util-linux's {', '.join(missing)} not found on the scheduler's PATH"
    # Root in a container without CAP_SYS_ADMIN cannot make a mount namespace: try once.
    trial = subprocess.run(
        ["unshare", "--mount", "--propagation", "private", "true"], capture_output=True, text=True, check=False
    )
    if trial.returncode != 0:
        return f"unshare --mount failed: {trial.stderr.strip() or f'status {trial.returncode}'}"
    return ""


def check(volumes: tuple[Volume, ...], roots_text: str) -> str:
    """Why these volumes cannot be mounted now, or "". The host folder must be a folder still under
    PIER_VOLUME_ROOTS once its links are followed, and the mount point must exist as a folder: the
    driver makes nothing on the host's file system. Blocking."""
    roots = pier_volumes.parse_roots(roots_text)
    for volume in volumes:
        real = os.path.realpath(volume.host_path)
        if not Path(real).is_dir():
            return f"volume {volume.name!r}: host path {volume.host_path} is not a folder on this host"
        if not pier_volumes.under(real, roots):
            return f"volume {volume.name!r}: host path {volume.host_path} leads to {real}, outside PIER_VOLUME_ROOTS"
        if not Path(volume.mount_path).is_dir():
            return (
                f"volume {volume.name!r}: mount path {volume.mount_path} does not exist as a folder on this host; "
                "the local driver mounts over an existing folder (an admin creates it)"
            )
    return ""


def wrap(argv: list[str], volumes: tuple[Volume, ...], uid: int | None) -> list[str]:
    """`argv` run in a private mount namespace with the volumes mounted, as `uid` when set. The paths
    travel as arguments of the shell, never inside its script."""
    lines = ["set -e"]
    paths: list[str] = []
    for volume in volumes:
        source, target = len(paths) + 1, len(paths) + 2
        paths += [os.path.realpath(volume.host_path), volume.mount_path]
        lines.append(f'mount --bind "${{{source}}}" "${{{target}}}"')
        if volume.read_only:
            lines.append(f'mount -o remount,bind,ro "${{{target}}}"')
    lines += [f"shift {len(paths)}", 'exec "$@"']
    drop = [] if uid is None else ["setpriv", f"--reuid={uid}", f"--regid={uid}", "--clear-groups", "--"]
    namespace = ["unshare", "--mount", "--propagation", "private", "--"]
    return [*namespace, "/bin/sh", "-c", "; ".join(lines), "pier-volumes", *paths, *drop, *argv]
