"""A folder as the gzip'd tarball `POST /v1/sources` takes."""

from __future__ import annotations

import io
import tarfile
from pathlib import Path


def pack(path: Path) -> bytes:
    """A gzip'd tarball of `path` (without .git); `.modelignore` is applied by the builder."""
    buffer = io.BytesIO()

    def plain(info: tarfile.TarInfo) -> tarfile.TarInfo | None:
        if info.name.split("/")[0] == ".git":
            return None
        if info.islnk():
            # Pier refuses hard links in a source: a file with several names goes as copies.
            info.type, info.linkname, info.size = tarfile.REGTYPE, "", (path / info.name).stat().st_size
        return info

    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        for child in sorted(path.iterdir()):
            tar.add(child, arcname=child.name, filter=plain)
    return buffer.getvalue()
