"""Host folders a model API's instances see at a path of their own (Domino's volumes).

A volume is asked for at create (`volumes` of POST /v1/models), checked here against the roots an
admin allowed (PIER_VOLUME_ROOTS), carried with the placement, and mounted by the runtime driver: a
hostPath volume on Kubernetes, a bind mount in a private mount namespace under the local driver.
"""

from __future__ import annotations

import posixpath
from typing import Annotated

import msgspec

# At most this many volumes per model API: each is a mount the driver sets up at every start.
MAX_VOLUMES = 8


class Volume(msgspec.Struct, kw_only=True, frozen=True, forbid_unknown_fields=True):
    # A DNS label (the Kubernetes driver names the pod's volume after it), short enough for its prefix.
    name: Annotated[
        str,
        msgspec.Meta(pattern=r"^[a-z0-9]([-a-z0-9]{0,30}[a-z0-9])?$", description="lower-case letters, digits, -"),
    ]
    mount_path: Annotated[str, msgspec.Meta(description="absolute path inside the instance, e.g. /data")]
    host_path: Annotated[str, msgspec.Meta(description="absolute path on the host, under PIER_VOLUME_ROOTS")]
    read_only: bool = False


def from_json(text: str | None) -> list[Volume]:
    """The volumes as stored in PostgreSQL (a JSON list; NULL or empty: none)."""
    return msgspec.json.decode(text or "[]", type=list[Volume])


def parse_roots(text: str) -> list[str]:
    """PIER_VOLUME_ROOTS (comma-separated absolute paths) -> the roots, normalised. ValueError on a
    relative one."""
    roots = []
    for item in (part.strip() for part in text.split(",")):
        if not item:
            continue
        problem = path_problem(item.rstrip("/") or "/")
        if problem is not None:
            raise ValueError(f"PIER_VOLUME_ROOTS: {item!r} {problem}")
        roots.append(posixpath.normpath(item))
    return roots


def path_problem(path: str) -> str | None:
    """Why `path` is not a plain absolute path (`..`, `.`, `//`, a trailing `/`), or None."""
    if not path.startswith("/"):
        return "is not an absolute path"
    if "\0" in path:
        return "contains a NUL character"
    parts = path.split("/")[1:]
    if ".." in parts:
        return "contains '..'"
    if path != "/" and ("" in parts or "." in parts):
        return f"is not in its plain form (write {'/' + '/'.join(p for p in parts if p not in ('', '.'))!r})"
    return None


def under(path: str, roots: list[str]) -> bool:
    """Is `path` one of `roots` or inside one (whole components: /data2 is not under /data)?"""
    return any(path == root or path.startswith(root.rstrip("/") + "/") for root in roots)
