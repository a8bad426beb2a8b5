"""The api service's HTTP application: each handler module contributes its routes."""

from __future__ import annotations

from aiohttp import web

from services.api import auth, handlers
from services.api.errors import problems
from services.api.http import Context

# One module per concern; each has `routes(ctx) -> list[web.RouteDef]`.
ROUTE_MODULES = [handlers]


def build(ctx: Context) -> web.Application:
    app = web.Application(
        client_max_size=ctx.settings.max_source_bytes, middlewares=[problems, auth.middleware(ctx.pool)]
    )
    for module in ROUTE_MODULES:
        app.add_routes(module.routes(ctx))
    return app
