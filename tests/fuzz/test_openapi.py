"""schemathesis over the api's own OpenAPI document (`GET /v1/openapi.json`): every operation, with
the admin token and with none. No answer may be a server error (5xx), and every answer must be
one the document declares: its status code, its content type and its body's schema.

Random `{ref}`s name no model API, so half the cases call one that exists (made again when a
case terminated it): the successes are checked too, not only the 404s."""

from __future__ import annotations

import gzip
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.errors import Unsatisfiable
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from infra.credentials import DATABASE_ROLE
from infra.embedded import NatsServer, PostgresServer
from pier import config
from pier.artifacts import Store
from pier.config import Settings
from services.api import openapi
from tests.conftest import _ROLE_PASSWORD
from tests.fuzz.api_thread import api_thread

TOKEN = "pier_fuzz_admin_token"
CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance]
# About sixty operations, twice: a tenth of the profile's examples for each keeps the run short.
EXAMPLES = max(4, settings().max_examples // 10)


MODEL = "fuzzed"
ADMIN = {"Authorization": f"Bearer {TOKEN}"}


@pytest.fixture(scope="module")
def api(postgres: PostgresServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Settings]]:
    home = tmp_path_factory.mktemp("fuzz-api")
    nats = NatsServer(home / "nats")
    nats.start()
    try:
        database = f"t_{uuid.uuid4().hex[:12]}"
        postgres.create_database(database, owner=DATABASE_ROLE)
        settings_ = config.load(
            env={},
            home=Path(home) / "pier",
            nats_url=nats.url,
            database_url=f"postgresql://{DATABASE_ROLE}:{_ROLE_PASSWORD}@127.0.0.1:{postgres.port}/{database}",
            ack_wait=2.0,
            gpus="a100:2,t4:1",
        )
        with api_thread(settings_, TOKEN) as url:
            yield url, settings_
    finally:
        nats.stop()


@pytest.fixture(scope="module")
def api_schema(api: tuple[str, Settings]) -> schemathesis.BaseSchema:
    return schemathesis.openapi.from_url(f"{api[0]}/v1/openapi.json")


def _ensure_model(url: str, settings_: Settings) -> None:
    """A model API named MODEL (building: no builder runs here), made again if a case terminated it."""
    if requests.get(f"{url}/v1/models/{MODEL}", headers=ADMIN, timeout=10).status_code == 200:
        return
    source = Store(settings_.artifacts).put_source(gzip.compress(b"never built"))
    spec = {"name": MODEL, "source": source, "file": "predict.py", "function": "predict", "instances": 1}
    answer = requests.post(f"{url}/v1/models", json=spec, headers=ADMIN, timeout=10)
    assert answer.status_code == 201, answer.text


def _fuzz(
    schema: schemathesis.BaseSchema,
    api: tuple[str, Settings],
    headers: dict[str, str],
    mode: schemathesis.GenerationMode = schemathesis.GenerationMode.POSITIVE,
) -> list[str]:
    """Every operation in turn; the failures, one line each, with the operation and the check.
    POSITIVE cases follow the document; NEGATIVE ones break it (each must be a 4xx, never a 5xx)."""
    url, settings_ = api
    failures: list[str] = []
    # Broken requests all take the same early exit (a 400): fewer of them find as much.
    examples = EXAMPLES if mode is schemathesis.GenerationMode.POSITIVE else max(3, EXAMPLES // 2)
    for result in schema.get_all_operations():
        operation = result.ok()

        @given(case=operation.as_strategy(generation_mode=mode), known=st.booleans())
        # Real services on a shared machine: each call has its own timeout instead of a deadline.
        @settings(max_examples=examples, deadline=None, suppress_health_check=list(HealthCheck))
        def call(case: schemathesis.Case, known: bool) -> None:
            if known and case.path_parameters and "ref" in case.path_parameters:
                _ensure_model(url, settings_)
                case.path_parameters["ref"] = MODEL
            case.call_and_validate(base_url=url, headers=headers, checks=CHECKS, timeout=30)

        try:
            call()
        except Unsatisfiable:
            assert mode is schemathesis.GenerationMode.NEGATIVE  # nothing to break: no parameter, no body
        except BaseException as exc:  # schemathesis' FailureGroup, pytest's own outcomes
            if isinstance(exc, KeyboardInterrupt | SystemExit):
                raise
            failures.append(f"{operation.label}: {' '.join(str(exc).split())[:600]}")
    return failures


def test_admin_calls_get_documented_answers(api_schema: schemathesis.BaseSchema, api: tuple[str, Settings]) -> None:
    failures = _fuzz(api_schema, api, ADMIN)
    assert not failures, "\n".join(failures)


def test_admin_calls_that_break_the_document_are_refused(
    api_schema: schemathesis.BaseSchema, api: tuple[str, Settings]
) -> None:
    failures = _fuzz(api_schema, api, ADMIN, schemathesis.GenerationMode.NEGATIVE)
    assert not failures, "\n".join(failures)


def test_anonymous_calls_get_documented_answers(api_schema: schemathesis.BaseSchema, api: tuple[str, Settings]) -> None:
    failures = _fuzz(api_schema, api, {})
    assert not failures, "\n".join(failures)


def test_a_nul_character_anywhere_in_a_request_is_a_400_naming_the_field(api: tuple[str, Settings]) -> None:
    # Found by the fuzzing above: PostgreSQL stores no NUL in text or jsonb, so these were 500s.
    url, _ = api
    spec = {"name": "a\0b", "source": "x", "file": "predict.py", "function": "predict"}
    for answer, field in [
        (requests.post(f"{url}/v1/models", json=spec, headers=ADMIN, timeout=10), "name"),
        (
            requests.post(
                f"{url}/v1/models", json={**spec, "name": "ok", "routes": [{"path": "/\0"}]}, headers=ADMIN, timeout=10
            ),
            "routes[0].path",
        ),
        (requests.get(f"{url}/v1/models/a%00b", headers=ADMIN, timeout=10), "ref"),
        (
            requests.post(f"{url}/v1/models", json={**spec, "name": "ok", "x\0": 1}, headers=ADMIN, timeout=10),
            "x\\u0000",
        ),
        (requests.get(f"{url}/v1/events?model=a%00b", headers=ADMIN, timeout=10), "model"),
    ]:
        assert answer.status_code == 400, answer.text
        assert answer.headers["Content-Type"].startswith("application/problem+json")
        assert answer.json()["errors"] == [{"field": field, "problem": "must not contain the NUL character (\\u0000)"}]
    names = {m["name"] for m in requests.get(f"{url}/v1/models", headers=ADMIN, timeout=10).json()}
    assert "ok" not in names  # nothing half-written


def test_every_route_the_document_describes_is_served(api_schema: schemathesis.BaseSchema) -> None:
    # The table of bodies and statuses in services/api/openapi.py must not outlive a route.
    served = {(method.upper(), path) for path, ops in api_schema.raw_schema["paths"].items() for method in ops}
    assert set(openapi._SCHEMAS) <= served, set(openapi._SCHEMAS) - served
