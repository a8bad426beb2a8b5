"""Volumes (pier.volumes): the api's create-time checks (400s naming the field and the path, the roots an
admin allowed, a runtime that cannot mount them), the accepted spec shown back; the local driver as root
(a read from a volume, a refused write to a read-only one, a missing mount point); the Kubernetes objects.
Real NATS, PostgreSQL, instance processes and the simulated API server."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import msgspec
import pytest

from infra.k8s_sim.simulated_apiserver import validate
from pier import bus, db
from pier.config import Settings
from pier.events import (
    GPUS_BUCKET,
    GPUS_KEY,
    BuildSucceeded,
    GpuInventory,
    InstanceStarted,
    InstanceStopped,
    PlaceModel,
)
from pier.spec import Entrypoint
from pier.volumes import Volume
from services.api.lifecycle import Lifecycle
from services.scheduler.runtimes import mounts
from services.scheduler.runtimes.local import LocalRuntime
from tests.integration.test_api import _source, api
from tests.integration.test_k8s_runtime import k8s_scheduler, place, scaled
from tests.integration.test_scheduler import (
    all_answer,
    invoke,
    make_image,
    no_instance_left_behind,
    scheduler_in_process,
)
from tests.support import until

__all__ = ["api", "no_instance_left_behind"]

Api = tuple[aiohttp.ClientSession, Settings]

# Reads or writes the file at `path`; a refused write answers the error.
READS_AND_WRITES = """
import pathlib


def predict(path, write=False):
    target = pathlib.Path(path)
    if not write:
        return target.read_text()
    try:
        target.write_text("written by the model")
    except OSError as exc:
        return exc.strerror
    return "written"
"""


@pytest.fixture
def roots(tmp_path: Path) -> Path:
    root = tmp_path / "volumes"
    root.mkdir()
    return root


@pytest.fixture
def settings(settings: Settings, roots: Path, request: pytest.FixtureRequest) -> Settings:
    """The session's settings with PIER_VOLUME_ROOTS set to `roots` (or to what a test's param says)."""
    allowed = getattr(request, "param", str(roots))
    return msgspec.structs.replace(settings, volume_roots=allowed)


async def publish_inventory(settings: Settings, volumes_refused: str) -> None:
    """The record the scheduler publishes, saying whether its runtime can mount volumes."""
    async with bus.connect(settings, "test-inventory") as b:
        kv = await b.js.create_key_value(bucket=GPUS_BUCKET, history=1)
        await kv.put(GPUS_KEY, msgspec.json.encode(GpuInventory(simulated=True, volumes_refused=volumes_refused)))


def spec(settings: Settings, name: str, volumes: list[dict[str, Any]]) -> dict[str, Any]:
    return {"name": name, "source": _source(settings), "file": "p.py", "function": "f", "volumes": volumes}


def vol(name: str, host_path: str, mount_path: str = "/data", **extra: Any) -> dict[str, Any]:
    return {"name": name, "host_path": host_path, "mount_path": mount_path, **extra}


async def refused(session: aiohttp.ClientSession, body: dict[str, Any]) -> list[dict[str, str]]:
    async with session.post("/v1/models", json=body) as r:
        answer = await r.json()
        assert r.status == 400, answer
        return list(answer["errors"])


async def test_bad_volumes_are_400_naming_the_field_and_the_path(api: Api, roots: Path) -> None:
    session, settings = api
    await publish_inventory(settings, "")
    inside = str(roots / "models")
    cases: list[tuple[list[dict[str, Any]], str, str]] = [
        ([vol("etc", "/etc")], "volumes[0].host_path", "'/etc' is not under a folder the admin allowed"),
        ([vol("up", f"{roots}/../secret")], "volumes[0].host_path", "contains '..'"),
        ([vol("rel", "models")], "volumes[0].host_path", "is not an absolute path"),
        ([vol("a", inside, "data")], "volumes[0].mount_path", "'data' is not an absolute path"),
        ([vol("a", inside, "/data/../etc")], "volumes[0].mount_path", "contains '..'"),
        ([vol("a", inside, "/")], "volumes[0].mount_path", "is the root of the file system"),
        ([vol("a", inside, "/pier/work")], "volumes[0].mount_path", "is under /pier"),
        ([vol("a", inside), vol("a", inside, "/other")], "volumes[1].name", "is the name of volumes[0] already"),
        ([vol("a", inside), vol("b", inside)], "volumes[1].mount_path", "is the mount path of volumes[0] already"),
        ([vol("Not_A_Name", inside)], "volumes[0].name", "matching regex"),
        ([vol("a", inside, size=1)], "volumes[0]", "size"),
        ([vol(f"v{n}", inside, f"/m{n}") for n in range(9)], "volumes", "length <= 8"),
    ]
    for n, (volumes, field, problem) in enumerate(cases):
        errors = await refused(session, spec(settings, f"bad-{n}", volumes))
        assert errors[0]["field"] == field, (volumes, errors)
        assert problem in errors[0]["problem"], (volumes, errors)
    # Nothing of any of them was stored.
    async with session.get("/v1/models") as r:
        assert (await r.json()) == []


@pytest.mark.parametrize("settings", [""], indirect=True)
async def test_without_volume_roots_every_volume_is_refused(api: Api, roots: Path) -> None:
    session, settings = api
    await publish_inventory(settings, "")
    errors = await refused(session, spec(settings, "m", [vol("data", str(roots))]))
    assert errors == [
        {
            "field": "volumes[0].host_path",
            "problem": f"{str(roots)!r} is not under a folder the admin allowed for volumes; "
            "allowed: none (PIER_VOLUME_ROOTS is empty)",
        }
    ]


async def test_a_runtime_that_cannot_mount_volumes_refuses_them_at_create_with_its_reason(
    api: Api, roots: Path
) -> None:
    session, settings = api
    reason = "the local runtime mounts volumes only as root (the scheduler runs as uid 1000)"
    await publish_inventory(settings, reason)
    errors = await refused(session, spec(settings, "m", [vol("data", str(roots))]))
    assert errors == [{"field": "volumes", "problem": f"this platform cannot mount volumes: {reason}"}]
    # Without volumes the same platform creates it.
    async with session.post("/v1/models", json=spec(settings, "m", [])) as r:
        assert r.status == 201, await r.json()


async def test_accepted_volumes_are_shown_fixed_once_created_and_placed_with_the_version(api: Api, roots: Path) -> None:
    session, settings = api
    await publish_inventory(settings, "")
    volumes = [vol("models", f"{roots}/models", "/models", read_only=True), vol("scratch", str(roots), "/scratch")]
    async with session.post("/v1/models", json=spec(settings, "m", volumes)) as r:
        created = await r.json()
        assert r.status == 201, created
    want = [{**volumes[0]}, {**volumes[1], "read_only": False}]
    assert created["volumes"] == want
    async with session.get("/v1/models/m") as r:
        assert (await r.json())["volumes"] == want
    async with session.patch("/v1/models/m", json={"volumes": []}) as r:
        assert r.status == 409 and (await r.json())["errors"][0]["field"] == "volumes"
    # Carried with the placement once the version is built.
    places: list[PlaceModel] = []
    async with bus.connect(settings, "test-place") as b:

        async def on_place(msg: Any) -> None:
            places.append(msgspec.json.decode(msg.data, type=PlaceModel))

        sub = await b.nc.subscribe(PlaceModel.subject(), cb=on_place)
        pool = await db.create_pool(settings, "api")
        try:
            await Lifecycle(pool, b, settings).handle(BuildSucceeded(model_id=created["id"], version=1, image="img"))
            (placed,) = await until(lambda: places, within=30)
        finally:
            await sub.unsubscribe()
            await db.close_pool(pool)
    assert [msgspec.structs.asdict(v) for v in placed.volumes] == want


# ---- the local driver, as root -----------------------------------------------------------------------

needs_mounts = pytest.mark.skipif(
    bool(mounts.refused()), reason=f"the local driver cannot mount volumes here: {mounts.refused()}"
)


@pytest.fixture
def mount_point() -> Iterator[Path]:
    """A folder on the host an instance may traverse to (pytest's temporary folders are root's alone)."""
    path = Path(tempfile.mkdtemp(prefix="pier-volume-test-"))
    path.chmod(0o755)
    try:
        yield path
    finally:
        path.rmdir()  # empty: the instance's mount never reached the host's namespace


def placed(image: str, volumes: list[Volume]) -> PlaceModel:
    return PlaceModel(
        model_id="0123456789abcdef",
        version=1,
        version_id="v1-id",
        image=image,
        entrypoint=Entrypoint(file="predict.py", function="predict"),
        volumes=volumes,
    )


@needs_mounts
async def test_an_instance_reads_its_volume_and_cannot_write_to_a_read_only_one(
    settings: Settings, roots: Path, mount_point: Path
) -> None:
    shared = roots / "shared"
    shared.mkdir(mode=0o755)
    (shared / "greeting.txt").write_text("hello from the host")
    (shared / "greeting.txt").chmod(0o644)
    image = make_image(settings, READS_AND_WRITES)
    volume = Volume(name="shared", host_path=str(shared), mount_path=str(mount_point), read_only=True)
    async with scheduler_in_process(settings) as s, aiohttp.ClientSession() as http:
        await s.bus.publish(placed(image, [volume]))
        [started] = await until(lambda: s.watch.of(InstanceStarted), within=30)
        await until(lambda: all_answer(http, {started.instance_id: started}, settings.home), within=30)
        # The scheduler told the api it can mount volumes.
        entry = await (await s.bus.js.key_value(GPUS_BUCKET)).get(GPUS_KEY)
        assert entry.value and msgspec.json.decode(entry.value, type=GpuInventory).volumes_refused == ""
        assert started.isolated  # its own uid, with the volume mounted before it became that uid
        greeting = str(mount_point / "greeting.txt")
        assert (await invoke(http, started.address, {"path": greeting}, settings.home))["result"] == (
            "hello from the host"
        )
        answer = await invoke(http, started.address, {"path": greeting, "write": True}, settings.home)
        assert answer["result"] == "Read-only file system"
        assert (shared / "greeting.txt").read_text() == "hello from the host"
        # The mount is the instance's alone: the host's folder stays empty.
        assert os.listdir(mount_point) == []
        log = LocalRuntime(settings).log_path(started.instance_id).read_text()
        assert f"pier: volumes in a private mount namespace: {shared} at {mount_point} (read-only)" in log


@needs_mounts
async def test_a_mount_point_missing_on_the_host_fails_the_instance_with_the_reason(
    settings: Settings, roots: Path
) -> None:
    image = make_image(settings, READS_AND_WRITES)
    volume = Volume(name="shared", host_path=str(roots), mount_path="/nonexistent/pier-volume-test")
    async with scheduler_in_process(settings) as s:
        await s.bus.publish(placed(image, [volume]))
        [stopped] = await until(lambda: s.watch.of(InstanceStopped), within=30)
        assert "mount path /nonexistent/pier-volume-test does not exist as a folder on this host" in stopped.reason
        assert not s.watch.of(InstanceStarted)


# ---- the Kubernetes driver ------------------------------------------------------------------------------


async def test_volumes_are_host_path_volumes_of_the_pods_read_only_as_asked(settings: Settings) -> None:
    volumes = [
        Volume(name="models", host_path="/srv/models", mount_path="/models", read_only=True),
        Volume(name="scratch", host_path="/srv/scratch", mount_path="/scratch"),
    ]
    async with k8s_scheduler(settings) as (cluster, _, _):
        async with bus.connect(settings, "test-client") as client:
            await client.publish(place("0123456789abcdef", instances=1, gpus=0, volumes=volumes))
        (deployment,) = await until(lambda: scaled(cluster, 1), within=30)
    # The server took it, so it is valid against the pinned schema; checked again here to say so.
    validate(deployment)
    pod = deployment["spec"]["template"]["spec"]
    assert {"name": "vol-models", "hostPath": {"path": "/srv/models", "type": "Directory"}} in pod["volumes"]
    assert {"name": "vol-scratch", "hostPath": {"path": "/srv/scratch", "type": "Directory"}} in pod["volumes"]
    (container,) = pod["containers"]
    assert {"name": "vol-models", "mountPath": "/models", "readOnly": True} in container["volumeMounts"]
    assert {"name": "vol-scratch", "mountPath": "/scratch", "readOnly": False} in container["volumeMounts"]
    # Only the model's container sees them, not the init container that fetches the image.
    assert all(not m["name"].startswith("vol-") for m in pod["initContainers"][0]["volumeMounts"])
