"""The create-time checks of a model API's volumes: plain absolute paths, unique names, host paths
under the roots an admin allowed (PIER_VOLUME_ROOTS), and a runtime that can mount them (what the
scheduler publishes with its inventory). Each problem is a 400 naming its field."""

from __future__ import annotations

import asyncpg
import msgspec

from pier import volumes as pier_volumes
from pier.bus import Bus
from pier.config import Settings
from pier.volumes import Volume
from services.api import gpus
from services.api.errors import Invalid

# The Kubernetes driver unpacks the image there; a volume over it would hide the model's code.
RESERVED = "/pier"


async def check(bus: Bus, settings: Settings, asked: list[Volume]) -> None:
    if not asked:
        return
    roots = pier_volumes.parse_roots(settings.volume_roots)
    problems: list[tuple[str, str]] = []
    names: dict[str, int] = {}
    mounts: dict[str, int] = {}
    for n, volume in enumerate(asked):
        at = f"volumes[{n}]"
        if volume.name in names:
            problems.append((f"{at}.name", f"{volume.name!r} is the name of volumes[{names[volume.name]}] already"))
        names.setdefault(volume.name, n)
        problem = pier_volumes.path_problem(volume.mount_path)
        if problem is None and volume.mount_path == "/":
            problem = "is the root of the file system"
        if problem is None and pier_volumes.under(volume.mount_path, [RESERVED]):
            problem = f"is under {RESERVED}, where the platform puts the model's code"
        if problem is None and volume.mount_path in mounts:
            problem = f"is the mount path of volumes[{mounts[volume.mount_path]}] already"
        mounts.setdefault(volume.mount_path, n)
        if problem is not None:
            problems.append((f"{at}.mount_path", f"{volume.mount_path!r} {problem}"))
        problem = pier_volumes.path_problem(volume.host_path)
        if problem is None and not pier_volumes.under(volume.host_path, roots):
            allowed = ", ".join(roots) if roots else "none (PIER_VOLUME_ROOTS is empty)"
            problem = f"is not under a folder the admin allowed for volumes; allowed: {allowed}"
        if problem is not None:
            problems.append((f"{at}.host_path", f"{volume.host_path!r} {problem}"))
    if not problems:
        known = await gpus.inventory(bus)
        if known is None:
            raise gpus.Unavailable("the scheduler has not said yet whether it can mount volumes; try again in a moment")
        if known.volumes_refused:
            problems.append(("volumes", f"this platform cannot mount volumes: {known.volumes_refused}"))
    if problems:
        raise Invalid("; ".join(f"{f}: {p}" for f, p in problems), problems)


async def store(conn: asyncpg.Connection, model_id: str, asked: list[Volume]) -> None:
    await conn.execute("UPDATE models SET volumes = $2 WHERE id = $1", model_id, msgspec.json.encode(asked).decode())


def stored(row: asyncpg.Record) -> list[Volume]:
    return pier_volumes.from_json(row["volumes"])
