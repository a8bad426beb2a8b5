import asyncio

from pier import bus
from pier.config import Settings
from pier.service import announce_ready, run
from services.monitor.prober import running


async def main(settings: Settings) -> None:
    async with bus.connect(settings, "monitor") as b, running(b):
        await announce_ready(b, "monitor")
        await asyncio.Event().wait()  # until cancelled


if __name__ == "__main__":
    run("monitor", main)
