"""The api service's HTTP application."""

from __future__ import annotations

import asyncpg
from aiohttp import web

from pier.config import Settings
from services.api import auth
from services.api.errors import problems
from services.api.handlers import Handlers
from services.api.lifecycle import Lifecycle


def build(pool: asyncpg.Pool, lifecycle: Lifecycle, settings: Settings) -> web.Application:
    app = web.Application(client_max_size=settings.max_source_bytes, middlewares=[problems, auth.middleware(pool)])
    app.add_routes(Handlers(pool, lifecycle, settings).routes())
    return app
