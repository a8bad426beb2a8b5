"""The embedded servers: they require a password, a start stops the server an earlier (killed)
start left on the same data, and a start never takes another server on its port for its own."""

from __future__ import annotations

from pathlib import Path

import asyncpg
import nats
import nats.errors
import pytest

from infra.embedded import NatsServer, PostgresServer


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
