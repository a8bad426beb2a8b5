"""The passwords `make up` generates, one file each (0600) in PIER_HOME/secrets (0700).

PostgreSQL's superuser has one; on NATS every service is a user of its own, and so is the
supervisor (which only asks for health). Services get the *path* of their password file
(PIER_NATS_PASSWORD_FILE, PIER_DATABASE_PASSWORD_FILE), never the password in their environment,
and model API instances get neither (the scheduler starts them with a scrubbed environment).
"""

from __future__ import annotations

import os
import secrets
from pathlib import Path
from typing import Any

from infra.embedded import write_secret
from pier.events import ROUTES_BUCKET, TOKENS_BUCKET

SUPERVISOR = "supervisor"

# The buckets that decide who may call what: only the api writes them. A service other than the
# api that could would be one step from making any model API unrestricted.
_API_ONLY_BUCKETS = (ROUTES_BUCKET, TOKENS_BUCKET)


class Credentials:
    def __init__(self, home: Path) -> None:
        self.dir = home / "secrets"

    def file(self, name: str) -> Path:
        return self.dir / f"{name}.password"

    def password(self, name: str) -> str:
        """The password called `name`, generated and kept on first use."""
        self.dir.mkdir(parents=True, exist_ok=True)
        os.chmod(self.dir, 0o700)
        path = self.file(name)
        if not path.exists():
            write_secret(path, secrets.token_urlsafe(32))
        return path.read_text().strip()

    def postgres(self) -> str:
        return self.password("postgres")

    def nats_users(self, services: tuple[str, ...]) -> dict[str, str]:
        return {user: self.password(f"nats-{user}") for user in (*services, SUPERVISOR)}


def nats_permissions(services: tuple[str, ...]) -> dict[str, dict[str, Any]]:
    """nats-server permissions per user: the supervisor may only ask for health; services other
    than the api may not write, purge or delete the routes and tokens buckets."""
    forbidden = []
    for bucket in _API_ONLY_BUCKETS:
        stream = f"KV_{bucket}"
        forbidden += [
            f"$KV.{bucket}.>",
            f"$JS.API.STREAM.PURGE.{stream}",
            f"$JS.API.STREAM.DELETE.{stream}",
            f"$JS.API.STREAM.UPDATE.{stream}",
            f"$JS.API.STREAM.MSG.DELETE.{stream}",
        ]
    permissions: dict[str, dict[str, Any]] = {
        service: {"publish": {"deny": forbidden}} for service in services if service != "api"
    }
    permissions[SUPERVISOR] = {"publish": {"allow": ["pier.health.>"]}, "subscribe": {"allow": ["_INBOX.>"]}}
    return permissions
