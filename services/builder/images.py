"""An image: the filtered code, the harness runtime and a manifest, in one immutable folder."""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

import msgspec

import pier
from pier.artifacts import ImageManifest
from pier.spec import Entrypoint
from services.builder import atomic

MANIFEST = "image.json"


def image_digest(code_digest: str, env_hash: str, entrypoint: Entrypoint) -> str:
    return hashlib.sha256((code_digest + env_hash).encode() + msgspec.json.encode(entrypoint)).hexdigest()


def runtime_files() -> list[tuple[Path, str]]:
    """(source file, path inside runtime/) for the part of `pier` an instance imports: the harness
    and what it needs, nothing of the platform's own dependencies."""
    package = Path(pier.__file__).parent
    files = [package / "__init__.py", package / "spec.py", *sorted((package / "harness").glob("*.py"))]
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
