"""`python -m services.scheduler`: wires the bus, the database, the controller and its loops."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from pier import bus, db, metrics, outbox
from pier.config import Settings
from pier.events import PlaceModel, RestartInstance, StopModel
from pier.service import announce_ready, run
from pier.tasks import together
from services.scheduler.controller import OUTBOX_CHANNEL, Controller
from services.scheduler.leader import Lost, leadership, log
from services.scheduler.logship import LogShipper
from services.scheduler.runtimes import open_runtime

MIGRATIONS = Path(__file__).parent / "migrations"


async def main(settings: Settings) -> None:
    leading: list[Controller] = []  # the controller of the current term, for the gauges
    _gauges(leading)
    while True:
        try:
            await _lead(settings, leading)
            return
        except Lost:
            # The lock's session ended (PostgreSQL restarted, the network cut): another scheduler may
            # lead now, so this one starts over as a standby, from the database, as a restart would.
            leading.clear()
            log.warning("no longer leading; waiting for the lock again")


async def _lead(settings: Settings, leading: list[Controller]) -> None:
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
            leading[:] = [controller]
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


def _gauges(leading: list[Controller]) -> None:
    """The GPUs and the wait queue, read from the leading controller's queue at each scrape."""

    def gpus() -> Iterable[tuple[tuple[str, ...], float]]:
        for controller in leading:
            for gpu_type, n in controller.queue.totals().items():
                yield (gpu_type, "free"), n["free"]
                yield (gpu_type, "in_use"), n["total"] - n["free"]

    def waiting() -> Iterable[tuple[tuple[str, ...], float]]:
        for controller in leading:
            for gpu_type, n in controller.queue.totals().items():
                yield (gpu_type, "model_versions"), n["waiting"]
                yield (gpu_type, "gpus"), n["requested"]

    metrics.REGISTRY.gauge("pier_scheduler_gpus", "GPUs by type and state (free, in_use)", ("gpu_type", "state"), gpus)
    metrics.REGISTRY.gauge(
        "pier_scheduler_waiting",
        "The wait queue by GPU type: model versions waiting, and the GPUs they ask for",
        ("gpu_type", "what"),
        waiting,
    )


if __name__ == "__main__":
    run("scheduler", main)
