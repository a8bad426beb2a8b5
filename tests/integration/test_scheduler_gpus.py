"""GPU placement in the scheduler with simulated GPUs: the queue, release on stop, and no GPU given
twice across a scheduler kill -9. Real NATS, PostgreSQL and instance processes."""

from __future__ import annotations

import contextlib
import signal
from pathlib import Path
from typing import Any

import aiohttp
import msgspec

from pier import bus
from pier.config import Settings
from pier.events import (
    GpuAsk,
    InstanceStarted,
    ModelPlaced,
    ModelWaiting,
    PlacementRejected,
    PlaceModel,
    StopModel,
    UsageRecorded,
)
from pier.spec import Entrypoint
from tests.integration.test_scheduler import (
    Running,
    Watch,
    _healthy,
    _spawn_scheduler,
    all_answer,
    invoke,
    make_image,
    no_instance_left_behind,
    scheduler_in_process,
)
from tests.support import until

__all__ = ["no_instance_left_behind"]  # the autouse fixture that stops every instance after a test

GPU_PREDICT = """
import os


def predict():
    return {"cuda": os.environ.get("CUDA_VISIBLE_DEVICES")}
"""


def gpu_place(image: str, model_id: str, count: int, instances: int = 1, gpu_type: str = "a100") -> PlaceModel:
    return PlaceModel(
        model_id=model_id,
        version=1,
        version_id=f"{model_id}-v1",
        image=image,
        entrypoint=Entrypoint(file="predict.py", function="predict"),
        instances=instances,
        gpu_type=gpu_type,
        gpu_count=count,
    )


def gpu_scheduler(settings: Settings, gpus: str) -> contextlib.AbstractAsyncContextManager[Running]:
    return scheduler_in_process(settings, gpus)


def of_model(events: list[Any], model_id: str) -> list[Any]:
    return [e for e in events if e.model_id == model_id]


async def test_second_model_waits_until_the_first_stops_then_gets_its_gpus(settings: Settings) -> None:
    image = make_image(settings, GPU_PREDICT)
    async with gpu_scheduler(settings, "a100:2") as s, aiohttp.ClientSession() as http:
        await s.bus.publish(gpu_place(image, "aaaaaaaa00000001", count=2))
        await until(lambda: of_model(s.watch.of(ModelPlaced), "aaaaaaaa00000001"), within=30)
        await s.bus.publish(gpu_place(image, "bbbbbbbb00000002", count=1))
        waiting = await until(lambda: of_model(s.watch.of(ModelWaiting), "bbbbbbbb00000002"), within=30)
        assert waiting[0].position == 1 and waiting[0].gpu_type == "a100"
        assert not of_model(s.watch.of(ModelPlaced), "bbbbbbbb00000002")
        # The plan for one more says it would wait behind it.
        reply = await s.bus.nc.request(
            "pier.scheduler.plan", msgspec.json.encode(GpuAsk(gpu_type="a100", gpu_count=1)), timeout=5
        )
        assert msgspec.json.decode(reply.data)["position"] == 2

        await s.bus.publish(StopModel(model_id="aaaaaaaa00000001", reason="stopped by a user"))
        await until(lambda: of_model(s.watch.of(ModelPlaced), "bbbbbbbb00000002"), within=30)
        started = await until(lambda: of_model(s.watch.of(InstanceStarted), "bbbbbbbb00000002"), within=30)
        assert started[0].gpu_devices in (["0"], ["1"])
        record = {started[0].instance_id: started[0]}
        await until(lambda: all_answer(http, record, settings.home), within=30)
        body = await invoke(http, started[0].address, {}, settings.home)
        assert body["result"]["cuda"] == started[0].gpu_devices[0]
        # The first one's run was metered: 2 GPUs for as long as it ran.
        usage = await until(lambda: of_model(s.watch.of(UsageRecorded), "aaaaaaaa00000001"), within=30)
        assert usage[0].gpu_count == 2 and usage[0].gpu_seconds == usage[0].instance_seconds * 2


async def test_a_waiting_model_that_is_stopped_leaves_the_line(settings: Settings) -> None:
    image = make_image(settings, GPU_PREDICT)
    async with gpu_scheduler(settings, "a100:1") as s:
        await s.bus.publish(gpu_place(image, "aaaaaaaa00000001", count=1))
        await until(lambda: of_model(s.watch.of(ModelPlaced), "aaaaaaaa00000001"), within=30)
        await s.bus.publish(gpu_place(image, "bbbbbbbb00000002", count=1))
        await s.bus.publish(gpu_place(image, "cccccccc00000003", count=1))
        waiting = await until(lambda: of_model(s.watch.of(ModelWaiting), "cccccccc00000003"), within=30)
        assert waiting[-1].position == 2
        await s.bus.publish(StopModel(model_id="bbbbbbbb00000002"))
        await until(lambda: [e.position for e in of_model(s.watch.of(ModelWaiting), "cccccccc00000003")] == [2, 1])
        assert not of_model(s.watch.of(ModelPlaced), "bbbbbbbb00000002")


async def test_a_request_bigger_than_the_inventory_is_rejected(settings: Settings) -> None:
    image = make_image(settings, GPU_PREDICT)
    async with gpu_scheduler(settings, "a100:2") as s:
        await s.bus.publish(gpu_place(image, "aaaaaaaa00000001", count=2, instances=2))
        rejected = await until(lambda: s.watch.of(PlacementRejected), within=30)
        assert "can never fit" in rejected[0].reason


async def test_no_gpu_is_given_twice_across_a_scheduler_kill_9(settings: Settings, tmp_path: Path) -> None:
    image = make_image(settings, GPU_PREDICT)
    settings = msgspec.structs.replace(settings, gpus="a100:2")
    async with bus.connect(settings, "test") as b:
        watch = Watch()
        await watch.attach(b)
        first = _spawn_scheduler(settings, tmp_path / "first.log")
        second = None
        try:
            await until(lambda: _healthy(b), within=30)
            await b.publish(gpu_place(image, "aaaaaaaa00000001", count=1, instances=2))
            await until(lambda: len(watch.of(InstanceStarted)) == 2, within=30)
            first.send_signal(signal.SIGKILL)
            first.wait()
            # Asked while no scheduler runs: there is no GPU left for it.
            await b.publish(gpu_place(image, "bbbbbbbb00000002", count=1))
            second = _spawn_scheduler(settings, tmp_path / "second.log")
            await until(lambda: of_model(watch.of(ModelWaiting), "bbbbbbbb00000002"), within=30)
            assert not of_model(watch.of(ModelPlaced), "bbbbbbbb00000002")
            # The outbox may publish an event again after a kill -9 (JetStream drops the copy, a core
            # NATS subscriber sees it): count each event once, by its id.
            started_once = {e.id: e for e in watch.of(InstanceStarted)}.values()
            devices = [d for e in started_once for d in e.gpu_devices]
            assert sorted(devices) == ["0", "1"]

            await b.publish(StopModel(model_id="aaaaaaaa00000001"))
            started = await until(lambda: of_model(watch.of(InstanceStarted), "bbbbbbbb00000002"), within=30)
            assert started[0].gpu_devices in (["0"], ["1"])
        finally:
            for proc in (first, second):
                if proc is not None and proc.poll() is None:
                    proc.kill()
                    proc.wait()
