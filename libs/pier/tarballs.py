"""What makes a source tarball entry unsafe, shared by the api (which refuses such an upload with a
400 naming the entry, storing nothing) and the builder (which checks again before extracting)."""

from __future__ import annotations

import io
import posixpath
import tarfile
import zlib


class UnsafeSource(ValueError):
    """The upload cannot be a source; the message names the entry at fault."""


class TooBig(ValueError):
    """The unpacked tree would be over the limit."""


def normalize(name: str) -> str:
    """A member name as a clean relative path ('./a//b' -> 'a/b'); '' for the root itself."""
    parts = [p for p in name.split("/") if p not in ("", ".")]
    return "/".join(parts)


def member_problem(member: tarfile.TarInfo) -> str | None:
    """Why this member must not be extracted, or None when it is safe."""
    name = member.name
    if name.startswith("/") or (len(name) > 1 and name[1] == ":"):
        return f"entry {name!r} has an absolute path"
    if ".." in name.split("/"):
        return f"entry {name!r} points outside the source (..)"
    if member.isfifo():  # before isdev(), which counts FIFOs as devices too
        return f"entry {name!r} is a FIFO"
    if member.isdev():
        return f"entry {name!r} is a device file"
    if member.issym() or member.islnk():
        target = member.linkname
        if target.startswith("/"):
            return f"entry {name!r} links to an absolute path {target!r}"
        # Symlinks resolve from the link's own folder, hard links from the archive root.
        base = posixpath.dirname(normalize(name)) if member.issym() else ""
        resolved = posixpath.normpath(posixpath.join(base, target))
        if resolved == ".." or resolved.startswith("../"):
            return f"entry {name!r} links outside the source ({target!r})"
    elif not (member.isfile() or member.isdir()):
        return f"entry {name!r} is not a regular file, folder or link"
    return None


def check(data: bytes, max_unpacked: int) -> None:
    """Raise UnsafeSource (naming the entry) or TooBig unless `data` is a .tar.gz whose every entry
    is safe and whose files add up to at most `max_unpacked` bytes. Streams: nothing is written,
    and a decompression bomb stops at the limit. Blocking."""
    total = 0
    try:
        with tarfile.open(fileobj=io.BytesIO(data), mode="r|gz") as tar:
            for member in tar:
                problem = member_problem(member)
                if problem:
                    raise UnsafeSource(problem)
                total += member.size if member.isfile() else 0
                if total > max_unpacked:
                    raise TooBig(f"the unpacked source is over the limit of {max_unpacked} bytes")
    except (tarfile.ReadError, tarfile.CompressionError, EOFError, zlib.error) as exc:
        raise UnsafeSource(f"the source is not a readable .tar.gz archive ({exc})") from None
