"""The api service: management REST API, event folding, outbox relay."""

from __future__ import annotations

from pathlib import Path

from aiohttp import web

from pier import bus, db, git, outbox
from pier.config import Settings
from pier.events import AnyEvent
from pier.service import announce_ready, run
from pier.tasks import together
from services.api import app, auth, routing
from services.api.http import Context
from services.api.lifecycle import CHANNEL, Lifecycle

MIGRATIONS = Path(__file__).parent / "migrations"
EVENT_TYPES = list(AnyEvent.__args__)


async def main(settings: Settings) -> None:
    git.parse_networks(settings.git_allow_networks)  # a bad value stops the start, naming the variable
    async with bus.connect(settings, "api") as b:
        pool = await db.create_pool(settings, "api")
        try:
            await db.migrate(pool, MIGRATIONS)
            await auth.ensure_admin(pool, auth.admin_token(settings))
            lifecycle = Lifecycle(pool, b, settings)
            await routing.publish_all(b, pool)
            runner = web.AppRunner(app.build(Context(pool, b, lifecycle, settings)), access_log=None)
            await runner.setup()
            # Replicas share the port: the kernel spreads connections among them.
            site = web.TCPSite(runner, settings.api_host, settings.api_port, reuse_port=settings.replicas > 1)
            await site.start()
            try:
                await announce_ready(b, "api")
                await together(
                    outbox.Relay(pool, b, CHANNEL).run(), b.consume(EVENT_TYPES, lifecycle.handle, durable="api")
                )
            finally:
                await runner.cleanup()
        finally:
            await db.close_pool(pool)


if __name__ == "__main__":
    run("api", main)
