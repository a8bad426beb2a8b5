"""The scheduler with the local runtime: real NATS, PostgreSQL and instance processes."""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import msgspec
import pytest

from pier import bus, config, db, events, outbox
from pier.artifacts import ImageManifest, Store
from pier.bus import Bus
from pier.config import Settings
from pier.events import (
    InstanceRecord,
    InstanceStarted,
    InstanceStopped,
    ModelPlaced,
    ModelStopped,
    PlaceModel,
    RestartInstance,
    StopModel,
)
from pier.spec import Entrypoint
from pier.tasks import cancel_and_wait
from services.scheduler.__main__ import MIGRATIONS
from services.scheduler.controller import OUTBOX_CHANNEL, Controller
from services.scheduler.inventory import parse
from services.scheduler.logship import LogShipper
from services.scheduler.runtimes.local import LocalRuntime, stop_all
from tests.support import instance_headers, until

REPO = Path(__file__).resolve().parents[2]
LIB = REPO / "libs" / "pier"

PREDICT = """
import os
import pathlib

print("model module imported", flush=True)


def predict(x=0, write=None):
    if write:
        pathlib.Path(write).write_text("written by the model")
    print(f"predict called with {x}", flush=True)
    return {"doubled": x * 2, "files": sorted(os.listdir("."))}
"""

BROKEN = """
raise RuntimeError("boom while importing the model")
"""


def make_image(settings: Settings, source: str, digest: str = "img-test") -> str:
    """An image as the builder would leave it, with the test's interpreter as its environment."""
    image = Store(settings.artifacts).image(digest)
    (image / "code").mkdir(parents=True)
    (image / "code" / "predict.py").write_text(source)
    runtime = image / "runtime" / "pier"
    (runtime / "harness").mkdir(parents=True)
    for name in ("__init__.py", "spec.py"):
        shutil.copy(LIB / name, runtime / name)
    for path in (LIB / "harness").glob("*.py"):
        shutil.copy(path, runtime / "harness" / path.name)
    entrypoint = Entrypoint(file="predict.py", function="predict")
    manifest = ImageManifest(digest=digest, code_digest="c", env_hash="e", python=sys.executable, entrypoint=entrypoint)
    (image / "image.json").write_bytes(msgspec.json.encode(manifest))
    return digest


def place(image: str, instances: int = 1, workers: int = 1, model_id: str = "0123456789abcdef") -> PlaceModel:
    return PlaceModel(
        model_id=model_id,
        version=1,
        version_id="v1-id",
        image=image,
        entrypoint=Entrypoint(file="predict.py", function="predict"),
        instances=instances,
        workers=workers,
    )


def running(pid: int) -> bool:
    """A live process (zombies count as gone: only their parent's bookkeeping is left)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat[stat.rindex(")") + 2] not in "ZX"


class Watch:
    """Everything published on events and logs subjects while a test runs."""

    def __init__(self) -> None:
        self.events: list[events.AnyEvent] = []
        self.logs: list[events.LogBatch] = []

    async def attach(self, b: Bus) -> None:
        async def on_event(msg: Any) -> None:
            self.events.append(events.decode_event(msg.data))

        async def on_log(msg: Any) -> None:
            # The shipper sends instance logs in batches; anything else comes one line at a time.
            if msg.subject.endswith(".instance"):
                self.logs.append(msgspec.json.decode(msg.data, type=events.LogBatch))
            else:
                one = msgspec.json.decode(msg.data, type=events.LogLine)
                self.logs.append(events.LogBatch(at=one.at, kind=one.kind, lines=[one.line], version=one.version))

        await b.nc.subscribe(f"{events.EVENTS_PREFIX}.>", cb=on_event)
        await b.nc.subscribe(f"{events.LOGS_PREFIX}.>", cb=on_log)

    def of(self, kind: type[Any]) -> list[Any]:
        return [e for e in self.events if isinstance(e, kind)]

    def lines(self) -> list[str]:
        return [line for batch in self.logs for line in batch.lines]


class Running:
    def __init__(self, b: Bus, controller: Controller, watch: Watch) -> None:
        self.bus, self.controller, self.watch = b, controller, watch

    async def records(self) -> dict[str, InstanceRecord]:
        kv = await self.bus.kv(events.INSTANCES_BUCKET)
        out = {}
        with contextlib.suppress(Exception):  # "no keys found" on an empty bucket
            for key in await kv.keys():
                entry = await kv.get(key)
                if entry.value:
                    out[key] = msgspec.json.decode(entry.value, type=InstanceRecord)
        return out

    async def rows(self) -> list[Any]:
        return list(await self.controller.pool.fetch("SELECT * FROM instances ORDER BY instance_id"))


@pytest.fixture(autouse=True)
def no_instance_left_behind(settings: Settings) -> Iterator[None]:
    yield
    stop_all(settings.home, timeout=5.0)


@contextlib.asynccontextmanager
async def scheduler_in_process(settings: Settings, gpus: str = "") -> AsyncIterator[Running]:
    """The scheduler's parts, wired as __main__ wires them, in this test's loop; `gpus` declares
    simulated GPUs as PIER_GPUS does."""
    async with bus.connect(settings, "test-scheduler") as b:
        watch = Watch()
        await watch.attach(b)
        pool = await db.create_pool(settings, "scheduler")
        try:
            await db.migrate(pool, MIGRATIONS)
            controller = Controller(pool, b, LocalRuntime(settings), parse(gpus) if gpus else None)
            await controller.reconcile()
            await controller.serve_plans()
            tasks = [
                asyncio.create_task(outbox.Relay(pool, b, OUTBOX_CHANNEL).run()),
                asyncio.create_task(
                    b.consume([PlaceModel, StopModel, RestartInstance], controller.handle, durable="scheduler")
                ),
                asyncio.create_task(controller.watch()),
                asyncio.create_task(LogShipper(pool, b, settings.home).run()),
            ]
            try:
                yield Running(b, controller, watch)
            finally:
                await cancel_and_wait(tasks)
        finally:
            await db.close_pool(pool)


async def get(session: aiohttp.ClientSession, address: str, path: str, home: Path) -> int:
    try:
        async with session.get(f"http://{address}{path}", headers=instance_headers(home, address)) as resp:
            return resp.status
    except aiohttp.ClientError:
        return 0


async def invoke(session: aiohttp.ClientSession, address: str, data: dict[str, Any], home: Path) -> Any:
    headers = instance_headers(home, address)
    async with session.post(f"http://{address}/model", json={"data": data}, headers=headers) as resp:
        assert resp.status == 200, await resp.text()
        return await resp.json()


async def all_answer(session: aiohttp.ClientSession, records: dict[str, InstanceRecord], home: Path) -> bool:
    statuses = [await get(session, r.address, "/ping", home) for r in records.values()]
    return all(s == 200 for s in statuses)


async def test_place_starts_instances_that_answer_and_a_repeat_starts_nothing(settings: Settings) -> None:
    image = make_image(settings, PREDICT)
    async with scheduler_in_process(settings) as s, aiohttp.ClientSession() as http:
        cmd = place(image, instances=2)
        await s.bus.publish(cmd)
        records = await until(lambda: _at_least(s.records(), 2), within=30)
        assert {r.state for r in records.values()} == {"starting"}
        assert all(key.startswith("01234567-v1-") for key in records)
        await until(lambda: all_answer(http, records, settings.home), within=30)
        body = await invoke(http, next(iter(records.values())).address, {"x": 21}, settings.home)
        assert body["result"]["doubled"] == 42
        assert body["release"] == {"model_version": "v1-id", "model_version_number": 1}

        await until(lambda: len(s.watch.of(InstanceStarted)) == 2 and s.watch.of(ModelPlaced))
        assert sorted(s.watch.of(ModelPlaced)[0].instances) == sorted(records)
        pids = {r["pid"] for r in await s.rows()}

        # The same command redelivered, and a second command for the same version.
        await s.controller.handle(cmd)
        again = place(image, instances=2)
        await s.bus.publish(again)
        await until(lambda: _consumed(s.bus, "scheduler"))
        rows = await s.rows()
        assert len(rows) == 2
        assert {r["pid"] for r in rows} == pids
        assert all(running(pid) for pid in pids)
        assert len(s.watch.of(InstanceStarted)) == 2
        assert len(s.watch.of(ModelPlaced)) == 1

        # What the instance printed reaches the logs stream, tagged with its instance.
        await until(lambda: any("predict called with 21" in line for line in s.watch.lines()))
        entry = next(e for e in s.watch.logs if any("predict called with 21" in line for line in e.lines))
        assert entry.kind == "instance" and entry.version == 1 and entry.instance_id in records


async def test_stop_model_stops_processes_and_removes_instances(settings: Settings) -> None:
    image = make_image(settings, PREDICT)
    async with scheduler_in_process(settings) as s:
        await s.bus.publish(place(image, instances=2, workers=2))
        await until(lambda: _at_least(s.records(), 2), within=30)
        pids = [r["pid"] for r in await s.rows()]
        stop = StopModel(model_id="0123456789abcdef", reason="stopped by a user")
        await s.bus.publish(stop)
        await until(lambda: s.watch.of(ModelStopped), within=30)
        assert not any(running(pid) for pid in pids)
        assert await s.records() == {}
        assert {r["state"] for r in await s.rows()} == {"stopped"}
        stopped = s.watch.of(InstanceStopped)
        assert len(stopped) == 2 and {e.reason for e in stopped} == {"stopped by a user"}
        assert not any((settings.home / "instances" / r["instance_id"] / "work").exists() for r in await s.rows())

        await s.controller.handle(stop)  # redelivered: nothing more happens
        await until(lambda: _outbox_empty(s))
        assert len(s.watch.of(InstanceStopped)) == 2


async def test_restart_gives_a_clean_work_dir_and_a_new_port(settings: Settings) -> None:
    image = make_image(settings, PREDICT)
    async with scheduler_in_process(settings) as s, aiohttp.ClientSession() as http:
        await s.bus.publish(place(image))
        (instance_id, record), *_ = (await until(lambda: _at_least(s.records(), 1), within=30)).items()
        await until(lambda: all_answer(http, {instance_id: record}, settings.home), within=30)
        body = await invoke(http, record.address, {"write": "scratch.txt"}, settings.home)
        assert "scratch.txt" in body["result"]["files"]

        await s.bus.publish(RestartInstance(instance_id=instance_id, reason="unhealthy"))
        await until(lambda: len(s.watch.of(InstanceStarted)) == 2, within=30)
        restarted = s.watch.of(InstanceStarted)[-1]
        assert restarted.instance_id == instance_id and restarted.address != record.address
        assert [e.reason for e in s.watch.of(InstanceStopped)] == ["restarting: unhealthy"]
        assert (await s.records())[instance_id].address == restarted.address
        await until(lambda: get(http, restarted.address, "/ping", settings.home), within=30)
        body = await invoke(http, restarted.address, {"x": 1}, settings.home)
        assert "scratch.txt" not in body["result"]["files"]
        assert not (settings.home / "instances" / instance_id / "work" / "scratch.txt").exists()
        assert not await get(http, record.address, "/ping", settings.home)


async def test_instance_that_exits_is_reported_with_its_last_log_line(settings: Settings) -> None:
    image = make_image(settings, BROKEN)
    async with scheduler_in_process(settings) as s:
        await s.bus.publish(place(image))
        stopped = await until(lambda: s.watch.of(InstanceStopped), within=30)
        assert stopped[0].reason.startswith("exited with status 3: ")
        assert stopped[0].reason.endswith("RuntimeError: boom while importing the model")
        assert await s.records() == {}
        assert [r["state"] for r in await s.rows()] == ["exited"]
        # The traceback is in the instance's logs too, and the shipper finishes the closed log.
        await until(lambda: any("boom while importing" in line for line in s.watch.lines()))
        await until(lambda: _log_closed(s))
        assert not s.watch.of(InstanceStarted)[1:]


async def test_an_instance_whose_image_is_missing_is_reported_as_exited(settings: Settings) -> None:
    async with scheduler_in_process(settings) as s:
        await s.bus.publish(place("no-such-image"))
        stopped = await until(lambda: s.watch.of(InstanceStopped), within=30)
        assert stopped[0].reason.startswith("exited before it started: image no-such-image does not exist")
        assert [r["state"] for r in await s.rows()] == ["exited"]
        await until(lambda: _consumed(s.bus, "scheduler"))  # handled once, not retried


async def test_a_new_scheduler_adopts_live_instances_after_kill_9(settings: Settings, tmp_path: Path) -> None:
    image = make_image(settings, PREDICT)
    async with bus.connect(settings, "test") as b, aiohttp.ClientSession() as http:
        watch = Watch()
        await watch.attach(b)
        first = _spawn_scheduler(settings, tmp_path / "first.log")
        second = None
        try:
            await until(lambda: _healthy(b), within=30)
            await b.publish(place(image, instances=2))
            await until(lambda: len(watch.of(InstanceStarted)) == 2, within=30)
            started = {e.instance_id: e.address for e in watch.of(InstanceStarted)}
            records = {i: InstanceRecord(instance_id=i, model_id="m", version=1, address=a) for i, a in started.items()}
            await until(lambda: all_answer(http, records, settings.home), within=30)
            await until(lambda: sum("harness: serving" in line for line in watch.lines()) == 2)
            pids = _pids(settings, started)

            first.send_signal(signal.SIGKILL)
            first.wait()
            assert all(running(pid) for pid in pids.values())  # instances outlive the scheduler
            # One instance dies while no scheduler is watching: the next one starts it again.
            dead, alive = sorted(pids)
            os.killpg(pids[dead], signal.SIGKILL)
            await until(lambda: not running(pids[dead]))

            second = _spawn_scheduler(settings, tmp_path / "second.log")
            await until(lambda: len(watch.of(InstanceStarted)) == 3, within=30)
            await until(lambda: _healthy(b), within=30)
            assert watch.of(InstanceStarted)[-1].instance_id == dead
            assert _pids(settings, started)[alive] == pids[alive]
            kv = await b.kv(events.INSTANCES_BUCKET)
            assert msgspec.json.decode((await kv.get(alive)).value, type=InstanceRecord).address == started[alive]
            assert await get(http, started[alive], "/ping", settings.home) == 200
            # The adopted instance's log was not shipped a second time.
            await until(lambda: sum("harness: serving" in line for line in watch.lines()) == 3)
            assert sum("model module imported" in line for line in watch.lines()) == 3
            pids = _pids(settings, started)
        finally:
            for proc in (first, second):
                if proc is not None and proc.poll() is None:
                    proc.kill()
                    proc.wait()
        assert stop_all(settings.home) == 2
        assert not any(running(pid) for pid in pids.values())


async def test_stop_all_leaves_no_instance_process(settings: Settings) -> None:
    image = make_image(settings, PREDICT)
    async with scheduler_in_process(settings) as s:
        await s.bus.publish(place(image, instances=2, workers=2))
        await until(lambda: _at_least(s.records(), 2), within=30)
        # The KV records can land before each row's pid is committed: wait for both pids.
        rows = await until(lambda: _with_pids(s, 2), within=30)
        leaders = [r["pid"] for r in rows]
        try:
            await until(lambda: all(len(_group(pid)) == 4 for pid in leaders), within=30)  # leader, output, 2 workers
        except TimeoutError:
            logs = [p.read_text() for p in (settings.home / "instances").glob("*/instance.log")]
            raise AssertionError(f"process groups {[_group(p) for p in leaders]}; logs: {logs}") from None
        members = [pid for leader in leaders for pid in _group(leader)]
        assert await asyncio.to_thread(stop_all, settings.home) == 2
        assert not any(running(pid) for pid in members)
        assert await asyncio.to_thread(stop_all, settings.home) == 0


# ---- helpers ------------------------------------------------------------------------------------


async def _with_pids(s: Running, n: int) -> list[Any] | None:
    rows = await s.rows()
    return rows if len(rows) >= n and all(r["pid"] for r in rows) else None


async def _at_least(records: Any, n: int) -> dict[str, InstanceRecord] | None:
    found: dict[str, InstanceRecord] = await records
    return found if len(found) >= n else None


async def _consumed(b: Bus, durable: str) -> bool:
    info = await b.js.consumer_info(events.CMD_STREAM, durable)
    return info.num_pending == 0 and info.num_ack_pending == 0


async def _outbox_empty(s: Running) -> bool:
    return await s.controller.pool.fetchval("SELECT count(*) FROM outbox") == 0


async def _log_closed(s: Running) -> bool:
    return not await s.controller.pool.fetchval("SELECT bool_or(log_open) FROM instances")


async def _healthy(b: Bus) -> bool:
    try:
        await b.nc.request("pier.health.scheduler", b"", timeout=0.5)
    except Exception:
        return False
    return True


def _spawn_scheduler(settings: Settings, log_path: Path) -> subprocess.Popen[bytes]:
    env = {**os.environ, **config.to_env(settings)}
    with log_path.open("ab") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "services.scheduler"],
            cwd=REPO,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )


def _pids(settings: Settings, instance_ids: Any) -> dict[str, int]:
    out = {}
    for instance_id in instance_ids:
        data = (settings.home / "instances" / instance_id / "pid").read_bytes()
        out[instance_id] = int(msgspec.json.decode(data)["pid"])
    return out


def _group(pgid: int) -> list[int]:
    members = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and running(int(entry.name)):
            # A process that ends meanwhile: FileNotFoundError, or ESRCH (ProcessLookupError) mid-read.
            with contextlib.suppress(OSError):
                stat = (entry / "stat").read_text()
                if int(stat[stat.rindex(")") + 2 :].split()[2]) == pgid:
                    members.append(int(entry.name))
    return members


async def test_a_cpu_placement_accepted_by_a_scheduler_killed_before_placing_it_starts_at_the_next_start(
    settings: Settings,
) -> None:
    """A scheduler records a placement as waiting, then places it, in two transactions; killed with
    SIGKILL between them it left a CPU request `waiting`. The next scheduler died at start on it,
    again and again (the wait queue is for GPU requests), and the deploy never started."""
    image = make_image(settings, PREDICT)
    cmd = place(image)
    pool = await db.create_pool(settings, "scheduler")
    try:
        await db.migrate(pool, MIGRATIONS)
        async with pool.acquire() as conn, conn.transaction():
            await outbox.first_time(conn, cmd.id)
            await conn.execute(
                "INSERT INTO requests (id, model_id, version, gpu_type, gpu_count, instances, command, state)"
                " VALUES ($1, $2, $3, NULL, 0, 1, $4, 'waiting')",
                cmd.id,
                cmd.model_id,
                cmd.version,
                msgspec.json.encode(cmd).decode(),
            )
    finally:
        await db.close_pool(pool)
    async with scheduler_in_process(settings) as s:
        records = await until(lambda: _at_least(s.records(), 1), within=30)
        assert [r.model_id for r in records.values()] == [cmd.model_id]
        state = await s.controller.pool.fetchval("SELECT state FROM requests WHERE id = $1", cmd.id)
        assert state == "placed"
