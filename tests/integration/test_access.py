"""Who may do what: every principal against every management route, with the expected outcome
written here, independently of the policy table the api enforces. Real api, PostgreSQL and NATS.

Each cell runs on state of its own (a fresh model API, shared as the columns say), so a route that
deletes or transfers cannot change what the next cell sees."""

from __future__ import annotations

import contextlib
import io
import itertools
import tarfile
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import msgspec
import nats.js.errors
import pytest
import structlog
from aiohttp import web
from aiohttp.test_utils import TestServer

from pier import bus, db, events
from pier.config import Settings
from services.api import app as api_app
from services.api import auth
from services.api.__main__ import MIGRATIONS
from services.api.http import Context
from services.api.lifecycle import Lifecycle

ADMIN_TOKEN = "pier_access_admin_token"
ENTRY = {"file": "predict.py", "function": "predict"}
PASSWORD = "correct horse battery staple"

# The principals, in the order of the table's columns.
PRINCIPALS = ("admin", "owner", "editor", "viewer", "member", "public", "private", "disabled")
# admin: the admin token; owner: created the model API; editor / viewer: collaborators with that role;
# member: in organization `team`, which is an editor; public: a signed-in stranger on a public model
# API; private: a signed-in stranger on a private one; disabled: an editor whose user is disabled.
# A: allowed (gets past access control); F: 403; N: 404 as for a name never used; U: 401.
M = "/v1/models/{ref}"
MODEL_ROUTES: dict[tuple[str, str], str] = {
    #                                            adm own edi vie mem pub prv dis
    ("GET", M): "                                A   A   A   A   A   A   N   U",
    ("PATCH", M): "                              A   A   A   F   A   F   N   U",
    ("PATCH", M + " visibility"): "              A   A   F   F   F   F   N   U",
    ("DELETE", M): "                             A   A   F   F   F   F   N   U",
    ("GET", M + "/versions"): "                  A   A   A   A   A   A   N   U",
    ("POST", M + "/versions"): "                 A   A   A   F   A   F   N   U",
    ("GET", M + "/labels"): "                    A   A   A   A   A   A   N   U",
    ("PUT", M + "/labels/{label}"): "            A   A   A   F   A   F   N   U",
    ("GET", M + "/logs"): "                      A   A   A   A   A   A   N   U",
    ("GET", M + "/usage"): "                     A   A   A   A   A   A   N   U",
    ("GET", M + "/settings"): "                  A   A   A   F   A   F   N   U",
    ("POST", M + "/stop"): "                     A   A   A   F   A   F   N   U",
    ("POST", M + "/restart"): "                  A   A   A   F   A   F   N   U",
    ("GET", M + "/tokens"): "                    A   A   A   F   A   F   N   U",
    ("POST", M + "/tokens"): "                   A   A   A   F   A   F   N   U",
    ("DELETE", M + "/tokens/{token_id}"): "      A   A   F   F   F   F   N   U",
    ("GET", M + "/schedules"): "                 A   A   A   F   A   F   N   U",
    ("POST", M + "/schedules"): "                A   F   F   F   F   F   N   U",
    ("DELETE", M + "/schedules/{id}"): "         A   A   A   F   A   F   N   U",
    ("GET", M + "/schedules/{id}/runs"): "       A   A   A   F   A   F   N   U",
    ("POST", M + "/schedules/{id}/runs"): "      A   A   A   F   A   F   N   U",
    ("GET", M + "/collaborators"): "             A   A   A   A   A   A   N   U",
    ("PUT", M + "/collaborators/{principal}"): " A   A   F   F   F   F   N   U",
    ("DELETE", M + "/collaborators/{principal}"): "A A   F   F   F   F   N   U",
    ("POST", M + "/transfer"): "                 A   A   F   F   F   F   N   U",
    ("POST", M + "/try"): "                      A   A   A   A   A   A   N   U",
    # The audit feed of one model API (the route is /v1/events; the model API is in the query).
    ("GET", "/v1/events?model={ref}"): "         A   A   A   F   A   F   N   U",
}
# Routes naming no model API: the same for every signed-in user who is not an admin.
#                                              admin  user  disabled
OTHER_ROUTES: dict[tuple[str, str], str] = {
    ("GET", "/v1/health"): "                      A     A     A",
    ("GET", "/v1/openapi.json"): "                A     A     A",
    ("GET", "/metrics"): "                        A     A     A",
    ("GET", "/v1/models"): "                      A     A     U",
    ("POST", "/v1/models"): "                     A     A     U",
    ("POST", "/v1/sources"): "                    A     A     U",
    ("GET", "/v1/sources"): "                     A     A     U",
    ("GET", "/v1/sources/{name}"): "              A     A     U",
    ("POST", "/v1/git-credentials"): "            A     F     U",
    ("GET", "/v1/git-credentials"): "             A     A     U",
    ("GET", "/v1/environments"): "                A     A     U",
    ("POST", "/v1/environments"): "               A     F     U",
    ("GET", "/v1/gpus"): "                        A     A     U",
    ("POST", "/v1/plan"): "                       A     A     U",
    ("POST", "/v1/users"): "                      A     F     U",
    ("GET", "/v1/users"): "                       A     F     U",
    ("PATCH", "/v1/users/{name}"): "              A     F     U",
    ("GET", "/v1/me"): "                          A     A     U",
    ("GET", "/v1/me/keys"): "                     A     A     U",
    ("POST", "/v1/me/keys"): "                    A     A     U",
    ("DELETE", "/v1/me/keys/{id}"): "             A     A     U",
    ("PUT", "/v1/me/password"): "                 A     A     U",
    ("POST", "/v1/session"): "                    A     A     U",
    ("DELETE", "/v1/session"): "                  A     A     U",
    ("POST", "/v1/orgs"): "                       A     F     U",
    ("GET", "/v1/orgs"): "                        A     A     U",
    ("GET", "/v1/events"): "                      A     F     U",
    ("PUT", "/v1/orgs/{org}/members/{user}"): "   A     F     U",
    ("DELETE", "/v1/orgs/{org}/members/{user}"): "A     F     U",
    ("GET", "/"): "                               A     A     A",
    ("GET", "/static/{name}"): "                  A     A     A",
}


def _source_tarball() -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        data = b"def predict(**kw):\n    return kw\n"
        info = tarfile.TarInfo("predict.py")
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


@dataclass
class Exchange:
    """One request and its answer, kept for the scan for secrets."""

    method: str
    path: str
    status: int
    body: bytes


@dataclass
class Api:
    session: aiohttp.ClientSession
    url: str
    app: web.Application
    keys: dict[str, str] = field(default_factory=dict)  # principal -> API key
    exchanges: list[Exchange] = field(default_factory=list)
    secrets: list[tuple[str, int]] = field(default_factory=list)  # (secret, index of its creation answer)
    names: itertools.count[int] = field(default_factory=itertools.count)
    source: str = ""  # the digest of an uploaded source every model API here is made from
    bus: Any = None

    async def call(
        self, who: str, method: str, path: str, payload: Any = None, raw: bytes | None = None
    ) -> tuple[int, Any]:
        token = ADMIN_TOKEN if who == "admin" else self.keys[who]
        headers = {"Authorization": f"Bearer {token}"}
        if raw is not None:
            headers["Content-Type"] = "application/gzip"
        async with self.session.request(
            method, self.url + path, json=None if raw is not None else payload, data=raw, headers=headers
        ) as resp:
            body = await resp.read()
        self.exchanges.append(Exchange(method, path, resp.status, body))
        try:
            decoded = msgspec.json.decode(body) if body else None
        except msgspec.DecodeError:
            decoded = body.decode(errors="replace")
        if resp.status == 201 and isinstance(decoded, dict):
            nested = decoded.get("key")
            for secret in (decoded.get("token"), nested, nested.get("key") if isinstance(nested, dict) else None):
                if isinstance(secret, str):
                    self.secrets.append((secret, len(self.exchanges) - 1))
        return resp.status, decoded

    async def ok(self, who: str, method: str, path: str, payload: Any = None, raw: bytes | None = None) -> Any:
        status, body = await self.call(who, method, path, payload, raw)
        assert status < 300, (method, path, status, body)
        return body

    def fresh(self, stem: str) -> str:
        return f"{stem}-{next(self.names)}"


@pytest.fixture
async def api(settings: Settings) -> AsyncIterator[Api]:
    async with contextlib.AsyncExitStack() as stack:
        b = await stack.enter_async_context(bus.connect(settings, "api"))
        pool = await db.create_pool(settings, "api")
        stack.push_async_callback(db.close_pool, pool)
        await db.migrate(pool, MIGRATIONS)
        await auth.ensure_admin(pool, ADMIN_TOKEN)
        server = TestServer(api_app.build(Context(pool, b, Lifecycle(pool, b, settings), settings)))
        await server.start_server()
        stack.push_async_callback(server.close)
        session = await stack.enter_async_context(aiohttp.ClientSession())
        api = Api(session, str(server.make_url("")).rstrip("/"), server.app, bus=b)
        for who in ("owner", "editor", "viewer", "member", "public", "private", "disabled", "outsider"):
            created = await api.ok("admin", "POST", "/v1/users", {"name": who, "email": f"{who}@example.org"})
            api.keys[who] = created["key"]["key"]
        await api.ok("admin", "POST", "/v1/orgs", {"name": "team"})
        await api.ok("admin", "PUT", "/v1/orgs/team/members/member")
        await api.ok("admin", "POST", "/v1/orgs", {"name": "club"})
        api.source = (await api.ok("admin", "POST", "/v1/sources", raw=_source_tarball()))["digest"]
        with structlog.testing.capture_logs() as logs:
            yield api
        _scan(api, logs)


def _scan(api: Api, logs: list[dict[str, Any]]) -> None:
    """No API key, access token, session cookie or CSRF token in any answer but the one that made it,
    and none of them, nor a password, in any log line: run after every test of this module."""
    lines = [repr(entry) for entry in logs]
    for secret, created_at in [*api.secrets, (PASSWORD, -1)]:
        for i, exchange in enumerate(api.exchanges):
            if i != created_at:
                assert secret.encode() not in exchange.body, (exchange.method, exchange.path)
        assert not [line for line in lines if secret in line]


def _expected(row: str, columns: tuple[str, ...]) -> dict[str, str]:
    letters = row.split()
    assert len(letters) == len(columns), row
    return dict(zip(columns, letters, strict=True))


def _outcome(status: int, body: Any) -> str:
    if status == 401:
        return "U"
    if status == 403:
        return "F"
    if status == 404 and isinstance(body, dict) and body.get("detail", "").startswith("no model API with id or name"):
        return "N"
    return "A"


async def _model(api: Api, who: str) -> str:
    """A model API of `owner`, shared as the table's columns say; public for the public stranger."""
    name = api.fresh("m")
    source = api.source
    visibility = "public" if who == "public" else "private"
    await api.ok("owner", "POST", "/v1/models", {"name": name, "source": source, **ENTRY, "visibility": visibility})
    shares = [("editor", "editor"), ("viewer", "viewer"), ("org:team", "editor")]
    # Disabling a user republishes every model API they have a role on: only this cell's has one.
    shares += [("disabled", "editor")] if who == "disabled" else []
    for principal, role in shares:
        await api.ok("owner", "PUT", f"/v1/models/{name}/collaborators/{principal}", {"role": role})
    return name


async def _model_call(api: Api, who: str, method: str, path: str) -> tuple[int, Any]:
    name = await _model(api, who)
    base = f"/v1/models/{name}"
    token_id = (await api.ok("owner", "POST", f"{base}/tokens", {"name": "ci"}))["id"]
    schedule = {"cron": "0 3 * * *", "command": "true"}
    schedule_id = (await api.ok("admin", "POST", f"{base}/schedules", schedule))["id"]
    if who == "disabled":
        await api.ok("admin", "PATCH", "/v1/users/disabled", {"disabled": True})
    concrete = (
        path.removesuffix(" visibility")
        .replace("{ref}", name)
        .replace("{label}", "prod")
        .replace("{token_id}", token_id)
        .replace("{id}", schedule_id)
        .replace("{principal}", "outsider" if method == "PUT" else "viewer")
    )
    source = api.source
    bodies: dict[tuple[str, str], Any] = {
        ("PATCH", M): {"request_timeout": 30},
        ("PATCH", M + " visibility"): {"visibility": "public"},
        ("POST", M + "/versions"): {"source": source, **ENTRY},
        ("PUT", M + "/labels/{label}"): {"version": 1},
        ("POST", M + "/tokens"): {"name": "more"},
        ("POST", M + "/schedules"): schedule,
        ("PUT", M + "/collaborators/{principal}"): {"role": "viewer"},
        ("POST", M + "/transfer"): {"owner": "outsider"},
        # A path the tester refuses (400): past access control, without a gateway to call.
        ("POST", M + "/try"): {"path": "../v1"},
    }
    try:
        return await api.call(who, method, concrete.replace("/v1/models/{ref}", base), bodies.get((method, path)))
    finally:
        if who == "disabled":
            await api.ok("admin", "PATCH", "/v1/users/disabled", {"disabled": False})


async def _other_call(api: Api, who: str, method: str, path: str) -> tuple[int, Any]:
    if (method, path) == ("POST", "/v1/session"):
        await api.ok(who, "PUT", "/v1/me/password", {"password": PASSWORD})  # before a disabled one is
    if who == "disabled":
        await api.ok("admin", "PATCH", "/v1/users/disabled", {"disabled": True})
    try:
        # Only what the route names is made: a user to disable or to remove from `club` (an
        # organization that collaborates on nothing), a key of the caller's own, a named source.
        concrete = path
        if "{user}" in path or path == "/v1/users/{name}":
            throwaway = api.fresh("u")
            await api.ok("admin", "POST", "/v1/users", {"name": throwaway, "email": "u@example.org"})
            if method == "DELETE":
                await api.ok("admin", "PUT", f"/v1/orgs/club/members/{throwaway}")
            concrete = path.replace("{name}", throwaway).replace("{org}", "club").replace("{user}", throwaway)
        elif "{id}" in path:
            key_id = (
                "none" if who == "disabled" else (await api.ok(who, "POST", "/v1/me/keys", {"name": "spare"}))["id"]
            )
            concrete = path.replace("{id}", key_id)
        elif "{name}" in path:
            source_name = api.fresh("src")
            await api.ok("admin", "POST", f"/v1/sources?name={source_name}", raw=_source_tarball())
            concrete = path.replace("{name}", source_name)
        source = api.source
        bodies: dict[tuple[str, str], Any] = {
            ("POST", "/v1/models"): {"name": api.fresh("new"), "source": source, **ENTRY},
            ("POST", "/v1/git-credentials"): {"name": api.fresh("cred"), "token": "ghp_example"},
            ("POST", "/v1/environments"): {"name": api.fresh("env")},
            ("POST", "/v1/plan"): {},
            ("POST", "/v1/users"): {"name": api.fresh("user"), "email": "new@example.org"},
            ("PATCH", "/v1/users/{name}"): {"disabled": True},
            ("POST", "/v1/me/keys"): {"name": "another"},
            ("POST", "/v1/orgs"): {"name": api.fresh("org")},
            ("PUT", "/v1/me/password"): {"password": PASSWORD},
            ("POST", "/v1/session"): {"name": who, "password": PASSWORD},
        }
        if (method, path) == ("POST", "/v1/sources"):
            return await api.call(who, method, concrete, raw=_source_tarball())
        return await api.call(who, method, concrete, bodies.get((method, path)))
    finally:
        if who == "disabled":
            await api.ok("admin", "PATCH", "/v1/users/disabled", {"disabled": False})


async def test_every_principal_on_every_route_gets_what_the_role_table_says(api: Api) -> None:
    served = set(api_app.served(api.app))
    tabled = {(m, p.removesuffix(" visibility").removesuffix("?model={ref}")) for m, p in MODEL_ROUTES}
    tabled |= set(OTHER_ROUTES)
    assert served == tabled, f"routes missing from this test's table: {served - tabled}; stale: {tabled - served}"

    wrong = []
    for (method, path), row in MODEL_ROUTES.items():
        for who, expected in _expected(row, PRINCIPALS).items():
            status, body = await _model_call(api, who, method, path)
            if _outcome(status, body) != expected or status >= 500:
                wrong.append(f"{who} {method} {path}: expected {expected}, got {status} {str(body)[:200]}")
    for (method, path), row in OTHER_ROUTES.items():
        for column, expected in _expected(row, ("admin", "user", "disabled")).items():
            for who in PRINCIPALS if column == "user" else (column,):
                if who in ("admin", "disabled") and column == "user":
                    continue
                status, body = await _other_call(api, who, method, path)
                # The scheduler is not running here: its routes answer 503, past access control.
                if _outcome(status, body) != expected or (status >= 500 and status != 503):
                    wrong.append(f"{who} {method} {path}: expected {expected}, got {status} {str(body)[:200]}")
    assert not wrong, "\n".join(wrong)


async def test_a_private_model_api_is_the_same_404_as_a_name_never_used(api: Api) -> None:
    name = await _model(api, "private")
    hidden = await api.call("private", "GET", f"/v1/models/{name}")
    never = await api.call("private", "GET", "/v1/models/never-used")
    assert hidden[0] == never[0] == 404
    assert hidden[1]["detail"].replace(name, "X") == never[1]["detail"].replace("never-used", "X")
    assert await api.call("private", "DELETE", f"/v1/models/{name}") == (404, hidden[1])


async def test_the_model_list_shows_only_what_the_caller_may_see(api: Api) -> None:
    private = await _model(api, "private")
    public = await _model(api, "public")

    async def names(who: str) -> list[str]:
        return [m["name"] for m in await api.ok(who, "GET", "/v1/models")]

    assert await names("private") == [public]
    assert await names("outsider") == [public]
    assert await names("member") == [private, public]  # through the organization
    assert await names("admin") == [private, public]
    await api.ok("admin", "DELETE", "/v1/orgs/team/members/member")
    assert await names("member") == [public]
    status, _ = await api.call("member", "GET", f"/v1/models/{private}")
    assert status == 404


async def test_a_model_api_answers_the_callers_own_role_on_it(api: Api) -> None:
    """What a client (the dashboard) offers follows this answer: the same role the policy checks."""
    name = await _model(api, "public")
    roles = {who: (await api.ok(who, "GET", f"/v1/models/{name}"))["role"] for who in (
        "owner", "editor", "viewer", "member", "public", "admin")}  # fmt: skip
    assert roles == {
        "owner": "owner",
        "editor": "editor",
        "viewer": "viewer",
        "member": "editor",  # through the organization team
        "public": "viewer",  # a public model API
        "admin": "admin",
    }


async def test_the_owner_makes_a_model_api_public_and_a_transfer_hands_it_over(api: Api) -> None:
    name = await _model(api, "private")
    assert (await api.call("private", "GET", f"/v1/models/{name}"))[0] == 404
    settings = await api.ok("owner", "PATCH", f"/v1/models/{name}", {"visibility": "public"})
    assert settings["visibility"] == "public"
    shown = await api.ok("private", "GET", f"/v1/models/{name}")
    assert shown["visibility"] == "public"
    status, body = await api.call("editor", "PATCH", f"/v1/models/{name}", {"visibility": "private"})
    assert status == 403 and "owner" in body["detail"], body

    moved = await api.ok("owner", "POST", f"/v1/models/{name}/transfer", {"owner": "outsider"})
    assert moved["owner"] == "outsider"
    status, body = await api.call("owner", "POST", f"/v1/models/{name}/transfer", {"owner": "owner"})
    assert status == 403, body  # the old owner is a viewer now (public), no more
    status, body = await api.call("outsider", "POST", f"/v1/models/{name}/transfer", {"owner": "nobody"})
    assert status == 400 and body["errors"][0]["field"] == "owner", body


async def test_collaborators_are_listed_and_a_bad_principal_or_role_is_400(api: Api) -> None:
    name = await _model(api, "private")
    listed = await api.ok("viewer", "GET", f"/v1/models/{name}/collaborators")
    assert {(c["principal"], c["role"]) for c in listed} == {
        ("editor", "editor"),
        ("viewer", "viewer"),
        ("org:team", "editor"),
    }
    status, body = await api.call("owner", "PUT", f"/v1/models/{name}/collaborators/ghost", {"role": "viewer"})
    assert status == 400 and body["errors"][0]["field"] == "principal", body
    status, body = await api.call("owner", "PUT", f"/v1/models/{name}/collaborators/org:ghosts", {"role": "viewer"})
    assert status == 400 and body["errors"][0]["field"] == "principal", body
    status, body = await api.call("owner", "PUT", f"/v1/models/{name}/collaborators/outsider", {"role": "owner"})
    assert status == 400 and body["errors"][0]["field"] == "role", body
    await api.ok("owner", "DELETE", f"/v1/models/{name}/collaborators/viewer")
    assert (await api.call("viewer", "GET", f"/v1/models/{name}"))[0] == 404


async def test_a_user_manages_their_own_keys_and_a_disabled_user_is_refused_at_once(api: Api) -> None:
    me = await api.ok("viewer", "GET", "/v1/me")
    assert (me["name"], me["email"], me["admin"], me["disabled"]) == ("viewer", "viewer@example.org", False, False)
    created = await api.ok("viewer", "POST", "/v1/me/keys", {"name": "laptop"})
    listed = await api.ok("viewer", "GET", "/v1/me/keys")
    assert {k["name"] for k in listed} == {"first key", "laptop"}
    assert all(set(k) == {"id", "name", "created", "last_used"} for k in listed)
    api.keys["laptop"] = created["key"]
    assert (await api.call("laptop", "GET", "/v1/me"))[1]["name"] == "viewer"
    await api.ok("viewer", "DELETE", f"/v1/me/keys/{created['id']}")
    assert (await api.call("laptop", "GET", "/v1/me"))[0] == 401
    assert (await api.call("editor", "DELETE", f"/v1/me/keys/{listed[0]['id']}"))[0] == 404  # not theirs

    await api.ok("admin", "PATCH", "/v1/users/viewer", {"disabled": True})
    status, body = await api.call("viewer", "GET", "/v1/me")
    assert status == 401 and "disabled" in body["detail"], body
    users = {u["name"]: u for u in await api.ok("admin", "GET", "/v1/users")}
    assert users["viewer"]["disabled"] is True and users["admin"]["admin"] is True
    await api.ok("admin", "PATCH", "/v1/users/viewer", {"disabled": False})
    assert (await api.call("viewer", "GET", "/v1/me"))[0] == 200

    status, body = await api.call("admin", "PATCH", "/v1/users/admin", {"disabled": True})
    assert status == 409, body
    status, body = await api.call("admin", "POST", "/v1/users", {"name": "owner", "email": "x@example.org"})
    assert status == 409 and body["errors"][0]["field"] == "name", body
    status, body = await api.call("admin", "POST", "/v1/users", {"name": "Bad Name", "email": "nope"})
    assert status == 400 and body["errors"][0]["field"] in ("name", "email"), body


async def test_the_openapi_document_states_each_routes_role(api: Api) -> None:
    document = await api.ok("owner", "GET", "/v1/openapi.json")
    roles = {
        (method.upper(), path): op.get("x-pier-role")
        for path, ops in document["paths"].items()
        for method, op in ops.items()
    }
    assert roles[("POST", "/v1/models")] == "user"
    assert roles[("DELETE", "/v1/models/{ref}")] == "owner"
    assert roles[("POST", "/v1/users")] == "admin"
    assert roles[("GET", "/v1/health")] == "public"
    assert None not in roles.values(), [route for route, role in roles.items() if role is None]


async def test_no_secret_appears_after_its_creation_answer_in_any_answer_or_log_line(api: Api) -> None:
    # Every test here is scanned when it ends (`_scan`); this one goes through what shows secrets' kin.
    name = await _model(api, "private")
    await api.ok("owner", "POST", f"/v1/models/{name}/tokens", {"name": "ci"})
    await api.ok("viewer", "POST", "/v1/me/keys", {"name": "laptop"})
    await api.ok("admin", "POST", "/v1/users", {"name": "late", "email": "late@example.org"})
    await api.ok("viewer", "PUT", "/v1/me/password", {"password": PASSWORD})
    await api.call("viewer", "POST", "/v1/session", {"name": "viewer", "password": "not it"})
    for who in ("owner", "viewer", "admin"):
        for path in ("/v1/me", "/v1/me/keys", "/v1/users", f"/v1/models/{name}", f"/v1/models/{name}/tokens"):
            await api.call(who, "GET", path)
    await api.call("owner", "PATCH", "/v1/users/viewer", {"disabled": True})
    await api.ok("admin", "PATCH", "/v1/users/viewer", {"disabled": False})
    assert len(api.secrets) >= 11  # every user's first key, a token, a key


async def test_the_gateways_learn_keys_and_callers_from_the_api_and_forget_them_at_once(api: Api) -> None:
    keys = await api.bus.kv(events.KEYS_BUCKET)
    routes = await api.bus.kv(events.ROUTES_BUCKET)

    async def key_ids() -> set[str]:
        try:
            return set(await keys.keys())
        except nats.js.errors.NoKeysError:
            return set()

    async def callers(model: str) -> set[str]:
        model_id = (await api.ok("admin", "GET", f"/v1/models/{model}"))["id"]
        record = msgspec.json.decode((await routes.get(model_id)).value, type=events.RouteRecord)
        return set(record.callers)

    viewer_key = (await api.ok("viewer", "GET", "/v1/me/keys"))[0]["id"]
    entry = await keys.get(viewer_key)
    stored = msgspec.json.decode(entry.value, type=events.KeyRecord)
    assert (stored.user, stored.hash) == ("viewer", auth.token_hash(api.keys["viewer"]))
    assert api.keys["viewer"].encode() not in entry.value  # the hash travels, never the secret

    name = await _model(api, "private")
    assert await callers(name) == {"owner", "editor", "viewer", "member"}
    await api.ok("admin", "DELETE", "/v1/orgs/team/members/member")
    assert await callers(name) == {"owner", "editor", "viewer"}

    await api.ok("admin", "PATCH", "/v1/users/viewer", {"disabled": True})
    assert viewer_key not in await key_ids()
    assert await callers(name) == {"owner", "editor"}
    await api.ok("admin", "PATCH", "/v1/users/viewer", {"disabled": False})
    assert viewer_key in await key_ids()

    spare = await api.ok("viewer", "POST", "/v1/me/keys", {"name": "spare"})
    assert spare["id"] in await key_ids()
    await api.ok("viewer", "DELETE", f"/v1/me/keys/{spare['id']}")
    assert spare["id"] not in await key_ids()


async def _cookie_call(
    api: Api, method: str, path: str, cookie: str, csrf: str | None = None, payload: Any = None
) -> tuple[int, Any]:
    headers = {"Cookie": f"pier_session={cookie}"}
    if csrf is not None:
        headers["X-CSRF-Token"] = csrf
    async with api.session.request(method, api.url + path, json=payload, headers=headers) as resp:
        body = await resp.read()
    api.exchanges.append(Exchange(method, path, resp.status, body))
    return resp.status, msgspec.json.decode(body) if body else None


async def test_a_password_sign_in_sets_a_session_cookie_and_changes_need_the_csrf_token(api: Api) -> None:
    status, body = await api.call("viewer", "PUT", "/v1/me/password", {"password": "short"})
    assert status == 400 and body["errors"][0]["field"] == "password", body
    await api.ok("viewer", "PUT", "/v1/me/password", {"password": PASSWORD})
    # A user who never set a password, or a name never used, gets the answer a wrong password gets.
    for name in ("owner", "nobody"):
        async with api.session.post(api.url + "/v1/session", json={"name": name, "password": PASSWORD}) as resp:
            assert resp.status == 401 and (await resp.json())["detail"] == "the name or the password is wrong"

    async with api.session.post(api.url + "/v1/session", json={"name": "viewer", "password": PASSWORD}) as resp:
        assert resp.status == 201
        answer = await resp.json()
        morsel = resp.cookies["pier_session"]
        raw_header = resp.headers["Set-Cookie"]
    assert answer["user"] == "viewer" and answer["csrf_token"]
    assert morsel["httponly"] and morsel["samesite"] == "Lax" and not morsel["secure"]  # plain HTTP here
    assert "HttpOnly" in raw_header and "SameSite=Lax" in raw_header
    cookie, csrf = morsel.value, answer["csrf_token"]
    assert cookie != csrf
    api.exchanges.append(Exchange("POST", "/v1/session", 201, msgspec.json.encode(answer)))
    api.secrets += [(cookie, len(api.exchanges) - 1), (csrf, len(api.exchanges) - 1)]

    status, me = await _cookie_call(api, "GET", "/v1/me", cookie)
    assert (status, me["name"]) == (200, "viewer")
    status, body = await _cookie_call(api, "POST", "/v1/me/keys", cookie, payload={"name": "from the browser"})
    assert status == 403 and "X-CSRF-Token" in body["detail"], body
    status, body = await _cookie_call(api, "POST", "/v1/me/keys", cookie, csrf="forged", payload={"name": "b"})
    assert status == 403, body
    status, body = await _cookie_call(api, "POST", "/v1/me/keys", cookie, csrf=csrf, payload={"name": "b"})
    assert status == 201, body
    api.secrets.append((body["key"], len(api.exchanges) - 1))

    await api.ok("admin", "PATCH", "/v1/users/viewer", {"disabled": True})
    assert (await _cookie_call(api, "GET", "/v1/me", cookie))[0] == 401
    await api.ok("admin", "PATCH", "/v1/users/viewer", {"disabled": False})

    assert (await _cookie_call(api, "DELETE", "/v1/session", cookie, csrf=csrf))[0] == 204
    status, body = await _cookie_call(api, "GET", "/v1/me", cookie)
    assert status == 401 and "sign in again" in body["detail"], body


async def test_failed_sign_ins_are_limited_per_name_and_per_client_and_logged_without_the_password(
    api: Api,
) -> None:
    await api.ok("editor", "PUT", "/v1/me/password", {"password": PASSWORD})

    async def sign_in(name: str, password: str) -> tuple[int, Any, str | None]:
        async with api.session.post(api.url + "/v1/session", json={"name": name, "password": password}) as resp:
            return resp.status, await resp.json(content_type=None), resp.headers.get("Retry-After")

    with structlog.testing.capture_logs() as logs:
        for attempt in range(5):
            status, body, _ = await sign_in("editor", f"wrong guess {attempt}")
            assert status == 401 and body["detail"] == "the name or the password is wrong", body
        status, body, retry_after = await sign_in("editor", PASSWORD)  # right, but too late
        assert status == 429 and retry_after is not None and int(retry_after) > 0, body
        # The same client, another name: limited per client address too.
        assert (await sign_in("nobody", "anything"))[0] == 429
    assert (await sign_in("nobody", "anything"))[0] == 429
    failures = [e for e in logs if e["event"] == "sign-in failed"]
    assert len(failures) == 5 and all(e["user"] == "editor" and e["client"] for e in failures)
    assert not [e for e in logs if "wrong guess" in repr(e) or PASSWORD in repr(e)]
