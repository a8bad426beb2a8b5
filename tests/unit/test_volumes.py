"""The path rules of volumes (pier.volumes) and the local driver's mount command, without a platform."""

from __future__ import annotations

import argparse

import pytest

from pier.cli.deploy import volume
from pier.volumes import Volume, parse_roots, path_problem, under
from services.scheduler.runtimes import mounts
from services.scheduler.runtimes.mounts import wrap


@pytest.mark.parametrize(
    ("path", "problem"),
    [
        ("/data", None),
        ("/", None),
        ("data", "is not an absolute path"),
        ("/data/../etc", "contains '..'"),
        ("/data/", "is not in its plain form (write '/data')"),
        ("//data", "is not in its plain form (write '/data')"),
        ("/data/./x", "is not in its plain form (write '/data/x')"),
    ],
)
def test_path_problem_names_what_is_wrong(path: str, problem: str | None) -> None:
    assert path_problem(path) == problem


def test_under_takes_whole_components() -> None:
    roots = parse_roots(" /srv/data/ , /mnt/models")
    assert roots == ["/srv/data", "/mnt/models"]
    assert under("/srv/data", roots) and under("/srv/data/x/y", roots) and under("/mnt/models/a", roots)
    assert not under("/srv/data2", roots) and not under("/srv", roots)
    assert not under("/srv/data", parse_roots(""))
    with pytest.raises(ValueError, match="'srv' is not an absolute path"):
        parse_roots("srv")


def test_the_mount_command_passes_paths_as_arguments_and_drops_to_the_uid() -> None:
    argv = wrap(
        ["python", "-m", "pier.harness"],
        (Volume(name="a", host_path="/srv/a", mount_path="/a b", read_only=True),),
        1234,
    )
    assert argv[:5] == ["unshare", "--mount", "--propagation", "private", "--"]
    script = argv[7]
    assert "/srv/a" not in script and "/a b" not in script
    assert 'mount -o remount,bind,ro "${2}"' in script
    assert argv[8:] == [
        "pier-volumes",
        "/srv/a",
        "/a b",
        "setpriv",
        "--reuid=1234",
        "--regid=1234",
        "--clear-groups",
        "--",
        "python",
        "-m",
        "pier.harness",
    ]


def test_the_cli_volume_flag() -> None:
    assert volume("data:/srv/data:/data:ro") == {
        "name": "data",
        "host_path": "/srv/data",
        "mount_path": "/data",
        "read_only": True,
    }
    assert volume("data:/srv/data:/data")["read_only"] is False
    for bad in ("data:/srv/data", "data:/srv/data:/data:rw", "::/data"):
        with pytest.raises(argparse.ArgumentTypeError, match="NAME:HOST_PATH:MOUNT_PATH"):
            volume(bad)


def test_the_local_driver_says_why_it_cannot_mount(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(mounts.os, "geteuid", lambda: 1000)
    assert mounts.refused() == "the local runtime mounts volumes only as root (the scheduler runs as uid 1000)"
    monkeypatch.setattr(mounts.os, "geteuid", lambda: 0)
    monkeypatch.setattr(mounts.shutil, "which", lambda tool: None if tool == "setpriv" else f"/usr/bin/{tool}")
    assert mounts.refused() == "util-linux's setpriv not found on the scheduler's PATH"
