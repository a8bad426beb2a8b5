"""The client against the API's policy table: every route of `/v1` has a method that sends that
verb to that path, and `AsyncClient` has each method `Client` has, awaited."""

from __future__ import annotations

import inspect
import re
import urllib.parse
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from pier.client import AsyncClient, Call, Client
from pier.client.core import SyncShell
from services.api.policy import POLICY


class Built(SyncShell):
    """A shell that sends nothing: each operation gives back the call it built."""

    def _send(self, call: Call[Any]) -> Any:
        return call

    def _stream(self, call: Call[Any]) -> Iterator[Any]:
        yield call


def _folder(tmp: Path) -> Path:
    tmp.mkdir(exist_ok=True)
    (tmp / "predict.py").write_text("def predict():\n    return 1\n")
    return tmp


OPERATIONS: dict[tuple[str, str], Callable[[Built, Path], Any]] = {
    ("GET", "/v1/health"): lambda c, _: c.health(),
    ("GET", "/v1/openapi.json"): lambda c, _: c.openapi(),
    ("GET", "/v1/models"): lambda c, _: c.models(),
    ("POST", "/v1/models"): lambda c, _: c.create_model({"name": "m"}),
    ("GET", "/v1/models/{ref}"): lambda c, _: c.model("m"),
    ("PATCH", "/v1/models/{ref}"): lambda c, _: c.change_settings("m", {"period": 5}),
    ("DELETE", "/v1/models/{ref}"): lambda c, _: c.terminate("m"),
    ("GET", "/v1/models/{ref}/versions"): lambda c, _: c.versions("m"),
    ("POST", "/v1/models/{ref}/versions"): lambda c, _: c.create_version("m", {}),
    ("GET", "/v1/models/{ref}/labels"): lambda c, _: c.labels("m"),
    ("PUT", "/v1/models/{ref}/labels/{label}"): lambda c, _: c.promote("m", 2),
    ("GET", "/v1/models/{ref}/logs"): lambda c, _: c.logs("m", kind="build"),
    ("GET", "/v1/models/{ref}/usage"): lambda c, _: c.usage("m"),
    ("GET", "/v1/models/{ref}/settings"): lambda c, _: c.settings("m"),
    ("POST", "/v1/models/{ref}/stop"): lambda c, _: c.stop("m"),
    ("POST", "/v1/models/{ref}/restart"): lambda c, _: c.restart("m"),
    ("GET", "/v1/models/{ref}/tokens"): lambda c, _: c.tokens("m"),
    ("POST", "/v1/models/{ref}/tokens"): lambda c, _: c.create_token("m", "ci"),
    ("DELETE", "/v1/models/{ref}/tokens/{token_id}"): lambda c, _: c.revoke_token("m", "pier_x"),
    ("GET", "/v1/models/{ref}/schedules"): lambda c, _: c.schedules("m"),
    ("POST", "/v1/models/{ref}/schedules"): lambda c, _: c.create_schedule("m", "0 3 * * *", "true"),
    ("DELETE", "/v1/models/{ref}/schedules/{id}"): lambda c, _: c.delete_schedule("m", "s"),
    ("GET", "/v1/models/{ref}/schedules/{id}/runs"): lambda c, _: c.runs("m", "s"),
    ("POST", "/v1/models/{ref}/schedules/{id}/runs"): lambda c, _: c.run_schedule("m", "s"),
    ("GET", "/v1/models/{ref}/collaborators"): lambda c, _: c.collaborators("m"),
    ("PUT", "/v1/models/{ref}/collaborators/{principal}"): lambda c, _: c.share("m", "org:ml", "viewer"),
    ("DELETE", "/v1/models/{ref}/collaborators/{principal}"): lambda c, _: c.unshare("m", "bob"),
    ("POST", "/v1/models/{ref}/transfer"): lambda c, _: c.transfer("m", "bob"),
    ("GET", "/v1/events"): lambda c, _: c.events("m"),
    ("POST", "/v1/sources"): lambda c, tmp: c.upload_source(_folder(tmp), name="src"),
    ("GET", "/v1/sources"): lambda c, _: c.sources(),
    ("GET", "/v1/sources/{name}"): lambda c, _: c.source("src"),
    ("POST", "/v1/git-credentials"): lambda c, _: c.add_git_credential("gh", token="t"),
    ("GET", "/v1/git-credentials"): lambda c, _: c.git_credentials(),
    ("GET", "/v1/environments"): lambda c, _: c.environments(),
    ("POST", "/v1/environments"): lambda c, _: c.create_environment({"name": "e"}),
    ("GET", "/v1/gpus"): lambda c, _: c.gpus(),
    ("POST", "/v1/plan"): lambda c, _: c.plan({"instances": 1}),
    ("POST", "/v1/users"): lambda c, _: c.create_user("ada", "ada@example.org"),
    ("GET", "/v1/users"): lambda c, _: c.users(),
    ("PATCH", "/v1/users/{name}"): lambda c, _: c.set_disabled("ada", True),
    ("GET", "/v1/me"): lambda c, _: c.me(),
    ("GET", "/v1/me/keys"): lambda c, _: c.keys(),
    ("POST", "/v1/me/keys"): lambda c, _: c.create_key("laptop"),
    ("DELETE", "/v1/me/keys/{id}"): lambda c, _: c.delete_key("pier_x"),
    ("PUT", "/v1/me/password"): lambda c, _: c.set_password("correct horse"),
    ("POST", "/v1/session"): lambda c, _: c.sign_in("ada", "correct horse"),
    ("DELETE", "/v1/session"): lambda c, _: c.sign_out(),
    ("POST", "/v1/orgs"): lambda c, _: c.create_org("ml"),
    ("GET", "/v1/orgs"): lambda c, _: c.orgs(),
    ("PUT", "/v1/orgs/{org}/members/{user}"): lambda c, _: c.add_member("ml", "ada"),
    ("DELETE", "/v1/orgs/{org}/members/{user}"): lambda c, _: c.remove_member("ml", "ada"),
}
NOT_V1 = {
    ("GET", "/metrics"),  # Prometheus' scrape of the api, not an operation
    ("GET", "/"),  # the dashboard's page and files
    ("GET", "/static/{name}"),
    ("POST", "/v1/models/{ref}/try"),  # the dashboard's tester: `predict` calls the gateway itself
}


def test_every_route_of_the_policy_table_has_a_client_method(tmp_path: Path) -> None:
    assert set(OPERATIONS) == set(POLICY) - NOT_V1, "a route of the policy table has no client method listed here"
    client = Built("http://api", "key", "http://gw")
    for (method, template), operation in OPERATIONS.items():
        call = operation(client, tmp_path / "code")
        if inspect.isgenerator(call):
            call = next(call)
        pattern = re.sub(r"\\\{[a-z_]+\\\}", "[^/]+", re.escape(template))
        path = urllib.parse.urlsplit(call.url).path
        assert (call.method, re.fullmatch(pattern, path) is not None) == (method, True), (method, template, path)
        assert call.headers["Authorization"] == "Bearer key"


def test_follow_streams_ask_for_server_sent_events() -> None:
    client = Built("http://api", "key", "http://gw")
    for stream in (client.follow_logs("m"), client.follow_events("m", last_event_id=7)):
        call = next(stream)
        assert call.params and call.params["follow"] == "true" and call.timeout is None


def _public(cls: type) -> set[str]:
    return {name for name in dir(cls) if not name.startswith("_")}


def test_async_client_has_every_method_of_client_awaited() -> None:
    assert _public(Client) - {"close"} == _public(AsyncClient) - {"aclose"}
    client = AsyncClient("http://api", "key", "http://gw")
    assert inspect.isasyncgen(client.follow_logs("m"))
    coroutine = client.model("m")
    assert inspect.iscoroutine(coroutine)
    coroutine.close()  # never sent
