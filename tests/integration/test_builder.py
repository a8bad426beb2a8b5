"""The builder against real NATS: a StartBuild becomes an image, or a BuildFailed with one clear line."""

from __future__ import annotations

import asyncio
import contextlib
import io
import tarfile
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import msgspec
import pytest
from nats.aio.msg import Msg

from pier import bus, events
from pier.artifacts import Store
from pier.bus import Bus
from pier.config import Settings
from pier.events import BuildFailed, BuildStarted, BuildSucceeded, LogLine, StartBuild
from pier.spec import Entrypoint
from pier.tasks import cancel_and_wait
from services.builder.worker import Builder
from tests.support import until

PREDICT = "def predict(x=1):\n    return x * 2\n"
ENTRYPOINT = Entrypoint(file="predict.py", function="predict")
# Builds create a venv (uv, from its cache once warm): generous, since the first one may download.
BUILD_WITHIN = 180.0


def put_source(settings: Settings, files: dict[str, str | bytes]) -> str:
    """A gzip'd tarball of `files` (name -> content), stored where the api would put an upload."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        for name, content in files.items():
            data = content.encode() if isinstance(content, str) else content
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return Store(settings.artifacts).put_source(buffer.getvalue())


@dataclass
class Platform:
    """A running builder, and everything it published, read back from the streams."""

    bus: Bus
    builder: Builder
    store: Store
    events: list[events.AnyEvent] = field(default_factory=list)
    logs: dict[str, list[str]] = field(default_factory=dict)

    async def build(self, files: dict[str, str | bytes], entrypoint: Entrypoint = ENTRYPOINT) -> StartBuild:
        cmd = StartBuild(
            model_id=uuid.uuid4().hex, version=1, source=put_source(self.builder.settings, files), entrypoint=entrypoint
        )
        await self.bus.publish(cmd)
        return cmd

    async def outcome(self, cmd: StartBuild) -> BuildSucceeded | BuildFailed:
        def done() -> BuildSucceeded | BuildFailed | None:
            return next(
                (e for e in self.events if isinstance(e, BuildSucceeded | BuildFailed) and e.model_id == cmd.model_id),
                None,
            )

        result: BuildSucceeded | BuildFailed = await until(done, within=BUILD_WITHIN)
        return result

    def log(self, cmd: StartBuild) -> list[str]:
        return self.logs.get(cmd.model_id, [])

    async def logged(self, cmd: StartBuild, line: str) -> bool:
        """Wait for a line in the build log (it travels apart from the events, so may lag them)."""
        return bool(await until(lambda: line in self.log(cmd)))


@contextlib.asynccontextmanager
async def running_builder(settings: Settings) -> AsyncIterator[Platform]:
    async with bus.connect(settings, "builder-test") as b:
        platform = Platform(b, Builder(b, settings), Store(settings.artifacts))

        async def on_event(msg: Msg) -> None:
            platform.events.append(events.decode_event(msg.data))

        async def on_log(msg: Msg) -> None:
            record = msgspec.json.decode(msg.data, type=LogLine)
            platform.logs.setdefault(msg.subject.split(".")[2], []).append(record.line)

        # Ordered consumers read the streams, so a copy JetStream de-duplicated is never seen.
        await b.js.subscribe(f"{events.EVENTS_PREFIX}.build.>", cb=on_event, ordered_consumer=True)
        await b.js.subscribe(f"{events.LOGS_PREFIX}.>", cb=on_log, ordered_consumer=True)
        consumer = asyncio.create_task(
            b.consume([StartBuild], platform.builder.handle, durable="builder", concurrency=settings.build_concurrency)
        )
        try:
            yield platform
        finally:
            await cancel_and_wait([consumer])


def _files_in(folder: Path) -> list[str]:
    return sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file())


def _first_failure_line(lines: list[str]) -> str:
    return next(line for line in lines if line.startswith("build failed: "))


async def test_build_without_requirements_produces_an_image(settings: Settings) -> None:
    async with running_builder(settings) as platform:
        cmd = await platform.build({"predict.py": PREDICT})
        result = await platform.outcome(cmd)
        started = [e for e in platform.events if isinstance(e, BuildStarted) and e.model_id == cmd.model_id]

    assert isinstance(result, BuildSucceeded), result
    assert [e.id for e in started] == [cmd.derived_id("started")]
    assert result.id == cmd.derived_id("succeeded")
    assert any(p.startswith("msgspec==") for p in result.packages)
    image = platform.store.image(result.image)
    assert _files_in(image / "code") == ["predict.py"]
    assert (image / "runtime" / "pier" / "harness" / "loader.py").is_file()
    manifest = platform.store.manifest(result.image)
    assert manifest is not None
    assert manifest.entrypoint == ENTRYPOINT
    assert Path(manifest.python).is_file()
    assert manifest.packages == result.packages
    assert await platform.logged(cmd, f"build succeeded: image {result.image[:12]}")
    assert "build started from source " + cmd.source[:12] in platform.log(cmd)


async def test_second_build_with_the_same_requirements_reuses_the_environment(settings: Settings) -> None:
    async with running_builder(settings) as platform:
        first = await platform.outcome(await platform.build({"predict.py": PREDICT, "requirements.txt": "six\n"}))
        envs = sorted(p.name for p in (settings.artifacts / "envs").iterdir())
        changed = PREDICT + "import six\n"
        second_cmd = await platform.build({"predict.py": changed, "requirements.txt": "six\n"})
        second = await platform.outcome(second_cmd)

    assert isinstance(first, BuildSucceeded), first
    assert isinstance(second, BuildSucceeded), second
    assert any(p.startswith("six==") for p in second.packages)
    assert second.image != first.image
    assert sorted(p.name for p in (settings.artifacts / "envs").iterdir()) == envs
    manifest = platform.store.manifest(second.image)
    assert manifest is not None
    assert await platform.logged(second_cmd, f"environment {manifest.env_hash[:12]} cached")
    await platform.logged(second_cmd, f"build succeeded: image {second.image[:12]}")
    # uv ran neither a venv creation nor an install for the second build.
    log = platform.log(second_cmd)
    assert not any(line.startswith(("creating environment", "Resolved", "Installed", "Using CPython")) for line in log)


async def test_the_import_check_caches_bytecode_in_the_environment_but_never_in_the_image(
    settings: Settings,
) -> None:
    code: dict[str, str | bytes] = {
        "predict.py": "import helper\nimport six\n" + PREDICT,
        "helper.py": "X = 1\n",
        "requirements.txt": "six\n",
    }
    async with running_builder(settings) as platform:
        result = await platform.outcome(await platform.build(code))

    assert isinstance(result, BuildSucceeded), result
    assert all("==" in p for p in result.packages), result.packages  # pins only, no uv status lines
    image = platform.store.image(result.image)
    assert _files_in(image / "code") == ["helper.py", "predict.py", "requirements.txt"]
    assert not list((image / "runtime").rglob("__pycache__"))
    # Later checks and instance starts load the environment's packages from bytecode.
    manifest = platform.store.manifest(result.image)
    assert manifest is not None
    assert list(platform.store.env(manifest.env_hash).rglob("__pycache__/six.*.pyc"))


async def test_missing_function_fails_naming_it(settings: Settings) -> None:
    async with running_builder(settings) as platform:
        cmd = await platform.build({"predict.py": "def other():\n    return 1\n"})
        result = await platform.outcome(cmd)

    assert isinstance(result, BuildFailed), result
    assert result.reason == "predict.py defines no function 'predict'"
    assert result.id == cmd.derived_id("failed")
    assert await platform.logged(cmd, f"build failed: {result.reason}")
    assert _first_failure_line(platform.log(cmd)) == f"build failed: {result.reason}"


async def test_import_error_fails_with_the_exception_in_the_reason(settings: Settings) -> None:
    async with running_builder(settings) as platform:
        cmd = await platform.build({"predict.py": "import no_such_module_here\n" + PREDICT})
        result = await platform.outcome(cmd)

    assert isinstance(result, BuildFailed), result
    assert result.reason == "import of predict.py failed: ModuleNotFoundError: No module named 'no_such_module_here'"
    assert await platform.logged(cmd, f"build failed: {result.reason}")
    log = platform.log(cmd)
    assert any(line.startswith("Traceback") for line in log)
    assert _first_failure_line(log) == f"build failed: {result.reason}"
    assert [p for p in (settings.artifacts / "images").iterdir() if not p.name.startswith(".")] == []


async def test_modelignore_leaves_files_out_of_the_image(settings: Settings) -> None:
    files: dict[str, str | bytes] = {
        "predict.py": PREDICT,
        "data/weights.bin": b"\0" * 4096,
        "notes.txt": "scratch",
        "keep.txt": "shipped",
        ".modelignore": "data/\n*.txt\n!keep.txt\n",
    }
    async with running_builder(settings) as platform:
        cmd = await platform.build(files)
        result = await platform.outcome(cmd)

    assert isinstance(result, BuildSucceeded), result
    assert _files_in(platform.store.image(result.image) / "code") == [".modelignore", "keep.txt", "predict.py"]
    assert await platform.logged(cmd, ".modelignore excluded 2 files, 4.0 KiB")


async def test_tarball_escaping_the_source_is_rejected_naming_the_entry(settings: Settings) -> None:
    async with running_builder(settings) as platform:
        cmd = await platform.build({"predict.py": PREDICT, "../evil": "pwned"})
        result = await platform.outcome(cmd)

    assert isinstance(result, BuildFailed), result
    assert "'../evil'" in result.reason
    assert not (settings.artifacts / "images" / "evil").exists()
    assert not (settings.artifacts / "evil").exists()


def _member(name: str, kind: bytes, linkname: str = "") -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type, info.linkname = kind, linkname
    return info


@pytest.mark.parametrize(
    ("member", "named", "problem"),
    [
        (_member("/etc/cron.d/evil", tarfile.REGTYPE), "/etc/cron.d/evil", "absolute path"),
        (_member("a/../../evil", tarfile.REGTYPE), "a/../../evil", "outside"),
        (_member("escape", tarfile.SYMTYPE, "../../../etc/passwd"), "escape", "links outside"),
        (_member("hard", tarfile.LNKTYPE, "../outside"), "hard", "is a hard link"),
        (_member("abs-link", tarfile.SYMTYPE, "/etc/passwd"), "abs-link", "absolute path"),
        (_member("disk", tarfile.BLKTYPE), "disk", "device file"),
        (_member("tty", tarfile.CHRTYPE), "tty", "device file"),
        (_member("pipe", tarfile.FIFOTYPE), "pipe", "FIFO"),
    ],
    ids=["absolute", "dotdot", "symlink-out", "hardlink-out", "symlink-absolute", "block-dev", "char-dev", "fifo"],
)
async def test_each_kind_of_bad_tarball_entry_fails_the_build_naming_it(
    settings: Settings, member: tarfile.TarInfo, named: str, problem: str
) -> None:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        data = PREDICT.encode()
        good = tarfile.TarInfo("predict.py")
        good.size = len(data)
        tar.addfile(good, io.BytesIO(data))
        tar.addfile(member)
    async with running_builder(settings) as platform:
        cmd = StartBuild(
            model_id=uuid.uuid4().hex,
            version=1,
            source=platform.store.put_source(buffer.getvalue()),
            entrypoint=ENTRYPOINT,
        )
        await platform.bus.publish(cmd)
        result = await platform.outcome(cmd)
        assert await platform.logged(cmd, f"build failed: {result.reason}" if isinstance(result, BuildFailed) else "")

    assert isinstance(result, BuildFailed), result
    assert repr(named) in result.reason and problem in result.reason
    assert not (settings.artifacts / "images").exists() or not any(
        (p / "image.json").exists() for p in (settings.artifacts / "images").iterdir()
    )


async def test_redelivered_build_of_a_built_image_succeeds_without_rebuilding(settings: Settings) -> None:
    async with running_builder(settings) as platform:
        cmd = await platform.build({"predict.py": PREDICT})
        result = await platform.outcome(cmd)
        assert isinstance(result, BuildSucceeded), result
        manifest_file = platform.store.image(result.image) / "image.json"
        written = manifest_file.stat().st_mtime_ns

        # What JetStream does after a crash between publishing the outcome and acking the command.
        await platform.builder.handle(cmd)
        info = await platform.bus.js.stream_info(events.EVENTS_STREAM, subjects_filter=BuildSucceeded.subject())

        assert await platform.logged(cmd, f"image {result.image[:12]} already built")
        log = platform.log(cmd)

    assert len([line for line in log if line.startswith("creating environment")]) == 1
    assert manifest_file.stat().st_mtime_ns == written
    assert info.state.subjects == {BuildSucceeded.subject(): 1}


@pytest.mark.timeout(300)
async def test_a_hanging_import_does_not_hold_up_other_builds(settings: Settings) -> None:
    settings = msgspec.structs.replace(settings, build_import_timeout=3.0, build_concurrency=2)
    async with running_builder(settings) as platform:
        hanging = await platform.build({"predict.py": "import time\ntime.sleep(3600)\n" + PREDICT})
        healthy = await platform.build({"predict.py": PREDICT})
        healthy_result = await platform.outcome(healthy)
        hanging_result = await platform.outcome(hanging)

    assert isinstance(healthy_result, BuildSucceeded), healthy_result
    assert isinstance(hanging_result, BuildFailed), hanging_result
    assert hanging_result.reason == "import of predict.py took longer than 3 s"


async def test_a_builder_stopped_mid_build_leaves_no_image_and_the_redelivery_builds_it(
    settings: Settings, tmp_path: Path
) -> None:
    hold = tmp_path / "hold"
    hold.touch()
    # The import waits while `hold` exists: the build is provably in flight when the builder stops.
    slow = f"import os, time\nwhile os.path.exists({str(hold)!r}):\n    time.sleep(0.05)\n" + PREDICT
    images = settings.artifacts / "images"
    async with running_builder(settings) as platform:
        cmd = await platform.build({"predict.py": slow})
        await until(lambda: "checking that predict.py imports" in platform.log(cmd), within=BUILD_WITHIN)
    hold.unlink()
    assert list(images.iterdir()) == []

    async with running_builder(settings) as platform:
        result = await platform.outcome(cmd)
        started = [e for e in platform.events if isinstance(e, BuildStarted)]

    assert isinstance(result, BuildSucceeded), result
    assert [p.name for p in images.iterdir()] == [result.image]
    assert [e.id for e in started] == [cmd.derived_id("started")]
