"""Malicious source tarballs, built in-process: each is refused with a message naming the problem,
at the first violation, and nothing is written outside the extraction folder."""

from __future__ import annotations

import io
import os
import tarfile
from pathlib import Path

import pytest

from pier import tarballs
from pier.tarballs import Limits
from services.builder.sources import SourceError, extract
from tests.tarball_attacks import entry as _entry
from tests.tarball_attacks import huge_pax_header, link_through_link_escape, many_entries, tarball

LIMITS = Limits(max_unpacked=10**8, max_entries=1000, max_header=64 * 1024)


def _extract(data: bytes, tmp_path: Path, limits: Limits = LIMITS) -> Path:
    (tmp_path / "source.tar.gz").write_bytes(data)
    out = tmp_path / "out"
    out.mkdir()
    extract(tmp_path / "source.tar.gz", out, limits)
    return out


def test_the_link_through_link_escape_is_refused_and_writes_nothing_outside(tmp_path: Path) -> None:
    data = link_through_link_escape()
    assert len(data) < 4096  # a few KB
    with pytest.raises(tarballs.UnsafeSource, match="goes through the symbolic link 'a'"):
        tarballs.check(io.BytesIO(data), LIMITS)
    with pytest.raises(SourceError, match="symbolic link"):
        _extract(data, tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out", "source.tar.gz"]
    assert list((tmp_path / "out").iterdir()) == []  # checked whole before anything is written


@pytest.mark.parametrize(
    ("entries", "problem"),
    [
        ([_entry("lib", tarfile.SYMTYPE, "pkg"), _entry("lib/x.py", data=b"1")], "'lib/x.py' goes through"),
        ([_entry("a", tarfile.SYMTYPE, "."), _entry("a/up", tarfile.SYMTYPE, "..")], "'a/up' goes through"),
        ([_entry("a", tarfile.SYMTYPE, "pkg"), _entry("b", tarfile.SYMTYPE, "a/x")], "'b' links through"),
        ([_entry("a", tarfile.SYMTYPE, "pkg"), _entry("b", tarfile.SYMTYPE, "a")], "'b' links through"),
        ([_entry("b", tarfile.SYMTYPE, "a/x"), _entry("a", tarfile.SYMTYPE, "pkg")], "'a' is a symbolic link where"),
        ([_entry("a/x.py", data=b"1"), _entry("a", tarfile.SYMTYPE, "pkg")], "'a' is a symbolic link where"),
        ([_entry("x", tarfile.SYMTYPE, "pkg/y"), _entry("x", data=b"overwrite")], "'x' goes through"),
        ([_entry("x.py", data=b"1"), _entry("y.py", tarfile.LNKTYPE, "x.py")], "'y.py' is a hard link"),
    ],
    ids=[
        "file-under-link",
        "link-under-link",
        "through",
        "to-link",
        "link-later",
        "folder-later",
        "overwrite",
        "hardlink",
    ],
)
def test_paths_through_links_are_refused_in_either_order(
    entries: list[tuple[tarfile.TarInfo, bytes]], problem: str
) -> None:
    with pytest.raises(tarballs.UnsafeSource, match=problem):
        tarballs.check(io.BytesIO(tarball(entries)), LIMITS)


def test_links_inside_the_tree_that_go_through_no_link_are_kept(tmp_path: Path) -> None:
    data = tarball(
        [
            _entry("pkg/model.py", data=b"X = 1\n"),
            _entry("model.py", tarfile.SYMTYPE, "pkg/model.py"),
            _entry("pkg/self", tarfile.SYMTYPE, "."),
        ]
    )
    out = _extract(data, tmp_path)
    assert (out / "model.py").read_text() == "X = 1\n" and (out / "model.py").is_symlink()


def test_a_huge_pax_header_is_refused_naming_the_header_limit() -> None:
    data = huge_pax_header(16 * 1024 * 1024)
    with pytest.raises(tarballs.UnsafeSource, match=r"extended \(PAX or long name\) header of over 65536 bytes"):
        tarballs.check(io.BytesIO(data), LIMITS)


def test_a_long_gnu_name_is_refused_over_the_header_limit() -> None:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz", format=tarfile.GNU_FORMAT) as tar:
        tar.addfile(_entry("n" * 100_000)[0])
    with pytest.raises(tarballs.UnsafeSource, match="long name"):
        tarballs.check(io.BytesIO(buffer.getvalue()), LIMITS)


def test_entries_over_the_limit_stop_the_read_at_the_limit() -> None:
    data = many_entries(300_000)
    assert len(data) < 2 * 1024 * 1024
    with pytest.raises(tarballs.UnsafeSource, match="more than 1000 entries"):
        tarballs.check(io.BytesIO(data), LIMITS)
    tarballs.check(io.BytesIO(many_entries(1000)), LIMITS)  # at the limit is fine


def test_header_bytes_count_toward_the_unpacked_limit() -> None:
    # 200 empty files hold no data, but 200 headers of 512 bytes are 100 KiB to read.
    with pytest.raises(tarballs.TooBig, match="over the limit of 50000 bytes"):
        tarballs.check(io.BytesIO(many_entries(200)), Limits(max_unpacked=50_000, max_entries=1000, max_header=1024))


def test_a_folder_with_hard_linked_files_packs_to_a_source_that_passes(tmp_path: Path) -> None:
    from pier.client import pack

    (tmp_path / "a.py").write_text("X = 1\n")
    os.link(tmp_path / "a.py", tmp_path / "b.py")
    tarballs.check(io.BytesIO(pack(tmp_path)), LIMITS)
