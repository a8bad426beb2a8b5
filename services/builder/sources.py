"""Unpacking a source tarball safely, and `.modelignore`.

Every member is checked before anything is written: one bad entry rejects the whole source,
naming the entry, rather than extracting the rest and hoping. Ignored members are never
extracted, so a large excluded data set costs no disk.
"""

from __future__ import annotations

import errno
import gzip
import hashlib
import io
import os
import tarfile
import zlib
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import pathspec

from pier.tarballs import member_problem, normalize
from services.builder.errors import BuildError

IGNORE_FILE = ".modelignore"
_CHUNK = 1 << 20


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


def extract(tarball: Path, dest: Path, max_size: int, *, apply_ignore: bool = True) -> Extracted:
    """Unpack `tarball` into `dest` (which must exist), leaving out what `.modelignore` names
    (unless `apply_ignore` is False: a scheduled run works on the whole source).

    Blocking: call it in a thread. Raises SourceError for anything that is the source's fault.
    """
    if not tarball.is_file():
        raise SourceError(f"source {tarball.name} is not in the artifact store")
    try:
        with tarfile.open(tarball, mode="r:gz") as tar:
            members = tar.getmembers()
            kept, excluded = _select(tar, members, max_size, apply_ignore)
            for member in kept:
                member.name = normalize(member.name)
                try:
                    # The data filter is a second line of defence behind member_problem().
                    tar.extract(member, dest, filter="data")
                except tarfile.FilterError as exc:
                    raise SourceError(f"entry {member.name!r} is unsafe: {exc}") from None
                except OSError as exc:
                    # Only what the entry itself causes is the source's fault; a full disk is ours.
                    if exc.errno not in (errno.ENAMETOOLONG, errno.EILSEQ):
                        raise
                    raise SourceError(f"entry {member.name!r} cannot be unpacked: {exc.strerror}") from None
    except (tarfile.ReadError, tarfile.CompressionError, EOFError, zlib.error) as exc:
        raise SourceError(f"the source is not a readable .tar.gz archive ({exc})") from None
    return Extracted(
        files=sum(1 for m in kept if not m.isdir()),
        size=sum(m.size for m in kept if m.isfile()),
        excluded_files=len(excluded),
        excluded_size=sum(m.size for m in excluded),
    )


def _select(
    tar: tarfile.TarFile, members: list[tarfile.TarInfo], max_size: int, apply_ignore: bool = True
) -> tuple[list[tarfile.TarInfo], list[tarfile.TarInfo]]:
    for member in members:
        problem = member_problem(member)
        if problem:
            raise SourceError(problem)
    spec = ignore_spec(_ignore_lines(tar, members) if apply_ignore else [])
    kept: list[tarfile.TarInfo] = []
    excluded: list[tarfile.TarInfo] = []
    for member in members:
        path = normalize(member.name)
        if not path:
            continue
        if member.isdir():
            # Folders are created as their files are extracted; an ignored folder simply gets none.
            if not is_ignored(spec, path + "/"):
                kept.append(member)
        elif is_ignored(spec, path):
            excluded.append(member)
        else:
            kept.append(member)
    size = sum(m.size for m in kept if m.isfile())
    if size > max_size:
        raise SourceError(f"the unpacked source is {size} bytes, over the limit of {max_size}")
    return kept, excluded


def _ignore_lines(tar: tarfile.TarFile, members: list[tarfile.TarInfo]) -> list[str]:
    for member in members:
        if normalize(member.name) == IGNORE_FILE and member.isfile():
            handle = tar.extractfile(member)
            if handle is None:
                return []
            return handle.read().decode("utf-8", errors="replace").splitlines()
    return []


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
