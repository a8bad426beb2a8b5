from pier import bus
from pier.config import Settings
from pier.events import StartBuild
from pier.service import announce_ready, run
from services.builder.worker import Builder


async def main(settings: Settings) -> None:
    async with bus.connect(settings, "builder") as b:
        worker = Builder(b, settings)
        await worker.sweep()
        await announce_ready(b, "builder")
        await b.consume([StartBuild], worker.handle, durable="builder", concurrency=settings.build_concurrency)


if __name__ == "__main__":
    run("builder", main)
