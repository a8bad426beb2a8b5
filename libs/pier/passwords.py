"""Passwords and tokens kept in files (PIER_NATS_PASSWORD_FILE, PIER_DATABASE_PASSWORD_FILE,
PIER_ADMIN_TOKEN_FILE) rather than in a process's environment, where any process of the same OS user could read them."""

from __future__ import annotations

from pathlib import Path


def read(path: str) -> str | None:
    """The password kept in `path`; None when no file is set, so the URL's own password, if any, is used."""
    if not path:
        return None
    try:
        return Path(path).read_text().strip()
    except OSError as exc:
        raise SystemExit(f"cannot read the password file {path}: {exc.strerror}") from None
