"""An image: the filtered code, the harness runtime and a manifest, in one immutable folder."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import msgspec

import pier
from pier.artifacts import ImageManifest, Store
from pier.artifacts import image_digest as image_digest
from services.builder import atomic

MANIFEST = "image.json"


def reuse(store: Store, digest: str) -> ImageManifest | None:
    """The manifest of image `digest` if it is built already, or None. Blocking.

    The image is touched first: the api's garbage collector spares an image used recently
    (services/api/images.py), and the version about to use this one does not record it until
    the build's outcome is handled. A touch that finds no image means it was collected: build it.
    """
    try:
        os.utime(store.image(digest))
    except FileNotFoundError:
        return None
    return store.manifest(digest)


def runtime_files() -> list[tuple[Path, str]]:
    """(source file, path inside runtime/) for the part of `pier` an instance imports: the harness
    and the data plane's HTTP code it serves with, nothing of the platform's own dependencies."""
    package = Path(pier.__file__).parent
    files = [
        package / "__init__.py",
        package / "spec.py",
        *sorted((package / "harness").glob("*.py")),
        *sorted((package / "http").glob("*.py")),
    ]
    return [(path, "pier/" + path.relative_to(package).as_posix()) for path in files]


def copy_runtime(runtime: Path) -> None:
    """Blocking."""
    for source, relative in runtime_files():
        target = runtime / relative
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(source, target)


def commit(work: Path, final: Path, manifest: ImageManifest) -> bool:
    """Write the manifest last, then rename the whole folder into place; False if an identical
    image got there first. Blocking."""
    (work / MANIFEST).write_bytes(msgspec.json.encode(manifest))
    return atomic.rename_into_place(work, final, MANIFEST)
