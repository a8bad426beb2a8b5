"""The scheduler with PIER_RUNTIME=kubernetes, against the simulated API server: a placed model API
version becomes a Deployment (replicas = instances), a Service and a Secret that say what the spec
says (and that the server found valid against the pinned schema); what waits for GPUs gets no pods;
terminate deletes everything."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from typing import Any

import msgspec
import pytest

from infra.embedded import free_port
from infra.k8s_sim.simulated_apiserver import SimulatedCluster, kind_of, serving
from pier import bus, db, outbox
from pier.config import Settings
from pier.events import (
    HealthPolicy,
    InstanceStarted,
    InstanceStopped,
    ModelPlaced,
    ModelWaiting,
    PlaceModel,
    RestartInstance,
    StopModel,
)
from pier.spec import Entrypoint
from pier.tasks import cancel_and_wait
from services.scheduler.__main__ import MIGRATIONS
from services.scheduler.controller import OUTBOX_CHANNEL, Controller
from services.scheduler.runtimes import kubernetes, open_runtime
from tests.integration.test_scheduler import Watch
from tests.support import until

NS = "pier"
MODEL = "0123456789abcdef"
GPU_LABEL = "example.com/gpu-type"


def node(name: str, gpus: int, label: str) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {"name": name, "labels": {GPU_LABEL: label}},
        "status": {"allocatable": {"nvidia.com/gpu": str(gpus), "cpu": "8", "memory": "64Gi"}},
    }


def place(model_id: str, instances: int, gpus: int, **extra: Any) -> PlaceModel:
    return PlaceModel(
        model_id=model_id,
        version=1,
        version_id="v1-id",
        image="sha256-abc",
        entrypoint=Entrypoint(file="predict.py", function="predict"),
        instances=instances,
        gpu_type="a100-sxm4" if gpus else None,
        gpu_count=gpus,
        **extra,
    )


@contextlib.asynccontextmanager
async def k8s_scheduler(settings: Settings) -> AsyncIterator[tuple[SimulatedCluster, Watch, Controller]]:
    """A simulated cluster with two nodes of one A100 each, and the scheduler on it."""
    async with serving() as (url, cluster):
        for name in ("gpu-1", "gpu-2"):
            await cluster.create(kind_of("nodes"), "", node(name, 1, "A100-SXM4"))
        async with scheduler_on(settings, url) as (watch, controller):
            yield cluster, watch, controller


@contextlib.asynccontextmanager
async def scheduler_on(settings: Settings, url: str) -> AsyncIterator[tuple[Watch, Controller]]:
    """The scheduler's parts, wired as __main__ wires them with PIER_RUNTIME=kubernetes."""
    settings = msgspec.structs.replace(
        settings,
        runtime="kubernetes",
        kube_api=url,
        kube_namespace=NS,
        kube_image="pier-runtime:test",
        kube_gpu_label=GPU_LABEL,
    )
    async with bus.connect(settings, "test-scheduler") as b, open_runtime(settings) as runtime:
        watch = Watch()
        await watch.attach(b)
        pool = await db.create_pool(settings, "scheduler")
        try:
            await db.migrate(pool, MIGRATIONS)
            controller = Controller(pool, b, runtime, await runtime.inventory())
            await controller.reconcile()
            tasks = [
                asyncio.create_task(outbox.Relay(pool, b, OUTBOX_CHANNEL).run()),
                asyncio.create_task(
                    b.consume([PlaceModel, StopModel, RestartInstance], controller.handle, durable="scheduler")
                ),
                asyncio.create_task(controller.watch()),
            ]
            try:
                yield watch, controller
            finally:
                await cancel_and_wait(tasks)
        finally:
            await db.close_pool(pool)


def objects(cluster: SimulatedCluster, plural: str) -> list[dict[str, Any]]:
    return cluster.list(kind_of(plural), NS)


def models_of(cluster: SimulatedCluster) -> dict[str, list[str]]:
    """The model API each Deployment, Service and Secret is labelled with."""
    return {
        plural: [o["metadata"]["labels"].get("pier.dev/model-id") for o in objects(cluster, plural)]
        for plural in ("deployments", "services", "secrets")
    }


def scaled(cluster: SimulatedCluster, replicas: int) -> list[dict[str, Any]]:
    found = objects(cluster, "deployments")
    return found if [d["spec"]["replicas"] for d in found] == [replicas] else []


async def test_a_placed_version_is_a_deployment_service_and_secret_saying_what_the_spec_says(
    settings: Settings,
) -> None:
    health = HealthPolicy(initial_delay=3, period=4.5, timeout=2, failure_threshold=5)
    cmd = place(MODEL, instances=2, gpus=1, cpu=1.5, memory=2 << 30, disk_size=5 << 30, quota="large", health=health)
    async with k8s_scheduler(settings) as (cluster, watch, _):
        async with bus.connect(settings, "test-client") as client:
            await client.publish(cmd)
        await until(lambda: watch.of(ModelPlaced), within=30)
        # One Deployment, scaled to the two instances placed.
        (deployment,) = await until(lambda: scaled(cluster, 2), within=30)
        assert len(json.loads(deployment["metadata"]["annotations"]["pier.dev/instances"])) == 2
        pod = deployment["spec"]["template"]["spec"]
        (container,) = pod["containers"]
        assert container["image"] == "pier-runtime:test"
        want = {"cpu": "1500m", "memory": str(2 << 30), "ephemeral-storage": str(5 << 30), "nvidia.com/gpu": "1"}
        assert container["resources"] == {"requests": want, "limits": want}
        assert pod["nodeSelector"] == {GPU_LABEL: "A100-SXM4"}
        assert pod["securityContext"]["runAsNonRoot"] is True and pod["automountServiceAccountToken"] is False
        assert container["securityContext"]["capabilities"] == {"drop": ["ALL"]}
        for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
            assert container[probe]["periodSeconds"] == 5  # 4.5 s, in the whole seconds probes take
            assert container[probe]["timeoutSeconds"] == 2
            assert container[probe]["failureThreshold"] == 5
        assert container["startupProbe"]["initialDelaySeconds"] == 3
        env = {e["name"]: e for e in container["env"]}
        # The init container fetches the image by digest from the store's claim, mounted in it alone.
        (init,) = pod["initContainers"]
        assert init["args"] == ["--digest", "sha256-abc", "--into", "/pier"]
        assert {"name": "store", "mountPath": "/store", "readOnly": True} in init["volumeMounts"]
        assert all(m["name"] != "store" for m in container["volumeMounts"])
        claim = {"claimName": "pier-home", "readOnly": True}
        assert {"name": "store", "persistentVolumeClaim": claim} in pod["volumes"]
        assert {"name": "work", "emptyDir": {"sizeLimit": str(5 << 30)}} in pod["volumes"]
        # The instance secret is referenced, never written into the pod spec.
        assert env["PIER_INSTANCE_SECRET"]["valueFrom"]["secretKeyRef"]["name"] == deployment["metadata"]["name"]
        assert "value" not in env["PIER_INSTANCE_SECRET"]
        uid = deployment["metadata"]["uid"]
        for plural in ("services", "secrets"):
            (dependent,) = objects(cluster, plural)
            assert [o["uid"] for o in dependent["metadata"]["ownerReferences"]] == [uid]
            assert dependent["metadata"]["labels"]["pier.dev/model-id"] == MODEL
        (service,) = objects(cluster, "services")
        assert service["spec"]["selector"] == deployment["spec"]["selector"]["matchLabels"]


async def test_what_waits_for_gpus_gets_no_pods_and_terminate_deletes_everything(settings: Settings) -> None:
    first = place(MODEL, instances=2, gpus=1)
    second = place("fedcba9876543210", instances=1, gpus=1)
    async with k8s_scheduler(settings) as (cluster, watch, _), bus.connect(settings, "test-client") as client:
        await client.publish(first)
        await until(lambda: watch.of(ModelPlaced), within=30)
        # The cluster's two GPUs are taken: the second waits in Pier's queue, with no Deployment.
        await client.publish(second)
        await until(lambda: watch.of(ModelWaiting), within=30)
        assert [d["metadata"]["labels"]["pier.dev/model-id"] for d in objects(cluster, "deployments")] == [MODEL]

        await client.publish(StopModel(model_id=MODEL, reason="terminated", purge=True))
        # The GPUs freed, the second starts; nothing of the first is left.
        await until(lambda: len(watch.of(ModelPlaced)) == 2, within=30)
        second_only = {plural: ["fedcba9876543210"] for plural in ("deployments", "services", "secrets")}
        await until(lambda: models_of(cluster) == second_only, within=30)


async def test_a_new_scheduler_adopts_the_deployments_and_a_deleted_one_is_reported_as_exited(
    settings: Settings,
) -> None:
    async with serving() as (url, cluster), bus.connect(settings, "test-client") as client:
        for name in ("gpu-1", "gpu-2"):
            await cluster.create(kind_of("nodes"), "", node(name, 1, "A100-SXM4"))
        async with scheduler_on(settings, url) as (first, _):
            await client.publish(place(MODEL, instances=2, gpus=1))
            (before,) = await until(lambda: scaled(cluster, 2), within=30)
            await until(lambda: len(first.of(InstanceStarted)) == 2, within=30)
        # The scheduler is replaced (a restart, a new leader) while the cluster runs on.
        async with scheduler_on(settings, url) as (again, controller):
            rows = await controller.pool.fetch("SELECT * FROM instances WHERE state = 'running'")
            assert len(rows) == 2
            (after,) = objects(cluster, "deployments")
            # Adopted, not started again: the same Deployment, untouched, and no new run announced.
            assert after["metadata"]["resourceVersion"] == before["metadata"]["resourceVersion"]
            assert not again.of(InstanceStarted)
            (service,) = objects(cluster, "services")
            assert {r["address"] for r in rows} == {f"{service['spec']['clusterIP']}:8080"}

            # Deleted behind Pier's back: its instances' runs are over, and the watcher says so.
            await cluster.delete(kind_of("deployments"), NS, after["metadata"]["name"])
            stopped = await until(lambda: len(again.of(InstanceStopped)) == 2 and again.of(InstanceStopped), within=30)
            assert all("its Deployment is gone from the cluster" in e.reason for e in stopped)


async def test_an_api_server_that_does_not_answer_is_a_clear_start_error(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(kubernetes, "SYNC_TIMEOUT", 1.0)
    nobody = f"http://127.0.0.1:{free_port()}"
    on_k8s = msgspec.structs.replace(settings, runtime="kubernetes", kube_api=nobody, kube_namespace=NS)
    with pytest.raises(RuntimeError, match="did not list the Deployments of namespace 'pier'"):
        async with open_runtime(on_k8s):
            pass
