from pier import bus, git
from pier.config import Settings
from pier.events import RunSchedule, StartBuild
from pier.service import announce_ready, run
from pier.tasks import together
from services.builder.runs import Runner
from services.builder.worker import Builder


async def main(settings: Settings) -> None:
    git.parse_networks(settings.git_allow_networks)  # a bad value stops the start, naming the variable
    async with bus.connect(settings, "builder") as b:
        worker = Builder(b, settings)
        await worker.sweep()
        await announce_ready(b, "builder")
        runner = Runner(b, settings)
        await together(
            b.consume([StartBuild], worker.handle, durable="builder", concurrency=settings.build_concurrency),
            # A consumer of its own: a long training run never takes a build's slot.
            b.consume([RunSchedule], runner.handle, durable="builder-runs", concurrency=1),
        )


if __name__ == "__main__":
    run("builder", main)
