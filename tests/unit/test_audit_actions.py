"""Every state-changing route of the api is in the audit table, and the docs name every action."""

from __future__ import annotations

from pathlib import Path
from typing import Any, cast

from pier import config
from services.api import app as api_app
from services.api import audit
from services.api.http import Context

DOCS = Path(__file__).parents[2] / "docs"


def _changing_routes(tmp_path: Path) -> set[tuple[str, str]]:
    settings = config.load(env={}, home=tmp_path)
    app = api_app.build(Context(cast(Any, None), cast(Any, None), cast(Any, None), settings))
    return {
        (route.method, route.resource.canonical)
        for route in app.router.routes()
        if route.resource is not None
        and route.method in audit.CHANGING_METHODS
        and route.resource.canonical.startswith("/v1/")
    }


def test_every_state_changing_route_has_an_audit_action(tmp_path: Path) -> None:
    missing = _changing_routes(tmp_path) - set(audit.ACTIONS)
    assert not missing, f"add these routes to services/api/audit.py ACTIONS: {sorted(missing)}"


def test_the_audit_table_names_no_route_the_app_lacks(tmp_path: Path) -> None:
    assert set(audit.ACTIONS) - _changing_routes(tmp_path) == set()


def test_docs_list_every_audit_action() -> None:
    page = (DOCS / "audit.md").read_text()
    names = {a.name for a in audit.ACTIONS.values() if a is not None}
    assert {n for n in names if f"`{n}`" not in page} == set()
