"""Health checks: probes each instance, marks it ready or unhealthy, restarts with back-off."""

import asyncio

from pier import bus
from pier.config import Settings
from pier.service import announce_ready, run
from services.monitor.membership import Membership
from services.monitor.prober import running
from services.monitor.restarts import Restarter, restarts_bucket


async def main(settings: Settings) -> None:
    async with bus.connect(settings, "monitor") as b:
        membership = Membership(b)
        await membership.join()
        try:
            async with running(b, membership=membership) as prober, asyncio.TaskGroup() as tg:
                restarter = Restarter(b, await restarts_bucket(b), prober.routes.get)
                tg.create_task(membership.run(), name="membership")
                tg.create_task(restarter.run(), name="restarts")
                await announce_ready(b, "monitor")
        finally:
            await membership.leave()


if __name__ == "__main__":
    run("monitor", main)
