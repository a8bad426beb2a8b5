"""Who may call each management route: the one policy table, read by the one place that enforces
it (`services.api.auth.middleware`) and by the OpenAPI document (`x-pier-role`).

A route whose path names a model API (`{ref}`) needs a role on that model API: viewer < editor <
owner < admin. A caller with no role on a private model API gets the same 404 as for a name never
used; a public one gives every signed-in user the viewer role. Other routes need a signed-in user,
an admin, or nothing at all. Every route of the app must have an entry: `app.build` refuses to
start otherwise, so a new route cannot slip through unguarded.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum


class Role(IntEnum):
    """Ordered: a role includes every role below it."""

    PUBLIC = 0  # no API key needed
    USER = 1  # any signed-in user
    VIEWER = 2
    EDITOR = 3
    OWNER = 4
    ADMIN = 5

    @property
    def label(self) -> str:
        return self.name.lower()


@dataclass(frozen=True)
class Rule:
    role: Role
    # Body fields that need the owner when a request sets them (PATCH changing `visibility`).
    owner_fields: frozenset[str] = frozenset()
    # A query parameter naming the model API the role is needed on (`GET /v1/events?model=`);
    # without it the route is an admin's (every model API at once).
    model_query: str = ""

    def needed(self, body: object) -> Role:
        if self.owner_fields and isinstance(body, dict) and self.owner_fields & body.keys():
            return max(self.role, Role.OWNER)
        return self.role


PUBLIC, USER, VIEWER, EDITOR, OWNER, ADMIN = (Rule(r) for r in Role)
MODEL = "/v1/models/{ref}"

POLICY: dict[tuple[str, str], Rule] = {
    ("GET", "/v1/health"): PUBLIC,
    ("GET", "/v1/openapi.json"): PUBLIC,
    ("GET", "/metrics"): PUBLIC,
    # Model APIs: anyone signed in may create one and becomes its owner; the list shows only what
    # the caller may see.
    ("GET", "/v1/models"): USER,
    ("POST", "/v1/models"): USER,
    ("GET", MODEL): VIEWER,
    ("PATCH", MODEL): Rule(Role.EDITOR, owner_fields=frozenset({"visibility"})),
    ("DELETE", MODEL): OWNER,
    ("GET", f"{MODEL}/versions"): VIEWER,
    ("POST", f"{MODEL}/versions"): EDITOR,
    ("GET", f"{MODEL}/labels"): VIEWER,
    ("PUT", f"{MODEL}/labels/{{label}}"): EDITOR,
    ("GET", f"{MODEL}/logs"): VIEWER,
    ("GET", f"{MODEL}/usage"): VIEWER,
    ("GET", f"{MODEL}/settings"): EDITOR,
    ("POST", f"{MODEL}/stop"): EDITOR,
    ("POST", f"{MODEL}/restart"): EDITOR,
    ("GET", f"{MODEL}/tokens"): EDITOR,
    ("POST", f"{MODEL}/tokens"): EDITOR,
    ("DELETE", f"{MODEL}/tokens/{{token_id}}"): OWNER,
    ("GET", f"{MODEL}/schedules"): EDITOR,
    # A schedule's command runs as the platform's own user, on the builder's host.
    ("POST", f"{MODEL}/schedules"): ADMIN,
    ("DELETE", f"{MODEL}/schedules/{{id}}"): EDITOR,
    ("GET", f"{MODEL}/schedules/{{id}}/runs"): EDITOR,
    ("POST", f"{MODEL}/schedules/{{id}}/runs"): EDITOR,
    ("GET", f"{MODEL}/collaborators"): VIEWER,
    ("PUT", f"{MODEL}/collaborators/{{principal}}"): OWNER,
    ("DELETE", f"{MODEL}/collaborators/{{principal}}"): OWNER,
    ("POST", f"{MODEL}/transfer"): OWNER,
    # The audit feed: one model API's to its editors and owner; every model API's to admins.
    ("GET", "/v1/events"): Rule(Role.EDITOR, model_query="model"),
    # Code and what it runs on.
    ("POST", "/v1/sources"): USER,
    ("GET", "/v1/sources"): USER,
    ("GET", "/v1/sources/{name}"): USER,
    # A credential is used for every build that names it, whoever asks: an admin's decision.
    ("POST", "/v1/git-credentials"): ADMIN,
    ("GET", "/v1/git-credentials"): USER,
    ("GET", "/v1/environments"): USER,
    ("POST", "/v1/environments"): ADMIN,
    ("GET", "/v1/gpus"): USER,
    ("POST", "/v1/plan"): USER,
    # Users, their keys, organizations.
    ("POST", "/v1/users"): ADMIN,
    ("GET", "/v1/users"): ADMIN,
    ("PATCH", "/v1/users/{name}"): ADMIN,
    ("GET", "/v1/me"): USER,
    ("GET", "/v1/me/keys"): USER,
    ("POST", "/v1/me/keys"): USER,
    ("DELETE", "/v1/me/keys/{id}"): USER,
    ("PUT", "/v1/me/password"): USER,
    # Signing in is how a browser gets a session: it needs no key (failures are rate limited).
    ("POST", "/v1/session"): PUBLIC,
    ("DELETE", "/v1/session"): USER,
    ("POST", "/v1/orgs"): ADMIN,
    ("GET", "/v1/orgs"): USER,
    ("PUT", "/v1/orgs/{org}/members/{user}"): ADMIN,
    ("DELETE", "/v1/orgs/{org}/members/{user}"): ADMIN,
    # The dashboard's page and files hold no data: every piece comes from /v1 with the user's own
    # credentials. Its tester calls the gateway for the page with a token the user gives.
    ("GET", "/"): PUBLIC,
    ("GET", "/static/{name}"): PUBLIC,
    ("POST", f"{MODEL}/try"): VIEWER,
}


def rule(method: str, path: str) -> Rule | None:
    """The rule of a route (HEAD as its GET), or None for a path the app does not serve."""
    return POLICY.get(("GET" if method == "HEAD" else method, path))


def names_model(path: str) -> bool:
    return path == MODEL or path.startswith(MODEL + "/")


def missing(routes: list[tuple[str, str]]) -> list[tuple[str, str]]:
    """The (method, path) routes with no entry in the table."""
    return [r for r in routes if rule(*r) is None]
