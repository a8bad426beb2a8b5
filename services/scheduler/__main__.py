"""`python -m services.scheduler`: wires the bus, the database, the controller and its loops."""

from __future__ import annotations

from pathlib import Path

from pier import bus, db, outbox
from pier.config import Settings
from pier.events import PlaceModel, RestartInstance, StopModel
from pier.service import announce_ready, run
from pier.tasks import together
from services.scheduler.controller import OUTBOX_CHANNEL, Controller
from services.scheduler.leader import leadership
from services.scheduler.logship import LogShipper
from services.scheduler.runtimes import open_runtime

MIGRATIONS = Path(__file__).parent / "migrations"


async def main(settings: Settings) -> None:
    # Standbys wait here, before anything that reads or changes placements (services/scheduler/leader.py).
    async with (
        leadership(settings) as leader,
        bus.connect(settings, "scheduler") as b,
        open_runtime(settings) as runtime,
    ):
        pool = await db.create_pool(settings, "scheduler")
        try:
            await db.migrate(pool, MIGRATIONS)
            controller = Controller(pool, b, runtime, await runtime.inventory())
            await controller.reconcile()
            await controller.serve_plans()
            await announce_ready(b, "scheduler")
            await together(
                outbox.Relay(pool, b, OUTBOX_CHANNEL).run(),
                b.consume(
                    [PlaceModel, StopModel, RestartInstance], controller.handle, durable="scheduler", concurrency=1
                ),
                controller.watch(),
                LogShipper(pool, b, settings.home).run(),
                leader.hold(),
            )
        finally:
            await db.close_pool(pool)


if __name__ == "__main__":
    run("scheduler", main)
