"""The whole platform with PIER_RUNTIME=kubernetes on the simulated cluster: `pier deploy` -> a Deployment
-> a pod whose init container fetches the image by digest and whose harness the simulated kubelet runs
-> its probes pass -> a call through the gateway answers; terminate deletes the Deployment and its
pod."""

from __future__ import annotations

import contextlib
import signal
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import msgspec
import pytest
from kubernetes_asyncio import client

from infra.embedded import free_port, stop_process, wait_for_port
from infra.supervisor import Platform
from pier.client import Client
from pier.config import Settings
from tests.e2e.conftest import EXAMPLES, TOKEN, pier, running_platform
from tests.support import until

NS = "pier"


@pytest.fixture
def cluster(settings: Settings, tmp_path: Path) -> Iterator[str]:
    """The simulated cluster as its own process; the platform's home is the artifact store's claim."""
    port = free_port()
    settings.home.mkdir(parents=True, exist_ok=True)
    argv = [sys.executable, "-m", "infra.k8s_sim", "--port", str(port), "--root", str(tmp_path / "k8s")]
    argv += ["--claim", f"pier-home={settings.home}"]
    log = (tmp_path / "k8s.log").open("wb")
    proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        wait_for_port(port, proc, "the simulated cluster")
        yield f"http://127.0.0.1:{port}"
    finally:
        stop_process(proc, signal.SIGTERM)
        log.close()


@pytest.fixture
async def k8s_platform(settings: Settings, cluster: str) -> AsyncIterator[Platform]:
    on_k8s = msgspec.structs.replace(
        settings, runtime="kubernetes", kube_api=cluster, kube_namespace=NS, kube_artifacts_claim="pier-home"
    )
    async with running_platform(on_k8s) as platform:
        yield platform


async def objects(url: str, plural: str) -> list[dict[str, Any]]:
    async with client.ApiClient(client.Configuration(host=url)) as api:
        if plural == "deployments":
            found: Any = await client.AppsV1Api(api).list_namespaced_deployment(NS)
        else:
            found = await client.CoreV1Api(api).list_namespaced_pod(NS)
        return [api.sanitize_for_serialization(o) for o in found.items]


async def test_deploy_runs_a_pod_that_answers_through_the_gateway_and_terminate_deletes_it(
    k8s_platform: Platform, cluster: str
) -> None:
    done = pier(
        k8s_platform, "deploy", str(EXAMPLES / "hello"), "--name", "hello", "--instances", "1", "--unrestricted"
    )
    assert done.returncode == 0, done.stdout + done.stderr

    s = k8s_platform.settings
    answer = Client(api_url=s.api_url, gateway_url=s.gateway_url, token=TOKEN).predict("hello", data={"name": "Kube"})
    assert answer["result"]["greeting"] == "Hello, Kube!"

    (deployment,) = await objects(cluster, "deployments")
    assert deployment["spec"]["replicas"] == 1
    (pod,) = await objects(cluster, "pods")
    assert [c["type"] for c in pod["status"]["conditions"] if c["status"] == "True"] == ["Ready"]
    # The harness serves from what the init container fetched and checked, not from the store.
    assert pod["spec"]["initContainers"][0]["name"] == "fetch-artifact"

    gone = pier(k8s_platform, "terminate", "hello")
    assert gone.returncode == 0, gone.stdout + gone.stderr
    await until(lambda: _nothing_left(cluster), within=60)


async def _nothing_left(url: str) -> bool:
    with contextlib.suppress(Exception):
        return not await objects(url, "deployments") and not await objects(url, "pods")
    return False
