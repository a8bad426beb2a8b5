"""Git source checks and the credential store, shared by the api (which refuses a bad URL or ref
with a 400 before anything is queued) and the builder (which checks again before git runs).

A credential is kept in the artifact store, readable by the platform's user only: no command or
event ever carries a secret, so the builder reads it there by name.
"""

from __future__ import annotations

import os
import re
import tempfile
from pathlib import Path
from urllib.parse import urlsplit

import msgspec

# scp-like ssh addresses: user@host:path
_SCP_RE = re.compile(r"^[A-Za-z0-9._-]+@[A-Za-z0-9.-]+:")


class Credential(msgspec.Struct, kw_only=True):
    """A registered git credential: an https token or an ssh deploy key (one of them)."""

    name: str
    token: str | None = None
    username: str = "x-access-token"
    ssh_key: str | None = None


def parse_schemes(setting: str) -> list[str]:
    """`Settings.git_schemes` ("https,ssh") as a list of lower-case schemes."""
    return [s.strip().lower() for s in setting.split(",") if s.strip()]


def scheme_of(url: str) -> str:
    if _SCP_RE.match(url) and "://" not in url:
        return "ssh"
    return urlsplit(url).scheme.lower()


def url_problem(url: str, schemes: list[str]) -> str | None:
    """Why this URL is refused, or None."""
    if not url or url.startswith("-"):
        return "must not be empty or start with '-'"
    if any(c.isspace() or ord(c) < 32 for c in url):
        return "must not contain spaces or control characters"
    scheme = scheme_of(url)
    if scheme not in schemes:
        return f"scheme {scheme or '(none)'!r} is not allowed; allowed: {', '.join(schemes)}"
    if urlsplit(url).password:
        return "must not embed a password; register a credential and name it instead"
    return None


def ref_problem(ref: str) -> str | None:
    """Why this ref is refused, or None. A leading '-' could be read by git as an option."""
    if not ref or ref.startswith("-"):
        return "must not be empty or start with '-'"
    if any(c.isspace() or ord(c) < 32 for c in ref) or ".." in ref or ref.endswith((".lock", "/")):
        return "is not a valid git ref"
    return None


def credentials_dir(artifacts: Path) -> Path:
    return artifacts / "credentials"


def save_credential(artifacts: Path, credential: Credential) -> None:
    """Blocking. Written readable by this user only, replaced atomically."""
    folder = credentials_dir(artifacts)
    folder.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=".tmp-")
    with os.fdopen(fd, "wb") as handle:
        handle.write(msgspec.json.encode(credential))
    os.replace(tmp, folder / f"{credential.name}.json")


def load_credential(artifacts: Path, name: str) -> Credential | None:
    try:
        return msgspec.json.decode((credentials_dir(artifacts) / f"{name}.json").read_bytes(), type=Credential)
    except FileNotFoundError:
        return None


def credential_names(artifacts: Path) -> list[str]:
    folder = credentials_dir(artifacts)
    return sorted(p.stem for p in folder.glob("*.json")) if folder.is_dir() else []
