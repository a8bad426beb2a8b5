"""What makes a source tarball unsafe, shared by the api (which refuses such an upload with a 400
naming the entry, storing nothing) and the builder (which checks again as it extracts).

Members are read as a stream and checked one at a time, so the first violation stops the read:
nothing past it is decompressed, and memory stays bounded by the limits, not by the archive.

Links: hard links are refused (git never stores them and `pier sources push` packs regular files,
so a source never needs one). Symbolic links are kept (repositories have them, `git archive`
emits them) but every path is checked lexically, which is exact only while no path goes through a
link: so no entry may lie under, point at or through, or be replaced by a symlink. That closes the
link-through-link escapes (CVE-2025-4517 and kin) that `filter="data"` misses on Python < 3.11.13.
"""

from __future__ import annotations

import posixpath
import tarfile
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from pier.config import Settings

# Header types whose payload tarfile reads whole into memory before the member it describes.
_EXTENDED = frozenset(
    {tarfile.XHDTYPE, tarfile.XGLTYPE, tarfile.SOLARIS_XHDTYPE, tarfile.GNUTYPE_LONGNAME, tarfile.GNUTYPE_LONGLINK}
)


class UnsafeSource(ValueError):
    """The upload cannot be a source; the message names the entry at fault."""


class TooBig(ValueError):
    """The unpacked tree would be over the limit."""


@dataclass(frozen=True)
class Limits:
    max_unpacked: int  # file bytes plus header bytes
    max_entries: int
    max_header: int  # extended (PAX / GNU long name) header bytes in front of one entry


def normalize(name: str) -> str:
    """A member name as a clean relative path ('./a//b' -> 'a/b'); '' for the root itself."""
    parts = [p for p in name.split("/") if p not in ("", ".")]
    return "/".join(parts)


def member_problem(member: tarfile.TarInfo) -> str | None:
    """Why this member must not be extracted, whatever else is in the archive, or None."""
    name = member.name
    if name.startswith("/") or (len(name) > 1 and name[1] == ":"):
        return f"entry {name!r} has an absolute path"
    if ".." in name.split("/"):
        return f"entry {name!r} points outside the source (..)"
    if member.isfifo():  # before isdev(), which counts FIFOs as devices too
        return f"entry {name!r} is a FIFO"
    if member.isdev():
        return f"entry {name!r} is a device file"
    if member.islnk():
        return f"entry {name!r} is a hard link; sources may hold symbolic links only"
    if member.sparse is not None or member.type == tarfile.GNUTYPE_SPARSE:
        return f"entry {name!r} is a sparse file"
    if member.issym():
        target = member.linkname
        if target.startswith("/"):
            return f"entry {name!r} links to an absolute path {target!r}"
        resolved = link_target(member)
        if resolved == ".." or resolved.startswith("../"):
            return f"entry {name!r} links outside the source ({target!r})"
    elif not (member.isfile() or member.isdir()):
        return f"entry {name!r} is not a regular file, folder or link"
    return None


def link_target(member: tarfile.TarInfo) -> str:
    """Where a symlink points, relative to the archive root, read lexically ('' for the root)."""
    resolved = posixpath.normpath(posixpath.join(posixpath.dirname(normalize(member.name)), member.linkname))
    return "" if resolved == "." else resolved


def _prefixes(path: str) -> Iterator[str]:
    """'a/b/c' -> 'a', 'a/b', 'a/b/c'."""
    parts = path.split("/") if path else []
    for end in range(1, len(parts) + 1):
        yield "/".join(parts[:end])


@dataclass
class Checker:
    """Checks members in archive order, remembering what the rules about links and limits need."""

    limits: Limits
    entries: int = 0
    unpacked: int = 0
    links: set[str] = field(default_factory=set)
    # Every path an entry or a link target has used, with its folders: a later symlink there
    # would change what an earlier check assumed.
    used: set[str] = field(default_factory=set)
    # Regular files and folders so far: an entry under a file, or a file and a folder at one path,
    # cannot be unpacked (the builder's extraction would fail midway, not as the source's fault).
    files: set[str] = field(default_factory=set)
    folders: set[str] = field(default_factory=set)

    def check(self, member: tarfile.TarInfo) -> None:
        """Raise UnsafeSource or TooBig for the first rule `member` breaks."""
        self.entries += 1
        if self.entries > self.limits.max_entries:
            raise UnsafeSource(f"the source has more than {self.limits.max_entries} entries, the limit")
        problem = member_problem(member)
        if problem:
            raise UnsafeSource(problem)
        path = normalize(member.name)
        for prefix in _prefixes(path):
            if prefix in self.links:
                raise UnsafeSource(f"entry {member.name!r} goes through the symbolic link {prefix!r}")
        if member.issym():
            target = link_target(member)
            for prefix in _prefixes(target):
                if prefix in self.links:
                    raise UnsafeSource(f"entry {member.name!r} links through the symbolic link {prefix!r}")
            if path in self.used:
                raise UnsafeSource(f"entry {member.name!r} is a symbolic link where an earlier entry is")
            self.links.add(path)
            self.used.update(_prefixes(target))
        self.used.update(_prefixes(path))
        self._check_shape(member, path)
        # Header bytes count: 300,000 empty entries cost the reader as much as a large file.
        self.unpacked += member.offset_data - member.offset + (member.size if member.isfile() else 0)
        if self.unpacked > self.limits.max_unpacked:
            raise TooBig(f"the unpacked source is over the limit of {self.limits.max_unpacked} bytes")

    def _check_shape(self, member: tarfile.TarInfo, path: str) -> None:
        above = list(_prefixes(path))[:-1]
        for prefix in above:
            if prefix in self.files:
                raise UnsafeSource(f"entry {member.name!r} is under {prefix!r}, which an earlier entry made a file")
        if member.isdir() and path in self.files:
            raise UnsafeSource(f"entry {member.name!r} is a folder where an earlier entry is a file")
        if member.isfile() and path in self.folders:
            raise UnsafeSource(f"entry {member.name!r} is a file where an earlier entry is a folder")
        self.folders.update(above)
        if member.isdir():
            self.folders.add(path)
        elif member.isfile():
            self.files.add(path)


class _Reader(tarfile.TarFile):
    """A TarFile that refuses oversized extended headers before reading them into memory."""

    max_header = 0
    header_run = 0  # extended header bytes read since the last entry


class _Member(tarfile.TarInfo):
    # tarfile has no hook before it reads an extended header whole (a 256 MB PAX header costs
    # 256 MB and more); _proc_member is where it dispatches on the header type (Python 3.8-3.14).
    def _proc_member(self, tarfile_: tarfile.TarFile) -> tarfile.TarInfo:
        assert isinstance(tarfile_, _Reader)
        if self.type in _EXTENDED:
            tarfile_.header_run += tarfile.BLOCKSIZE + self.size
            if tarfile_.header_run > tarfile_.max_header:
                raise UnsafeSource(
                    f"an extended (PAX or long name) header of over {tarfile_.max_header} bytes"
                    f" at offset {self.offset}; the limit is {tarfile_.max_header}"
                )
        elif self.type == tarfile.GNUTYPE_SPARSE:
            raise UnsafeSource(f"entry {self.name!r} is a sparse file")
        else:
            tarfile_.header_run = 0
        member: tarfile.TarInfo = super()._proc_member(tarfile_)  # type: ignore[misc]
        return member


@contextmanager
def stream(source: Path | IO[bytes], limits: Limits) -> Iterator[tuple[tarfile.TarFile, Iterator[tarfile.TarInfo]]]:
    """A .tar.gz's TarFile and its members in order, each checked before it is yielded: UnsafeSource
    or TooBig at the first violation, UnsafeSource for anything that is not a readable .tar.gz.
    The TarFile's extractfile/extract work on the member just yielded (it is read as a stream)."""
    opened: dict[str, Any] = {"name": source} if isinstance(source, Path) else {"fileobj": source}
    try:
        # A class per call: TarFile reads the first header while it opens, before any setter could run.
        reader: type[_Reader] = type("_Reader", (_Reader,), {"max_header": limits.max_header})
        with reader.open(mode="r|gz", tarinfo=_Member, **opened) as tar:
            checker = Checker(limits)

            def members() -> Iterator[tarfile.TarInfo]:
                for member in tar:
                    checker.check(member)
                    yield member

            yield tar, members()
    except (tarfile.ReadError, tarfile.CompressionError, EOFError, zlib.error) as exc:
        raise UnsafeSource(f"the source is not a readable .tar.gz archive ({exc})") from None


def check(source: Path | IO[bytes], limits: Limits) -> None:
    """Raise UnsafeSource (naming the entry) or TooBig unless `source` is a .tar.gz that breaks no
    rule. Nothing is written. Blocking."""
    with stream(source, limits) as (_, members):
        for _ in members:
            pass


def source_limits(settings: Settings) -> Limits:
    return Limits(
        max_unpacked=settings.max_source_bytes,
        max_entries=settings.max_source_entries,
        max_header=settings.max_source_header_bytes,
    )
