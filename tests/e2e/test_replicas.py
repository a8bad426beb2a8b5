"""`PIER_REPLICAS=2 make up`: two of each service on one machine, and the leading scheduler killed
with SIGKILL under a stream of deploys and calls. The standby takes over: every deploy finishes,
every call is answered 200 or 503, and no GPU (simulated) is handed to two instances."""

from __future__ import annotations

import os
import signal
import threading
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from .conftest import EXAMPLES
from .test_supervisor import MakeUp, _platform_pids, _until


@pytest.fixture
def two_of_each(tmp_path: Path) -> Iterator[MakeUp]:
    up = MakeUp(tmp_path)
    # Two gateways too, however many CPUs the machine has (make up runs one per CPU, up to 4).
    up.env.update({"PIER_REPLICAS": "2", "PIER_GATEWAY_PROCESSES": "2", "PIER_GPUS": "a100:2"})
    try:
        yield up
    finally:
        up.kill_all()


def _pids_of(up: MakeUp, service: str) -> list[int]:
    needle = f"services.{service}".encode()
    return [pid for pid in _platform_pids(up.home) if needle in Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")]


def _log_of(pid: int) -> str:
    """A service's log file is its stdout (the supervisor opens one per replica)."""
    return Path(os.readlink(f"/proc/{pid}/fd/1")).read_text(errors="replace")


def _leader(up: MakeUp) -> int:
    # The standby's line says "another scheduler leads"; only the leader's says "leading".
    leading = [pid for pid in _pids_of(up, "scheduler") if "leading" in _log_of(pid)]
    assert len(leading) == 1, f"expected one leading scheduler, got {leading}"
    return leading[0]


def _instance_devices(up: MakeUp) -> list[str]:
    """The GPUs each live instance was given (its CUDA_VISIBLE_DEVICES), one entry per GPU: an
    instance counts once however many processes it runs."""
    given: dict[str, list[str]] = {}
    for pid in up.instance_pids():
        try:
            entries = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
        except OSError:
            continue
        environ = dict(e.decode(errors="replace").split("=", 1) for e in entries if b"=" in e)
        if environ.get("CUDA_VISIBLE_DEVICES") and "PIER_INSTANCE_ID" in environ:
            given[environ["PIER_INSTANCE_ID"]] = environ["CUDA_VISIBLE_DEVICES"].split(",")
    return [device for devices in given.values() for device in devices]


def _deploy(up: MakeUp, name: str, *extra: str) -> None:
    done = up.pier(
        "deploy", str(EXAMPLES / "hello"), "--name", name, "--file", "predict.py", "--function", "predict",
        "--instances", "1", "--unrestricted", *extra,
    )  # fmt: skip
    assert done.returncode == 0, f"deploy {name}: {done.stdout}{done.stderr}"


def test_the_standby_scheduler_takes_over_with_every_deploy_done_and_no_gpu_twice(two_of_each: MakeUp) -> None:
    up = two_of_each
    up.start()
    for service in ("api", "builder", "scheduler", "monitor", "gateway"):
        assert len(_pids_of(up, service)) == 2, f"expected two {service} processes"
    _deploy(up, "hello")

    statuses: Counter[str] = Counter()
    stop = threading.Event()
    url = up.client().gateway_url + "/models/hello/latest/model"

    def calls() -> None:
        while not stop.is_set():
            request = urllib.request.Request(url, data=b'{"data": {"name": "Ada"}}', method="POST")
            request.add_header("Content-Type", "application/json")
            try:
                with urllib.request.urlopen(request, timeout=30) as answer:
                    statuses[str(answer.status)] += 1
            except urllib.error.HTTPError as exc:
                statuses[str(exc.code)] += 1
            except OSError as exc:
                statuses[f"no answer: {exc}"] += 1

    leader = _leader(up)
    standby = next(pid for pid in _pids_of(up, "scheduler") if pid != leader)
    with ThreadPoolExecutor(4) as pool:
        callers = [pool.submit(calls) for _ in range(2)]
        try:
            # Two GPU model APIs fill the two simulated GPUs, a third must wait: the kill lands while
            # the first is being built or placed.
            deploys = [pool.submit(_deploy, up, f"gpu{i}", "--gpu-type", "a100", "--gpu-count", "1") for i in range(2)]
            # hello's instance, then the first GPU model API's: the second is on its way.
            _until("a GPU instance to start", lambda: _log_of(leader).count("instance started") >= 2, timeout=180)
            os.kill(leader, signal.SIGKILL)
            for deploy in deploys:
                deploy.result(timeout=300)
            _until("the standby to lead", lambda: "leading" in _log_of(standby), timeout=60)
            _deploy(up, "gpu2", "--gpu-type", "a100", "--gpu-count", "1")
        finally:
            stop.set()
            for caller in callers:
                caller.result(timeout=60)

    client = up.client()
    states = {name: client.model(name)["state"] for name in ("gpu0", "gpu1", "gpu2", "hello")}
    assert states == {"gpu0": "running", "gpu1": "running", "gpu2": "waiting", "hello": "running"}, states
    devices = _instance_devices(up)
    assert sorted(devices) == ["0", "1"], f"GPUs of the live instances: {devices}"
    assert set(statuses) <= {"200", "503"}, f"answers while the scheduler failed over: {dict(statuses)}"
    assert statuses["200"] > 0

    # The api's /metrics asks every replica: two of each answer; of the schedulers only the
    # leader (a standby answers nothing until it leads).
    with urllib.request.urlopen(client.api_url + "/metrics", timeout=10) as answer:
        page = answer.read().decode()
    up = {s: f'pier_service_up{{service="{s}"}} {n}' for s, n in (("api", 2), ("builder", 2), ("monitor", 2))}
    up["scheduler"] = 'pier_service_up{service="scheduler"} 1'
    for service, line in up.items():
        assert line in page.splitlines(), f"{service}: {[x for x in page.splitlines() if 'service_up' in x]}"
    # The new leader's view of the GPUs, as ops see it: both in use, one model API waiting for one.
    for sample, value in (
        ('pier_scheduler_gpus{gpu_type="a100",state="in_use"}', 2),
        ('pier_scheduler_gpus{gpu_type="a100",state="free"}', 0),
        ('pier_scheduler_waiting{gpu_type="a100",what="model_versions"}', 1),
    ):
        name, labels = sample.split("{")
        found = [line for line in page.splitlines() if line.startswith(name + "{") and labels.rstrip("}") in line]
        assert [float(line.rsplit(" ", 1)[1]) for line in found] == [value], f"{sample}: {found}"
