"""Health checks: probes each instance, marks it ready or unhealthy, restarts with back-off."""

from pier import bus
from pier.config import Settings
from pier.service import announce_ready, run
from pier.tasks import together
from services.monitor.membership import Membership
from services.monitor.prober import running
from services.monitor.restarts import Restarter, restarts_bucket


async def main(settings: Settings) -> None:
    async with bus.connect(settings, "monitor") as b:
        membership = Membership(b)
        await membership.join()
        try:
            async with running(b, membership=membership) as prober:
                restarter = Restarter(b, await restarts_bucket(b), prober.routes.get)
                await announce_ready(b, "monitor")
                await together(membership.run(), restarter.run())
        finally:
            await membership.leave()


if __name__ == "__main__":
    run("monitor", main)
