"""Where the client finds its URLs and API key: `pier login`'s profile, else what `make up` wrote."""

from __future__ import annotations

import json
import os
from pathlib import Path


def credentials_path() -> Path:
    return Path(os.environ.get("PIER_HOME", ".pier")) / "credentials.json"


def profile_path() -> Path:
    """Where `pier login` keeps the signed-in user's key: $XDG_CONFIG_HOME/pier (default ~/.config/pier)."""
    config = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(config) / "pier" / "profile.json"


def save_profile(api_url: str, gateway_url: str, token: str) -> Path:
    """Write the profile readable by its owner only (0600, from its creation on: the key is a secret)."""
    path = profile_path()
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    os.fchmod(fd, 0o600)  # an older file keeps its mode through O_CREAT
    with os.fdopen(fd, "w") as handle:
        json.dump({"api_url": api_url, "gateway_url": gateway_url, "token": token}, handle)
    return path


def saved() -> dict[str, str]:
    """The profile of `pier login`, else the credentials `make up` wrote, else nothing."""
    for path in (profile_path(), credentials_path()):
        if path.exists():
            return dict(json.loads(path.read_text()))
    return {}
