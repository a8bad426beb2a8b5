"""The policy table: every route has an entry, a new route without one stops the api, and a change
of visibility needs the owner."""

from __future__ import annotations

from unittest import mock

import pytest
from aiohttp import web

from services.api import app as api_app
from services.api import policy
from services.api.http import Context
from services.api.policy import Role


def _context() -> Context:
    return Context(mock.MagicMock(), mock.MagicMock(), mock.MagicMock(), mock.MagicMock())


def test_every_route_of_the_app_has_an_entry_and_no_entry_is_stale() -> None:
    served = api_app.served(api_app.build(_context()))
    assert policy.missing(served) == []
    assert sorted(policy.POLICY) == served


def test_the_app_refuses_to_start_with_a_route_the_table_does_not_name() -> None:
    async def sneaky(_: web.Request) -> web.Response:
        return web.Response()

    class Sneaky:
        @staticmethod
        def routes(_: Context) -> list[web.RouteDef]:
            return [web.post("/v1/backdoor", sneaky)]

    modules = [*api_app.ROUTE_MODULES, Sneaky]
    with mock.patch.object(api_app, "ROUTE_MODULES", modules), pytest.raises(RuntimeError, match="/v1/backdoor"):
        api_app.build(_context())


def test_a_patch_that_sets_visibility_needs_the_owner_and_other_settings_an_editor() -> None:
    rule = policy.rule("PATCH", "/v1/models/{ref}")
    assert rule is not None
    assert rule.needed({"request_timeout": 30}) is Role.EDITOR
    assert rule.needed({"visibility": "public", "period": 5}) is Role.OWNER
    assert rule.needed(None) is Role.EDITOR  # not JSON: the handler answers 400
    assert policy.rule("HEAD", "/v1/models/{ref}") == policy.rule("GET", "/v1/models/{ref}")
