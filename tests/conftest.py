"""Real NATS and PostgreSQL for the suite, on free ports, stopped by pid even when a test fails.

PostgreSQL starts once per session and each test gets a database of its own; NATS starts in
about 50 ms, so each test gets a server of its own and no stream is shared between tests. Both
require a password, as under `make up`; the settings' URLs carry it.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from infra.embedded import NatsServer, PostgresServer
from pier import config
from pier.config import Settings


@pytest.fixture(scope="session")
def postgres(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PostgresServer]:
    pg = PostgresServer(tmp_path_factory.mktemp("pg") / "data")
    pg.start()
    try:
        yield pg
    finally:
        pg.stop()


@pytest.fixture
def nats_server(tmp_path: Path) -> Iterator[NatsServer]:
    server = NatsServer(tmp_path / "nats")
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def settings(postgres: PostgresServer, nats_server: NatsServer, tmp_path: Path) -> Settings:
    database = f"t_{uuid.uuid4().hex[:12]}"
    postgres.create_database(database)
    return config.load(
        env={},
        home=tmp_path / "pier",
        nats_url=nats_server.url,
        database_url=postgres.url(database),
        ack_wait=2.0,
    )
