"""The source tarball reader (pier.tarballs, which the api checks uploads with) and the builder's
extraction (services/builder/sources.py) on any archive: hostile entries (absolute and `..` paths,
links through links, hard links, devices, FIFOs) and corrupted bytes. Each either passes or is
refused with the documented error (UnsafeSource or TooBig; SourceError from extraction), and no
file, folder or link ever lands outside the target, or points out of it."""

from __future__ import annotations

import gzip
import io
import os
import tarfile
import tempfile
from pathlib import Path

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from pier import tarballs
from services.builder.sources import SourceError, extract
from tests.tarball_attacks import entry, link_through_link_escape, tarball

LIMITS = tarballs.Limits(max_unpacked=256 * 1024, max_entries=64, max_header=16 * 1024)

parts = st.sampled_from(["a", "b", "c.py", "..", ".", "", "dd" * 40, "e f", "ü"])
names = st.lists(parts, min_size=1, max_size=5).map("/".join) | st.sampled_from(["/etc/x", "/", "C:x", "./a"])
# Regular files and links most, then every kind the reader must refuse.
_SPECIAL = (tarfile.FIFOTYPE, tarfile.CHRTYPE, tarfile.BLKTYPE, tarfile.CONTTYPE)
kinds = st.sampled_from(
    (tarfile.REGTYPE, tarfile.REGTYPE, tarfile.DIRTYPE, tarfile.SYMTYPE, tarfile.SYMTYPE, tarfile.LNKTYPE, *_SPECIAL)
)
entries = st.builds(
    lambda name, kind, link, data: (
        entry(name, kind, link if kind in (tarfile.SYMTYPE, tarfile.LNKTYPE) else "", data)
        if kind in (tarfile.REGTYPE, tarfile.CONTTYPE)
        else entry(name, kind, link)
    ),
    names,
    kinds,
    names,
    st.binary(max_size=64),
)
archives = st.lists(entries, max_size=8).map(tarball)


def _extract_inside(data: bytes) -> None:
    """Extract `data` into a fresh target and check nothing is outside it, whatever the outcome."""
    with tempfile.TemporaryDirectory() as sandbox:
        root = Path(sandbox)
        upload, target = root / "upload.tar.gz", root / "target"
        upload.write_bytes(data)
        target.mkdir()
        try:
            tarballs.check(io.BytesIO(data), LIMITS)
            checked = True
        except (tarballs.UnsafeSource, tarballs.TooBig):
            checked = False
        try:
            extract(upload, target, LIMITS)
            extracted = True
        except SourceError:
            extracted = False
        # The api refuses what the builder would refuse: one reader, the same verdict.
        assert extracted == checked
        assert sorted(p.name for p in root.iterdir()) == ["target", "upload.tar.gz"]
        real_target = os.path.realpath(target)
        for folder, dirs, files in os.walk(target):
            for name in dirs + files:
                path = os.path.join(folder, name)
                resolved = os.path.realpath(path)
                assert resolved == real_target or resolved.startswith(real_target + os.sep), (path, resolved)


@given(data=archives)
@example(data=link_through_link_escape())
@example(
    data=tarball([entry("a", tarfile.SYMTYPE, "."), entry("a/b", tarfile.SYMTYPE, ".."), entry("a/b/x", data=b"x")])
)
@example(data=tarball([entry("l", tarfile.SYMTYPE, "../.."), entry("l/x", data=b"x")]))
@example(data=tarball([entry("h", tarfile.LNKTYPE, "/etc/passwd")]))
# Found here: an entry under a file, or a file and a folder at one path, failed the build midway
# with NotADirectoryError / IsADirectoryError instead of being refused as the source's fault.
@example(data=tarball([entry("a", data=b"x"), entry("a/a", data=b"y")]))
@example(data=tarball([entry("a", data=b"x"), entry("a", tarfile.DIRTYPE)]))
@example(data=tarball([entry("a/b", data=b"x"), entry("a", data=b"y")]))
def test_hostile_archives_are_refused_or_stay_inside_the_target(data: bytes) -> None:
    _extract_inside(data)


def test_an_entry_under_a_file_is_refused_naming_it() -> None:
    with pytest.raises(tarballs.UnsafeSource, match="entry 'a/b' is under 'a', which an earlier entry made a file"):
        tarballs.check(io.BytesIO(tarball([entry("a", data=b"x"), entry("a/b", data=b"y")])), LIMITS)
    with pytest.raises(tarballs.UnsafeSource, match=r"entry '\./a' is a file where an earlier entry is a folder"):
        tarballs.check(io.BytesIO(tarball([entry("a/b", data=b"x"), entry("./a", data=b"y")])), LIMITS)


def _plain_tar() -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for info, data in [entry("predict.py", data=b"def predict():\n    return 1\n"), entry("lib", tarfile.DIRTYPE)]:
            info.pax_headers = {"comment": "x" * 20}
            tar.addfile(info, io.BytesIO(data) if data else None)
        info, data = entry("lib/util.py", data=b"X = 1\n")
        tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


PLAIN = _plain_tar()


@st.composite
def corrupted(draw: st.DrawFn) -> bytes:
    """A good archive with bytes changed, cut or inserted, before gzip (so tar's parser meets them)
    or after (so gzip's does)."""
    data = bytearray(PLAIN)
    for _ in range(draw(st.integers(1, 6))):
        at = draw(st.integers(0, len(data) - 1))
        how = draw(st.sampled_from(["set", "cut", "insert"]))
        if how == "set":
            data[at] = draw(st.integers(0, 255))
        elif how == "cut":
            del data[at:]
            if not data:
                break
        else:
            data[at:at] = draw(st.binary(min_size=1, max_size=16))
    packed = gzip.compress(bytes(data), compresslevel=1)
    if draw(st.booleans()):
        return packed
    raw = bytearray(packed)
    at = draw(st.integers(0, len(raw) - 1))
    raw[at] ^= draw(st.integers(1, 255))
    return bytes(raw)


@given(data=corrupted() | st.binary(max_size=256))
def test_corrupted_archives_are_refused_with_the_documented_error(data: bytes) -> None:
    _extract_inside(data)
