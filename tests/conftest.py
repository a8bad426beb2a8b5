"""Real NATS and PostgreSQL for the suite, on free ports, stopped by pid even when a test fails.

PostgreSQL starts once per session and each test gets a database of its own, which the services
use as `make up`'s do: as a role that is no superuser and owns the database. NATS starts in about
50 ms, so each test gets a server of its own and no stream is shared between tests. Both require a
password, as under `make up`; the settings' URLs carry it.
"""

from __future__ import annotations

import os
import secrets
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck
from hypothesis import settings as hypothesis_settings

from infra.credentials import DATABASE_ROLE
from infra.embedded import NatsServer, PostgresServer
from pier import config
from pier.config import Settings

_ROLE_PASSWORD = secrets.token_urlsafe(24)

# Property tests and fuzzing (docs/testing.md): "ci" is bounded and derandomized, so `make test` is
# quick and a failure reproduces; HYPOTHESIS_PROFILE=long searches much further, for local runs.
# The deadline is the bound on one example's time: a parser that hangs fails it.
hypothesis_settings.register_profile(
    "ci",
    max_examples=60,
    deadline=3000,
    derandomize=True,
    database=None,
    print_blob=True,
    suppress_health_check=[HealthCheck.too_slow],
)
hypothesis_settings.register_profile(
    "long", max_examples=3000, deadline=10000, suppress_health_check=[HealthCheck.too_slow]
)
hypothesis_settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))


@pytest.fixture(scope="session")
def postgres(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PostgresServer]:
    pg = PostgresServer(tmp_path_factory.mktemp("pg") / "data")
    pg.start()
    try:
        pg.create_role(DATABASE_ROLE, _ROLE_PASSWORD)
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
    postgres.create_database(database, owner=DATABASE_ROLE)
    return config.load(
        env={},
        home=tmp_path / "pier",
        nats_url=nats_server.url,
        database_url=f"postgresql://{DATABASE_ROLE}:{_ROLE_PASSWORD}@127.0.0.1:{postgres.port}/{database}",
        ack_wait=2.0,
        # One gateway, whatever the machine's cores: tests that read its /metrics see every call.
        # Several share a port under `make up` (tests/e2e/test_replicas.py, test_supervisor.py).
        gateway_processes=1,
    )
