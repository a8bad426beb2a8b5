"""The local driver's resource limits: a quota applied to the instance's processes (and the instance's
log saying how), and disk_size enforced on its working directory. Real NATS, PostgreSQL and
instance processes."""

from __future__ import annotations

import asyncio
import errno
import os
import re
import signal
import socket
from pathlib import Path

import aiohttp
import msgspec
import pytest

from pier.config import Settings
from pier.events import InstanceRecord, InstanceStarted, InstanceStopped, PlaceModel
from pier.spec import Entrypoint
from services.scheduler.runtimes.local import InstanceSpec, LocalRuntime, cgroup_dir
from tests.integration.test_scheduler import PREDICT, all_answer, invoke, make_image, no_instance_left_behind
from tests.integration.test_scheduler_gpus import gpu_scheduler
from tests.support import until

__all__ = ["no_instance_left_behind"]  # the autouse fixture that stops every instance after a test

GIB = 1 << 30
MIB = 1 << 20

# Writes 4 MiB into its working directory as soon as it is imported.
FILLS_ITS_DISK = """
import pathlib

pathlib.Path("filler.bin").write_bytes(b"x" * (4 * 1024 * 1024))


def predict():
    return "still here"
"""


def limited(image: str, model_id: str, **limits: object) -> PlaceModel:
    return PlaceModel(
        model_id=model_id,
        version=1,
        version_id=f"{model_id}-v1",
        image=image,
        entrypoint=Entrypoint(file="predict.py", function="predict"),
        instances=1,
        **limits,  # type: ignore[arg-type]
    )


async def test_a_quota_is_applied_and_the_instance_log_says_how(settings: Settings) -> None:
    image = make_image(settings, PREDICT)
    async with gpu_scheduler(settings, "") as s, aiohttp.ClientSession() as http:
        await s.bus.publish(limited(image, "aaaaaaaa00000001", quota="small", cpu=1.0, memory=4 * GIB))
        [started] = await until(lambda: s.watch.of(InstanceStarted), within=30)
        record = InstanceRecord(instance_id=started.instance_id, model_id="m", version=1, address=started.address)
        await until(lambda: all_answer(http, {started.instance_id: record}, settings.home), within=30)

        log = LocalRuntime(settings).log_path(started.instance_id).read_text()
        assert "cpu 1; memory 4294967296 bytes" in log
        pid = (await s.rows())[0]["pid"]
        if cgroup_dir() is None:
            # No usable cgroups v2 (this host has v1 only): affinity and rlimits, and the log says so.
            assert "pier: quota small applied with CPU affinity and rlimits (cgroups v2 not available)" in log
            assert len(os.sched_getaffinity(pid)) == 1
            assert _address_space_limit(pid) == (4 * GIB, 4 * GIB)
        else:
            assert "pier: quota small applied with cgroups v2" in log


async def test_an_instance_that_writes_more_than_its_disk_size_fails_with_that_reason(settings: Settings) -> None:
    image = make_image(settings, FILLS_ITS_DISK)
    async with gpu_scheduler(settings, "") as s:
        await s.bus.publish(limited(image, "aaaaaaaa00000001", disk_size=1 * MIB))
        [started] = await until(lambda: s.watch.of(InstanceStarted), within=30)
        [stopped] = await until(lambda: s.watch.of(InstanceStopped), within=30)
        assert stopped.instance_id == started.instance_id
        assert stopped.reason.startswith("exited")  # what the monitor and the api treat as a failure
        assert f"over its disk_size of {MIB} bytes" in stopped.reason
        [row] = await s.rows()
        assert row["state"] == "exited" and "disk_size" in row["reason"]
        log = LocalRuntime(settings).log_path(started.instance_id).read_text()
        assert "pier: stopping the instance: disk use of" in log


async def test_an_instance_within_its_disk_size_keeps_running(settings: Settings) -> None:
    image = make_image(settings, FILLS_ITS_DISK)
    async with gpu_scheduler(settings, "") as s:
        await s.bus.publish(limited(image, "aaaaaaaa00000001", disk_size=64 * MIB))
        [started] = await until(lambda: s.watch.of(InstanceStarted), within=30)
        runtime = LocalRuntime(settings)
        # The file is written and measured (the watcher has looked at it) and nothing was stopped.
        await until(lambda: runtime.disk_usage(started.instance_id) >= 4 * MIB, within=30)
        rounds = s.controller._rounds
        await until(lambda: s.controller._rounds >= rounds + 8, within=30)
        assert not s.watch.of(InstanceStopped)


def _address_space_limit(pid: int) -> tuple[int, int]:
    """RLIMIT_AS of a process, from /proc: prlimit() of another uid's process needs CAP_SYS_RESOURCE."""
    for line in Path(f"/proc/{pid}/limits").read_text().splitlines():
        if line.startswith("Max address space"):
            soft, hard = line.split()[3:5]
            return int(soft), int(hard)
    raise AssertionError(f"no address space limit in /proc/{pid}/limits")


# Prints 4 MiB as soon as it is imported, then tells what request-log buffer it was given.
FLOODS_ITS_OUTPUT = """
import os
import sys

for _ in range(4096):
    sys.stdout.write("z" * 1023 + "\\n")
sys.stdout.flush()


def predict():
    return os.environ.get("PIER_REQUEST_LOG_BUFFER")
"""


async def test_output_past_the_rate_is_cut_and_counted_and_the_instance_serves(settings: Settings) -> None:
    settings = msgspec.structs.replace(settings, instance_output_rate=64 * 1024, request_log_buffer=123)
    image = make_image(settings, FLOODS_ITS_OUTPUT)
    async with gpu_scheduler(settings, "") as s, aiohttp.ClientSession() as http:
        await s.bus.publish(limited(image, "aaaaaaaa00000001"))
        [started] = await until(lambda: s.watch.of(InstanceStarted), within=30)
        record = InstanceRecord(instance_id=started.instance_id, model_id="m", version=1, address=started.address)
        await until(lambda: all_answer(http, {started.instance_id: record}, settings.home), within=30)
        body = await invoke(http, started.address, {}, settings.home)
        assert body["result"] == "123"  # PIER_REQUEST_LOG_BUFFER reaches the instance

        path = LocalRuntime(settings).log_path(started.instance_id)

        def accounted() -> bool:  # every byte printed is in the log or counted as cut (reported each second)
            log = path.read_text()
            return log.count("z" * 1023) * 1024 + _cut(log) == 4096 * 1024

        await until(accounted, within=30)
        assert 0 < path.read_text().count("z" * 1023) * 1024 < 4096 * 1024


def _cut(log: str) -> int:
    return sum(int(n) for n in re.findall(r"^pier: cut (\d+) bytes of output", log, re.MULTILINE))


async def test_an_instance_is_a_process_group_of_its_own_in_the_platforms_session(settings: Settings) -> None:
    # Its own group: one signal stops it with its workers. The platform's session: to the kernel a
    # session is an autogroup, scheduled as one; the gateway and the instance share the platform's.
    image = make_image(settings, PREDICT)
    async with gpu_scheduler(settings, "") as s:
        await s.bus.publish(limited(image, "aaaaaaaa00000001"))
        await until(lambda: s.watch.of(InstanceStarted), within=30)
        pid = (await s.rows())[0]["pid"]
        assert os.getpgid(pid) == pid
        assert os.getsid(pid) == os.getsid(0)


# Takes a while to import, as a model loading its weights does.
SLOW_TO_IMPORT = """
import time

time.sleep(3)


def predict():
    return "loaded"
"""


async def test_an_instance_holds_its_port_from_the_start_so_nothing_else_can_take_it(settings: Settings) -> None:
    # The port used to be only chosen by the runtime and bound by the harness once the model had
    # loaded: anything on the host could take it meanwhile, and the run failed with "address already
    # in use" (seen in the suite, two platforms on one host).
    image = make_image(settings, SLOW_TO_IMPORT)
    runtime = LocalRuntime(settings)
    spec = InstanceSpec(
        instance_id="port-held", model_id="m", version=1, version_id="v1", image=image,
        entrypoint=Entrypoint(file="predict.py", function="predict"),
    )  # fmt: skip
    handle = await runtime.start(spec)
    try:
        with socket.socket() as thief, pytest.raises(OSError) as taken:
            thief.bind(("127.0.0.1", handle.port))
        assert taken.value.errno == errno.EADDRINUSE
        record = InstanceRecord(instance_id="port-held", model_id="m", version=1, address=handle.address)
        async with aiohttp.ClientSession() as http:
            await until(lambda: all_answer(http, {"port-held": record}, settings.home), within=30)
            assert (await invoke(http, handle.address, {}, settings.home))["result"] == "loaded"
    finally:
        await runtime.stop("port-held")


async def test_a_run_no_scheduler_recorded_is_stopped_before_the_instance_starts_again(settings: Settings) -> None:
    # A scheduler killed between spawning a run and writing its pid file left the run going, and the
    # next scheduler started the instance again beside it: the fault suite saw it run twice.
    runtime = LocalRuntime(settings)
    work = runtime.instance_dir("twice") / "work"
    work.mkdir(parents=True)
    left = await asyncio.create_subprocess_exec("sleep", "300", cwd=work, start_new_session=True)
    try:
        spec = InstanceSpec(
            instance_id="twice", model_id="m", version=1, version_id="v1", image=make_image(settings, PREDICT),
            entrypoint=Entrypoint(file="predict.py", function="predict"),
        )  # fmt: skip
        await runtime.start(spec)
        try:
            assert await asyncio.wait_for(left.wait(), 10) == -signal.SIGKILL
            assert "stopped 1 process(es) of a run no scheduler recorded" in runtime.log_path("twice").read_text()
        finally:
            await runtime.stop("twice")
    finally:
        if left.returncode is None:
            left.kill()
            await left.wait()
