"""docs/events.md's schema section is generated from the Structs in pier.events, so it cannot drift."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from pier import events

DOC = Path(__file__).parents[2] / "docs" / "events.md"


def test_docs_events_md_matches_the_structs() -> None:
    committed = DOC.read_text()
    assert events.splice(committed, events.markdown()) == committed, (
        "docs/events.md is out of date: run `python -m pier.events --write docs/events.md`"
    )
    assert "### AuditEvent" in committed and "| recovered | bool |" in committed


def test_the_generator_runs_as_a_command() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "pier.events", "--markdown"], capture_output=True, text=True, check=True
    )
    assert done.stdout == events.markdown()


def test_splice_keeps_the_hand_written_parts() -> None:
    doc = f"# Title\n\nintro\n\n{events.DOC_BEGIN}\nSTALE SECTION\n{events.DOC_END}\n\n## After\n\nmore\n"
    spliced = events.splice(doc, events.markdown())
    assert spliced.startswith("# Title\n\nintro\n\n") and spliced.endswith("## After\n\nmore\n")
    assert "STALE SECTION" not in spliced
