"""Placing finished folders into the store: whole or not at all, and the first complete one wins."""

from __future__ import annotations

import os
import time
from pathlib import Path

from services.builder.atomic import rename_into_place, sweep, temp_beside

MARKER = "done"


def _finished(path: Path, content: str) -> Path:
    path.mkdir(parents=True)
    (path / "data").write_text(content)
    (path / MARKER).write_text("")
    return path


def test_a_finished_folder_is_renamed_into_place(tmp_path: Path) -> None:
    final = tmp_path / "abc"
    tmp = _finished(temp_beside(final, "abc"), "ours")
    assert rename_into_place(tmp, final, MARKER)
    assert (final / "data").read_text() == "ours"
    assert not tmp.exists()


def test_the_loser_of_a_race_keeps_the_winners_folder(tmp_path: Path) -> None:
    final = _finished(tmp_path / "abc", "theirs")
    tmp = _finished(temp_beside(final, "abc"), "ours")
    assert not rename_into_place(tmp, final, MARKER)
    assert (final / "data").read_text() == "theirs"


def test_a_folder_without_its_marker_is_replaced(tmp_path: Path) -> None:
    final = tmp_path / "abc"
    final.mkdir()
    (final / "half").write_text("interrupted")
    tmp = _finished(temp_beside(final, "abc"), "ours")
    assert rename_into_place(tmp, final, MARKER)
    assert sorted(p.name for p in final.iterdir()) == ["data", MARKER]
    assert [p.name for p in tmp_path.iterdir()] == ["abc"]


def test_sweep_removes_only_old_work_folders(tmp_path: Path) -> None:
    old = temp_beside(tmp_path / "x", "old")
    old.mkdir()
    long_ago = time.time() - 7200
    os.utime(old, (long_ago, long_ago))
    fresh = temp_beside(tmp_path / "x", "fresh")
    fresh.mkdir()
    done = tmp_path / "finished"
    done.mkdir()
    os.utime(done, (long_ago, long_ago))
    assert sweep(tmp_path, older_than=3600) == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([fresh.name, "finished"])
