"""Shell completion: the scripts `pier completion bash|zsh` print, and the completer answering a
shell's request as bash's `complete -F` makes it (argcomplete's COMP_LINE protocol)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest


def _complete(tmp_path: Path, line: str, shell: str = "bash") -> list[str]:
    answer = tmp_path / "completions"
    env = {
        **os.environ,
        "_ARGCOMPLETE": "1",
        "_ARGCOMPLETE_SHELL": shell,
        "_ARGCOMPLETE_IFS": "\n",
        "_ARGCOMPLETE_STDOUT_FILENAME": str(answer),
        "COMP_LINE": line,
        "COMP_POINT": str(len(line)),
    }
    done = subprocess.run([sys.executable, "-m", "pier"], env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    return answer.read_text().split("\n")


def test_a_partial_command_completes_to_the_subcommands_it_may_be(tmp_path: Path) -> None:
    assert set(_complete(tmp_path, "pier to")) == {"tokens "}
    assert {"create", "list", "revoke"} <= set(_complete(tmp_path, "pier tokens "))
    assert {"settings", "schedules", "sources", "show", "stop"} <= {c.strip() for c in _complete(tmp_path, "pier s")}


def test_flags_complete_too(tmp_path: Path) -> None:
    assert "--restart-window" in _complete(tmp_path, "pier settings hello --rest")


@pytest.mark.parametrize(("shell", "marker"), [("bash", "complete "), ("zsh", "compdef")])
def test_completion_prints_the_script_of_the_shell(shell: str, marker: str) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "pier", "completion", shell], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    assert marker in done.stdout and "pier" in done.stdout
