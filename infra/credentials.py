"""The passwords `make up` generates, one file each (0600) in PIER_HOME/secrets (0700).

PostgreSQL's superuser has one, used only by the supervisor; the services connect as a role that
is no superuser (DATABASE_ROLE), with a password of its own. On NATS every service is a user of its
own, and so is the supervisor (which only asks for health). The admin token is kept there too.
Services get the *path* of their secret files (PIER_NATS_PASSWORD_FILE, PIER_DATABASE_PASSWORD_FILE,
PIER_ADMIN_TOKEN_FILE), never a secret in their environment, and model API instances get none (the
scheduler starts them with a scrubbed environment).
"""

from __future__ import annotations

import os
import secrets
from pathlib import Path
from typing import Any

from infra.embedded import write_secret
from pier.events import AUDIT_PREFIX, KEYS_BUCKET, ROUTES_BUCKET, TOKENS_BUCKET

SUPERVISOR = "supervisor"
# The PostgreSQL role the services connect as: it owns the platform's database, and nothing more
# (no superuser, so no `COPY ... PROGRAM`, no reading the server's files, no other roles).
DATABASE_ROLE = "pier"
DATABASE_PASSWORD = f"postgres-{DATABASE_ROLE}"

# The buckets that decide who may call what: only the api writes them. A service other than the
# api that could would be one step from making any model API unrestricted.
_API_ONLY_BUCKETS = (ROUTES_BUCKET, TOKENS_BUCKET, KEYS_BUCKET)


class Credentials:
    def __init__(self, home: Path) -> None:
        self.dir = home / "secrets"

    def file(self, name: str) -> Path:
        return self.dir / f"{name}.password"

    def password(self, name: str) -> str:
        """The password called `name`, generated and kept on first use."""
        self._make_dir()
        path = self.file(name)
        if not path.exists():
            write_secret(path, secrets.token_urlsafe(32))
        return path.read_text().strip()

    def postgres(self) -> str:
        """The superuser's password."""
        return self.password("postgres")

    def database(self) -> str:
        """The services' role's password."""
        return self.password(DATABASE_PASSWORD)

    def keep_admin_token(self, token: str) -> Path:
        """The admin token in a file of its own, for the api to read at start (PIER_ADMIN_TOKEN_FILE)."""
        self._make_dir()
        path = self.dir / "admin.token"
        write_secret(path, token)
        return path

    def nats_users(self, services: tuple[str, ...]) -> dict[str, str]:
        return {user: self.password(f"nats-{user}") for user in (*services, SUPERVISOR)}

    def _make_dir(self) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        os.chmod(self.dir, 0o700)


def nats_permissions(services: tuple[str, ...]) -> dict[str, dict[str, Any]]:
    """nats-server permissions per user: the supervisor may only ask for health; services other
    than the api may not write, purge or delete the routes, tokens and keys buckets, nor publish audit
    events."""
    # The audit trail is the api's account of who changed what: no other service may add to it.
    forbidden = [f"{AUDIT_PREFIX}.>"]
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
