"""The api service's HTTP application: each handler module contributes its routes."""

from __future__ import annotations

from aiohttp import web

from services.api import (
    audit,
    auth,
    collaborators,
    control,
    environments,
    gpus,
    handlers,
    images,
    labels,
    logs,
    metrics,
    orgs,
    policy,
    schedules,
    sessions,
    settings,
    sources,
    sse,
    tokens,
    tracing,
    users,
)
from services.api.errors import problems
from services.api.http import Context

# One module per concern; each has `routes(ctx) -> list[web.RouteDef]`.
# A module may also have `setup(app, ctx)` for background work tied to the app's life.
ROUTE_MODULES = [
    handlers,
    tokens,
    labels,
    logs,
    settings,
    sources,
    environments,
    schedules,
    control,
    gpus,
    images,
    metrics,
    audit,
    users,
    orgs,
    collaborators,
    sessions,
]


def build(ctx: Context) -> web.Application:
    app = web.Application(
        client_max_size=ctx.settings.api_max_body_bytes,
        # audit inside auth: it records who made each change; the span outside all: it times them.
        middlewares=[*tracing.middlewares(ctx.settings), problems, auth.middleware(ctx.pool), audit.middleware()],
    )
    sse.install(app)
    for module in ROUTE_MODULES:
        app.add_routes(module.routes(ctx))
        if hasattr(module, "setup"):
            module.setup(app, ctx)
    app.cleanup_ctx.append(tokens.track_last_used(ctx))
    unguarded = policy.missing(served(app))
    if unguarded:
        # A route without a policy entry would be open to anyone with a key: refuse to start instead.
        raise RuntimeError(f"routes without an entry in services/api/policy.py: {unguarded}")
    return app


def served(app: web.Application) -> list[tuple[str, str]]:
    """Every (method, path) the app routes, HEAD left out (it is its GET's)."""
    return sorted(
        {(r.method, r.resource.canonical) for r in app.router.routes() if r.resource is not None and r.method != "HEAD"}
    )
