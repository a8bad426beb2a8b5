"""The embedded servers: they require a password, a start stops the server an earlier (killed)
start left on the same data, a start never takes another server on its port for its own, and the
services' database belongs to a role that is no superuser."""

from __future__ import annotations

import shutil
import uuid
from pathlib import Path

import asyncpg
import nats
import nats.errors
import pytest

from infra.embedded import NatsServer, PostgresServer
from pier import config, db
from services.api.__main__ import MIGRATIONS as API_MIGRATIONS


async def test_nats_refuses_clients_without_the_password(nats_server: NatsServer) -> None:
    with pytest.raises(nats.errors.Error, match="Authorization Violation"):
        await nats.connect(nats_server.address, allow_reconnect=False, connect_timeout=5)
    nc = await nats.connect(nats_server.url, allow_reconnect=False, connect_timeout=5)
    await nc.close()


async def test_postgres_refuses_clients_without_the_password(postgres: PostgresServer) -> None:
    for url in (postgres.address(), postgres.address().replace("postgres@", "postgres:guess@")):
        with pytest.raises(asyncpg.InvalidPasswordError):
            await asyncpg.connect(url)
    conn = await asyncpg.connect(postgres.url())
    await conn.close()


def test_a_start_stops_the_nats_server_an_earlier_start_left_running(tmp_path: Path) -> None:
    left = NatsServer(tmp_path / "nats")
    left.start()  # and then forgotten, as by a supervisor killed with SIGKILL
    again = NatsServer(tmp_path / "nats", port=left.port)
    try:
        again.start()
        assert left.proc is not None and left.proc.poll() is not None
        assert again.proc is not None and again.proc.poll() is None
    finally:
        again.stop()
        left.stop()


def test_a_start_stops_the_postgres_an_earlier_start_left_running(tmp_path: Path) -> None:
    left = PostgresServer(tmp_path / "pg")
    left.start()  # and then forgotten, as by a supervisor killed with SIGKILL
    again = PostgresServer(tmp_path / "pg", port=left.port, password=left.password)
    try:
        again.start()
        assert left.proc is not None and left.proc.poll() is not None
        again.create_database("still_works")
    finally:
        again.stop()
        left.stop()


def test_a_nats_server_on_our_port_that_is_not_ours_is_refused(nats_server: NatsServer, tmp_path: Path) -> None:
    ours = NatsServer(tmp_path / "ours", port=nats_server.port)
    try:
        with pytest.raises(RuntimeError):  # another server's name, or ours failing to bind
            ours.start()
    finally:
        ours.stop()
    assert nats_server.proc is not None and nats_server.proc.poll() is None


def test_a_postgres_on_our_port_that_is_not_ours_is_refused(postgres: PostgresServer, tmp_path: Path) -> None:
    ours = PostgresServer(tmp_path / "ours", port=postgres.port)
    try:
        with pytest.raises(RuntimeError):  # our password refused there, or ours failing to bind
            ours.start()
    finally:
        ours.stop()
    assert postgres.proc is not None and postgres.proc.poll() is None


async def test_a_database_the_superuser_made_is_handed_to_a_role_that_migrates_it_but_runs_no_program(
    postgres: PostgresServer, tmp_path: Path
) -> None:
    database, role = f"t_{uuid.uuid4().hex[:12]}", f"r_{uuid.uuid4().hex[:12]}"
    postgres.create_database(database)
    try:
        # As an earlier Pier left it: the api's schema made and migrated by the superuser, with data.
        earlier = config.load(env={}, home=tmp_path, database_url=postgres.url(database))
        pool = await db.create_pool(earlier, "api")
        try:
            await db.migrate(pool, API_MIGRATIONS)
            await pool.execute("INSERT INTO users (name) VALUES ('ada')")
        finally:
            await pool.close()

        postgres.give_database(database, role, "the role's password")

        # The next release's services, as the role: they see the data and can migrate further.
        (tmp_path / "password").write_text("the role's password")
        migrations = tmp_path / "migrations"
        shutil.copytree(API_MIGRATIONS, migrations)
        (migrations / "999_next.sql").write_text("ALTER TABLE users ADD COLUMN note TEXT;")
        url = f"postgresql://{role}@127.0.0.1:{postgres.port}/{database}"
        later = config.load(env={}, home=tmp_path, database_url=url, database_password_file=str(tmp_path / "password"))
        pool = await db.create_pool(later, "api")
        try:
            assert await db.migrate(pool, migrations) == ["999_next.sql"]
            await pool.execute("UPDATE users SET note = 'kept' WHERE name = 'ada'")
            assert await pool.fetchval("SELECT note FROM users WHERE name = 'ada'") == "kept"
            with pytest.raises(asyncpg.InsufficientPrivilegeError):
                await pool.execute("COPY (SELECT 1) TO PROGRAM 'true'")
            with pytest.raises(asyncpg.InsufficientPrivilegeError):
                await pool.execute("CREATE ROLE intruder SUPERUSER")
        finally:
            await pool.close()
    finally:
        admin = await asyncpg.connect(postgres.url())
        try:
            await admin.execute(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)')
            await admin.execute(f'DROP ROLE IF EXISTS "{role}"')
        finally:
            await admin.close()
