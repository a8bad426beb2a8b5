import asyncio

from pier import bus
from pier.config import Settings
from pier.service import announce_ready, run
from services.gateway.app import running


async def main(settings: Settings) -> None:
    async with bus.connect(settings, "gateway") as b, running(settings, b):
        await announce_ready(b, "gateway")
        await asyncio.Event().wait()  # until cancelled


if __name__ == "__main__":
    run("gateway", main)
