"""A real api (HTTP app, outbox relay, PostgreSQL, NATS), the scheduler it asks about GPUs and
plans, and the gateway its tester calls (`POST /v1/models/{ref}/try`), on free ports, run on an
event loop of their own in a thread, so synchronous clients (schemathesis calls with `requests`)
can drive them."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from contextlib import contextmanager

import msgspec
from aiohttp import web

from infra.embedded import free_port
from pier import bus, db, outbox
from pier.config import Settings
from pier.events import PlaceModel, RestartInstance, StopModel
from pier.tasks import cancel_and_wait
from services.api import app as api_app
from services.api import auth
from services.api.__main__ import MIGRATIONS
from services.api.http import Context
from services.api.lifecycle import CHANNEL, Lifecycle
from services.gateway import app as gateway
from services.scheduler.__main__ import MIGRATIONS as SCHEDULER_MIGRATIONS
from services.scheduler.controller import Controller
from services.scheduler.inventory import discover
from services.scheduler.runtimes.local import LocalRuntime


async def _scheduler(settings: Settings, ready: asyncio.Event) -> None:
    """The scheduler's controller as its __main__ wires it (GPUs from PIER_GPUS, simulated)."""
    async with bus.connect(settings, "scheduler") as b:
        pool = await db.create_pool(settings, "scheduler")
        try:
            await db.migrate(pool, SCHEDULER_MIGRATIONS)
            controller = Controller(pool, b, LocalRuntime(settings), discover(settings.gpus))
            await controller.reconcile()
            await controller.serve_plans()
            ready.set()
            async with asyncio.TaskGroup() as tg:
                tg.create_task(
                    b.consume([PlaceModel, StopModel, RestartInstance], controller.handle, durable="scheduler")
                )
                tg.create_task(controller.watch())
        finally:
            await db.close_pool(pool)


async def _serve(settings: Settings, token: str, started: asyncio.Future[int], stop: asyncio.Event) -> None:
    scheduler_ready = asyncio.Event()
    scheduler = asyncio.create_task(_scheduler(settings, scheduler_ready))
    try:
        await asyncio.wait([scheduler, asyncio.create_task(scheduler_ready.wait())], return_when="FIRST_COMPLETED")
        if scheduler.done():
            scheduler.result()  # it failed to start: say why
        async with bus.connect(settings, "gateway") as gb, gateway.running(settings, gb):
            await _api(settings, token, started, stop)
    finally:
        await cancel_and_wait([scheduler])


async def _api(settings: Settings, token: str, started: asyncio.Future[int], stop: asyncio.Event) -> None:
    async with bus.connect(settings, "api") as b:
        pool = await db.create_pool(settings, "api")
        try:
            await db.migrate(pool, MIGRATIONS)
            await auth.ensure_admin(pool, token)
            runner = web.AppRunner(api_app.build(Context(pool, b, Lifecycle(pool, b, settings), settings)))
            await runner.setup()
            site = web.TCPSite(runner, "127.0.0.1", 0)
            await site.start()
            relay = asyncio.create_task(outbox.Relay(pool, b, CHANNEL).run())
            try:
                started.set_result(site._server.sockets[0].getsockname()[1])  # type: ignore[union-attr]
                await stop.wait()
            finally:
                await cancel_and_wait([relay])
                await runner.cleanup()
        finally:
            await db.close_pool(pool)


@contextmanager
def api_thread(settings: Settings, token: str) -> Iterator[str]:
    """The api's base URL while the block runs; stopped (and the thread joined) after it."""
    settings = msgspec.structs.replace(settings, gateway_port=free_port(), gateway_metrics_port=0)
    loop = asyncio.new_event_loop()
    started: asyncio.Future[int] = loop.create_future()
    stop = asyncio.Event()
    failure: list[BaseException] = []

    def run() -> None:
        try:
            loop.run_until_complete(_serve(settings, token, started, stop))
        except BaseException as exc:
            failure.append(exc)
            if not started.done():
                loop.call_soon(started.set_exception, exc)
        finally:
            loop.close()

    thread = threading.Thread(target=run, name="api", daemon=True)
    thread.start()
    port = asyncio.run_coroutine_threadsafe(asyncio.wait_for(asyncio.shield(started), 60), loop).result(70)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        loop.call_soon_threadsafe(stop.set)
        thread.join(30)
        if failure:
            raise failure[0]
