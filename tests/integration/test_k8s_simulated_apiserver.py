"""The simulated Kubernetes API server answers as a real one does, through the official asyncio client:
objects are checked against the pinned schema, errors are Status objects, watches resume from a
resourceVersion, and deleting an owner deletes its dependents."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import pytest
from kubernetes_asyncio import client, watch
from kubernetes_asyncio.client.exceptions import ApiException
from structlog.testing import capture_logs

from infra.k8s_sim.simulated_apiserver import serving

NS = "pier"


def deployment(name: str, **spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name, "labels": {"app": name}},
        "spec": {
            "replicas": 1,
            "selector": {"matchLabels": {"app": name}},
            "template": {
                "metadata": {"labels": {"app": name}},
                "spec": {"containers": [{"name": "main", "image": "pier-runtime:1"}]},
            },
            **spec,
        },
    }


@pytest.fixture
async def api() -> AsyncIterator[client.ApiClient]:
    with capture_logs() as logs:
        async with serving() as (url, _cluster):
            assert any("simulated" in entry["event"] for entry in logs)
            async with client.ApiClient(client.Configuration(host=url)) as api_client:
                yield api_client


def status_of(exc: ApiException) -> dict[str, Any]:
    body: dict[str, Any] = json.loads(exc.body)
    assert body["kind"] == "Status"
    return body


async def test_created_object_comes_back_with_metadata_and_a_second_create_is_already_exists(
    api: client.ApiClient,
) -> None:
    apps = client.AppsV1Api(api)
    created = await apps.create_namespaced_deployment(NS, deployment("m1"))
    assert created.metadata.uid and created.metadata.resource_version and created.metadata.namespace == NS
    got = await apps.read_namespaced_deployment("m1", NS)
    assert got.spec.replicas == 1
    with pytest.raises(ApiException) as failed:
        await apps.create_namespaced_deployment(NS, deployment("m1"))
    assert failed.value.status == 409
    assert status_of(failed.value)["reason"] == "AlreadyExists"
    assert status_of(failed.value)["message"] == 'deployments.apps "m1" already exists'


async def test_an_object_that_breaks_the_schema_is_invalid_naming_the_field(api: client.ApiClient) -> None:
    apps = client.AppsV1Api(api)
    wrong = deployment("m2")
    wrong["spec"]["replicas"] = "three"
    with pytest.raises(ApiException) as failed:
        await apps.create_namespaced_deployment(NS, wrong)
    assert failed.value.status == 422
    body = status_of(failed.value)
    assert body["reason"] == "Invalid"
    assert "spec.replicas" in body["message"]
    unknown = deployment("m2")
    unknown["spec"]["template"]["spec"]["containers"][0]["imagePullPolcy"] = "Never"
    with pytest.raises(ApiException) as failed:
        await apps.create_namespaced_deployment(NS, unknown)
    assert failed.value.status == 422
    assert "imagePullPolcy" in status_of(failed.value)["message"]
    # Nothing was stored by either.
    assert (await apps.list_namespaced_deployment(NS)).items == []


async def test_missing_objects_are_not_found(api: client.ApiClient) -> None:
    core = client.CoreV1Api(api)
    for call in (
        core.read_namespaced_service("nope", NS),
        core.patch_namespaced_service("nope", NS, {"metadata": {"labels": {"a": "b"}}}),
        core.delete_namespaced_service("nope", NS),
    ):
        with pytest.raises(ApiException) as failed:
            await call
        assert failed.value.status == 404
        assert status_of(failed.value)["reason"] == "NotFound"
        assert status_of(failed.value)["message"] == 'services "nope" not found'


async def test_a_replace_from_a_stale_resource_version_is_a_conflict(api: client.ApiClient) -> None:
    apps = client.AppsV1Api(api)
    first = await apps.create_namespaced_deployment(NS, deployment("m3"))
    await apps.patch_namespaced_deployment("m3", NS, {"spec": {"replicas": 2}})
    stale = deployment("m3", replicas=5)
    stale["metadata"]["resourceVersion"] = first.metadata.resource_version
    with pytest.raises(ApiException) as failed:
        await apps.replace_namespaced_deployment("m3", NS, stale)
    assert failed.value.status == 409
    assert status_of(failed.value)["reason"] == "Conflict"
    current = await apps.read_namespaced_deployment("m3", NS)
    assert current.spec.replicas == 2 and current.metadata.generation == 2


async def test_a_watch_from_a_resource_version_sees_what_changed_after_it(api: client.ApiClient) -> None:
    apps = client.AppsV1Api(api)
    await apps.create_namespaced_deployment(NS, deployment("before"))
    listed = await apps.list_namespaced_deployment(NS, label_selector="app=before")
    assert [d.metadata.name for d in listed.items] == ["before"]
    since = listed.metadata.resource_version
    await apps.create_namespaced_deployment(NS, deployment("after"))
    await apps.patch_namespaced_deployment("after", NS, {"spec": {"replicas": 3}})
    await apps.delete_namespaced_deployment("after", NS)
    seen = []
    async with watch.Watch() as w:
        async for event in w.stream(apps.list_namespaced_deployment, NS, resource_version=since, timeout_seconds=1):
            seen.append((event["type"], event["object"].metadata.name, event["object"].spec.replicas))
    assert seen == [("ADDED", "after", 1), ("MODIFIED", "after", 3), ("DELETED", "after", 3)]


async def test_deleting_an_owner_deletes_its_dependents_and_nodes_are_cluster_wide(api: client.ApiClient) -> None:
    apps, core = client.AppsV1Api(api), client.CoreV1Api(api)
    owner = await apps.create_namespaced_deployment(NS, deployment("m4"))
    reference = {"apiVersion": "apps/v1", "kind": "Deployment", "name": "m4", "uid": owner.metadata.uid}
    service = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": "m4", "ownerReferences": [reference]},
        "spec": {"selector": {"app": "m4"}, "ports": [{"port": 80, "targetPort": 8080}]},
    }
    await core.create_namespaced_service(NS, service)
    await core.create_node({"apiVersion": "v1", "kind": "Node", "metadata": {"name": "gpu-1"}})
    deleted = await apps.delete_namespaced_deployment("m4", NS)
    assert deleted.status == "Success"
    assert (await core.list_namespaced_service(NS)).items == []
    assert [n.metadata.name for n in (await core.list_node()).items] == ["gpu-1"]
