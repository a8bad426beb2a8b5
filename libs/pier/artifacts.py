"""Where sources, environments and images live: the layout the api, builder and runtimes share.

    artifacts/sources/<digest>.tar.gz     uploaded source tarballs, content-addressed
    artifacts/envs/<env hash>/            Python virtual environments, keyed by the hash of their inputs
    artifacts/images/<image digest>/      immutable images: code/, runtime/ (the harness), image.json

An image or environment is assembled in a temporary folder beside its final place, its marker
(image.json, .pier-env.json) written last, then renamed into place: the rename is the commit, so
a reader never sees half an image, and a final folder without its marker is crash debris.
"""

from __future__ import annotations

import hashlib
import os
import re
import tempfile
from collections.abc import Iterable
from pathlib import Path

import msgspec

from pier.spec import Entrypoint


class ImageManifest(msgspec.Struct, kw_only=True):
    digest: str
    code_digest: str
    env_hash: str
    python: str  # the interpreter instances run, inside the environment
    entrypoint: Entrypoint
    packages: list[str] = msgspec.field(default_factory=list)


DIGEST_RE = re.compile(r"^[0-9a-f]{64}$")


def checked_digest(digest: str) -> str:
    """`digest` when it is a sha256 in lower-case hex; ValueError otherwise, so that no caller's
    text (`../x`) ever becomes a path under the store."""
    if not DIGEST_RE.match(digest):
        raise ValueError(f"{digest!r} is not a sha256 digest (64 lower-case hex digits)")
    return digest


_CHUNK = 1 << 20


def image_digest(code_digest: str, env_hash: str, entrypoint: Entrypoint) -> str:
    """An image's name: its code's tree digest, its environment's hash and its entrypoint."""
    return hashlib.sha256((code_digest + env_hash).encode() + msgspec.json.encode(entrypoint)).hexdigest()


def tree_digest(root: Path) -> str:
    """sha256 over the sorted (relative path, content) of every file and link under `root`.

    Blocking: call it in a thread. A link contributes its target, so the digest never depends
    on what lies outside the tree.
    """
    entries = sorted(_walk(root), key=lambda p: p.relative_to(root).as_posix())
    digest = hashlib.sha256()
    for path in entries:
        rel = path.relative_to(root).as_posix()
        if path.is_symlink():
            content = hashlib.sha256(b"link:" + str(path.readlink()).encode()).digest()
        else:
            content = _file_digest(path)
        digest.update(rel.encode() + b"\0" + content)
    return digest.hexdigest()


def _walk(root: Path) -> Iterable[Path]:
    for folder, dirs, files in os.walk(root):
        base = Path(folder)
        yield from (base / name for name in files)
        # os.walk does not descend into linked folders; they still count, as links.
        yield from (base / name for name in dirs if (base / name).is_symlink())


def _file_digest(path: Path) -> bytes:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(_CHUNK):
            digest.update(chunk)
    return digest.digest()


class Store:
    def __init__(self, root: Path) -> None:
        self.root = root

    def source(self, digest: str) -> Path:
        return self.root / "sources" / f"{checked_digest(digest)}.tar.gz"

    def env(self, env_hash: str) -> Path:
        return self.root / "envs" / env_hash

    def image(self, digest: str) -> Path:
        return self.root / "images" / digest

    def manifest(self, digest: str) -> ImageManifest | None:
        path = self.image(digest) / "image.json"
        if not path.exists():
            return None
        return msgspec.json.decode(path.read_bytes(), type=ImageManifest)

    def put_source(self, data: bytes) -> str:
        """Store a source tarball under its digest (once, however often it is uploaded)."""
        digest = hashlib.sha256(data).hexdigest()
        path = self.source(digest)
        if not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_suffix(f".{digest[:8]}.part")
            tmp.write_bytes(data)
            tmp.rename(path)
        return digest

    def spool(self) -> Path:
        """A new empty file for an upload in transit, on the store's file system (so that
        adopt_source is a rename), outside sources/ (so that a refused upload never shows there)."""
        folder = self.root / "incoming"
        folder.mkdir(parents=True, exist_ok=True)
        fd, name = tempfile.mkstemp(dir=folder, suffix=".part")
        os.close(fd)
        return Path(name)

    def adopt_source(self, spooled: Path, digest: str) -> None:
        """Move a checked upload (whose sha256 is `digest`) into place; a copy already there wins."""
        path = self.source(digest)
        path.parent.mkdir(parents=True, exist_ok=True)
        if not path.exists():
            spooled.rename(path)
