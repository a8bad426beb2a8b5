"""Unpacking sources: unsafe tar members are refused by name, `.modelignore` leaves files out."""

from __future__ import annotations

import io
import tarfile
from pathlib import Path

import pytest

from pier.tarballs import Limits, member_problem
from services.builder import sources
from services.builder.sources import SourceError, extract, tree_digest


def _member(name: str, kind: bytes = tarfile.REGTYPE, link: str = "") -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.linkname = link
    return info


def _tarball(path: Path, members: list[tuple[tarfile.TarInfo, bytes]]) -> Path:
    with tarfile.open(path, "w:gz") as tar:
        for info, data in members:
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


def _limits(max_unpacked: int) -> Limits:
    return Limits(max_unpacked=max_unpacked, max_entries=1000, max_header=64 * 1024)


def _files(path: Path, files: dict[str, str]) -> Path:
    return _tarball(path, [(_member(name), text.encode()) for name, text in files.items()])


@pytest.mark.parametrize(
    ("member", "named"),
    [
        (_member("/etc/passwd"), "absolute path"),
        (_member("../evil"), ".."),
        (_member("a/../../evil"), ".."),
        (_member("dev", tarfile.CHRTYPE), "device"),
        (_member("disk", tarfile.BLKTYPE), "device"),
        (_member("pipe", tarfile.FIFOTYPE), "FIFO"),
        (_member("link", tarfile.SYMTYPE, "/etc/passwd"), "absolute path"),
        (_member("a/link", tarfile.SYMTYPE, "../../outside"), "links outside"),
        (_member("hard", tarfile.LNKTYPE, "../outside"), "hard link"),
        (_member("hard", tarfile.LNKTYPE, "pkg/model.py"), "hard link"),
    ],
)
def test_unsafe_members_are_refused_by_name(member: tarfile.TarInfo, named: str) -> None:
    problem = member_problem(member)
    assert problem is not None
    assert repr(member.name) in problem
    assert named in problem


@pytest.mark.parametrize(
    "member",
    [
        _member("predict.py"),
        _member("./pkg/model.py"),
        _member("pkg", tarfile.DIRTYPE),
        _member("a/link", tarfile.SYMTYPE, "../b/file"),
        _member("a/self", tarfile.SYMTYPE, "."),
        _member("name..with..dots.py"),
    ],
)
def test_ordinary_members_pass(member: tarfile.TarInfo) -> None:
    assert member_problem(member) is None


def test_ignore_patterns_follow_gitignore_syntax() -> None:
    spec = sources.ignore_spec(["# data stays home", "data/", "*.csv", "!keep.csv", "/top.txt", ""])
    ignored = {p for p in ["data/x.bin", "a/data/y", "x.csv", "keep.csv", "top.txt", "sub/top.txt", "m.py"]}
    assert {p for p in ignored if sources.is_ignored(spec, p)} == {"data/x.bin", "a/data/y", "x.csv", "top.txt"}


def test_the_ignore_file_itself_is_never_ignored() -> None:
    assert not sources.is_ignored(sources.ignore_spec(["*"]), sources.IGNORE_FILE)


def test_extract_leaves_out_ignored_files_and_counts_them(tmp_path: Path) -> None:
    tarball = _files(
        tmp_path / "s.tar.gz",
        {"./predict.py": "x = 1\n", "data/big.bin": "0" * 1000, "notes.txt": "hi", ".modelignore": "data/\n*.txt\n"},
    )
    out = tmp_path / "out"
    out.mkdir()
    result = extract(tarball, out, limits=_limits(10**6))
    assert sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file()) == [
        ".modelignore",
        "predict.py",
    ]
    assert (result.excluded_files, result.excluded_size) == (2, 1002)


def test_extract_refuses_the_whole_source_for_one_bad_entry(tmp_path: Path) -> None:
    tarball = _tarball(tmp_path / "s.tar.gz", [(_member("ok.py"), b"x"), (_member("../evil"), b"boom")])
    out = tmp_path / "out"
    out.mkdir()
    with pytest.raises(SourceError, match=r"'\.\./evil'"):
        extract(tarball, out, limits=_limits(10**6))
    assert list(out.iterdir()) == []
    assert not (tmp_path / "evil").exists()


def test_extract_reports_a_file_that_is_not_a_tarball(tmp_path: Path) -> None:
    bogus = tmp_path / "s.tar.gz"
    bogus.write_bytes(b"this is not gzip")
    with pytest.raises(SourceError, match="not a readable"):
        extract(bogus, tmp_path, limits=_limits(10**6))


def test_extract_refuses_a_source_over_the_size_limit(tmp_path: Path) -> None:
    tarball = _files(tmp_path / "s.tar.gz", {"big.bin": "0" * 2000})
    with pytest.raises(SourceError, match="over the limit"):
        extract(tarball, tmp_path, limits=_limits(1000))


def test_tree_digest_depends_on_paths_and_contents_only(tmp_path: Path) -> None:
    def tree(name: str, files: dict[str, str]) -> Path:
        root = tmp_path / name
        for rel, text in files.items():
            (root / rel).parent.mkdir(parents=True, exist_ok=True)
            (root / rel).write_text(text)
        return root

    a = tree("a", {"p.py": "1", "m/x.py": "2"})
    same = tree("b", {"m/x.py": "2", "p.py": "1"})
    moved = tree("c", {"p.py": "1", "n/x.py": "2"})
    edited = tree("d", {"p.py": "1", "m/x.py": "3"})
    assert tree_digest(a) == tree_digest(same)
    assert len({tree_digest(a), tree_digest(moved), tree_digest(edited)}) == 3
