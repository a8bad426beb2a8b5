"""Publishing a finished folder into the artifact store with one rename, so readers see it whole or not at all."""

from __future__ import annotations

import shutil
import time
import uuid
from pathlib import Path

TEMP_PREFIX = ".tmp-"
_JUNK_PREFIX = ".junk-"


def temp_beside(final: Path, label: str) -> Path:
    """A fresh work folder next to `final`: same file system, so the closing rename is atomic."""
    return final.parent / f"{TEMP_PREFIX}{label}-{uuid.uuid4().hex[:8]}"


def rename_into_place(tmp: Path, final: Path, marker: str) -> bool:
    """Move `tmp` (already holding `marker`, its proof of completeness) to `final`.

    Returns False when another builder placed a complete `final` first: theirs is kept, and it
    is as good as ours, since both were built from the same inputs. Blocking.
    """
    if final.exists() and not (final / marker).exists():
        # Nothing of ours is ever at `final` without its marker: this is debris (a copy by hand,
        # an interrupted delete) and cannot be trusted.
        junk = final.with_name(f"{_JUNK_PREFIX}{uuid.uuid4().hex[:8]}")
        try:
            final.rename(junk)
        except FileNotFoundError:
            pass
        else:
            shutil.rmtree(junk, ignore_errors=True)
    try:
        tmp.rename(final)
    except OSError:
        if not (final / marker).exists():
            raise
        return False
    return True


def sweep(folder: Path, older_than: float) -> int:
    """Remove work folders left by builders killed mid-build; returns how many. Blocking.

    Only folders older than any build may run are touched, so a live build elsewhere is safe.
    """
    if not folder.is_dir():
        return 0
    cutoff = time.time() - older_than
    removed = 0
    for path in folder.iterdir():
        if path.name.startswith((TEMP_PREFIX, _JUNK_PREFIX)) and path.lstat().st_mtime < cutoff:
            shutil.rmtree(path, ignore_errors=True)
            removed += 1
    return removed
