"""Unpacking a source tarball safely, and `.modelignore`.

Every member is checked before anything is written: one bad entry rejects the whole source,
naming the entry, rather than extracting the rest and hoping. Ignored members are never
extracted, so a large excluded data set costs no disk.
"""

from __future__ import annotations

import errno
import gzip
import io
import os
import tarfile
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import pathspec

from pier import tarballs
from pier.artifacts import tree_digest as tree_digest
from pier.tarballs import Limits, normalize
from services.builder.errors import BuildError

IGNORE_FILE = ".modelignore"
_CHUNK = 1 << 20
_MAX_IGNORE_FILE = 1 << 20


class SourceError(BuildError):
    """The source cannot become an image: the message is for the user."""


@dataclass(frozen=True)
class Extracted:
    files: int
    size: int
    excluded_files: int
    excluded_size: int


def ignore_spec(lines: Iterable[str]) -> pathspec.PathSpec:
    # GitIgnoreSpec: gitignore semantics (pathspec deprecated the plain GitWildMatchPattern).
    return pathspec.GitIgnoreSpec.from_lines(list(lines))


def is_ignored(spec: pathspec.PathSpec, path: str) -> bool:
    return path != IGNORE_FILE and spec.match_file(path)


def extract(tarball: Path, dest: Path, limits: Limits, *, apply_ignore: bool = True) -> Extracted:
    """Unpack `tarball` into `dest` (which must exist), leaving out what `.modelignore` names
    (unless `apply_ignore` is False: a scheduled run works on the whole source).

    Two streamed passes: the first checks every member (pier.tarballs) and reads `.modelignore`,
    writing nothing, so one bad entry rejects the whole source; the second extracts what is kept.
    Blocking: call it in a thread. Raises SourceError for anything that is the source's fault.
    """
    if not tarball.is_file():
        raise SourceError(f"source {tarball.name} is not in the artifact store")
    try:
        entries, ignore_lines = _scan(tarball, limits)
        spec = ignore_spec(ignore_lines if apply_ignore else [])
        kept = {path for path, kind, _ in entries if not _left_out(spec, path, kind)}
        size = sum(n for path, kind, n in entries if kind == "file" and path in kept)
        if size > limits.max_unpacked:
            raise SourceError(f"the unpacked source is {size} bytes, over the limit of {limits.max_unpacked}")
        with tarballs.stream(tarball, limits) as (tar, members):
            for member in members:
                if normalize(member.name) in kept:
                    _unpack(tar, member, dest)
    except (tarballs.UnsafeSource, tarballs.TooBig) as exc:
        raise SourceError(str(exc)) from None
    excluded = [(path, n) for path, kind, n in entries if kind != "dir" and path and path not in kept]
    return Extracted(
        files=sum(1 for path, kind, _ in entries if kind != "dir" and path in kept),
        size=size,
        excluded_files=len(excluded),
        excluded_size=sum(n for _, n in excluded),
    )


def _scan(tarball: Path, limits: Limits) -> tuple[list[tuple[str, str, int]], list[str]]:
    """Every member as (path, kind, size) after the checks, and the lines of `.modelignore`."""
    entries: list[tuple[str, str, int]] = []
    ignore_lines: list[str] = []
    with tarballs.stream(tarball, limits) as (tar, members):
        for member in members:
            path = normalize(member.name)
            kind = "dir" if member.isdir() else "file" if member.isfile() else "link"
            entries.append((path, kind, member.size if kind == "file" else 0))
            if path == IGNORE_FILE and kind == "file":
                handle = tar.extractfile(member)
                if handle is not None:
                    # Patterns, not data: a huge file here would only be read into memory.
                    ignore_lines = handle.read(_MAX_IGNORE_FILE).decode("utf-8", errors="replace").splitlines()
    return entries, ignore_lines


def _left_out(spec: pathspec.PathSpec, path: str, kind: str) -> bool:
    if not path:
        return True  # the root itself
    # Folders are created as their files are extracted; an ignored folder simply gets none.
    return is_ignored(spec, path + "/") if kind == "dir" else is_ignored(spec, path)


def _unpack(tar: tarfile.TarFile, member: tarfile.TarInfo, dest: Path) -> None:
    member.name = normalize(member.name)
    try:
        # The data filter is a second line of defence behind pier.tarballs' checks.
        tar.extract(member, dest, filter="data")
    except tarfile.FilterError as exc:
        raise SourceError(f"entry {member.name!r} is unsafe: {exc}") from None
    except OSError as exc:
        # Only what the entry itself causes is the source's fault; a full disk is ours.
        if exc.errno not in (errno.ENAMETOOLONG, errno.EILSEQ):
            raise
        raise SourceError(f"entry {member.name!r} cannot be unpacked: {exc.strerror}") from None


def pack(root: Path) -> bytes:
    """`root` as a gzip'd tarball with sorted entries and no owners or times, so the same tree
    packs to the same bytes (and so the same digest). Blocking."""
    buffer = io.BytesIO()

    def plain(info: tarfile.TarInfo) -> tarfile.TarInfo:
        info.uid = info.gid = 0
        info.uname = info.gname = ""
        info.mtime = 0
        return info

    with gzip.GzipFile(fileobj=buffer, mode="wb", mtime=0) as gz, tarfile.open(fileobj=gz, mode="w") as tar:
        for path in sorted(_walk_all(root), key=lambda p: p.relative_to(root).as_posix()):
            tar.add(path, arcname=path.relative_to(root).as_posix(), recursive=False, filter=plain)
    return buffer.getvalue()


def _walk_all(root: Path) -> Iterable[Path]:
    for folder, dirs, files in os.walk(root):
        base = Path(folder)
        yield from (base / name for name in dirs)
        yield from (base / name for name in files)
