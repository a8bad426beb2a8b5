"""The Kubernetes runtime driver: each model API version is a Deployment (replicas = the instances the
scheduler placed), a Service in front of its pods, and a Secret with the token its harness wants.

Pier's queue stays the admission gate, as Kueue's is: a Deployment is created or scaled only for
instances the scheduler placed, and the GPU inventory the queue places on is read from the nodes'
allocatable `nvidia.com/gpu` and their GPU type label (PIER_KUBE_GPU_LABEL). A pod gets:

- `nvidia.com/gpu` limits and a node selector for the GPU type;
- the quota as CPU and memory requests and limits, disk_size as an ephemeral-storage limit;
- the health policy as startup, readiness and liveness probes with the same numbers (an exec probe
  that asks the harness's /ping with the instance secret, which stays out of the pod spec);
- labels naming the model API and version, and the Service and Secret carry an owner reference to
  the Deployment, so deleting the Deployment (or everything with the model's label) deletes all.

Which placed instances a Deployment stands for is its annotation `pier.dev/instances`; the driver
keeps every Deployment it manages in memory from a list and a watch, so `find` and `poll` (asked by
the exit watcher twice a second) cost no request. A Deployment deleted behind Pier's back ends its
instances' runs, which the exit watcher then reports.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import math
import secrets
from types import TracebackType
from typing import Any

import msgspec
import structlog
from kubernetes_asyncio import client, config, watch
from kubernetes_asyncio.client.exceptions import ApiException

from pier.config import Settings
from pier.events import HealthPolicy
from services.scheduler.inventory import Gpu, Inventory
from services.scheduler.runtimes.base import Exit, Handle, InstanceSpec, StartError

log = structlog.get_logger("scheduler.kubernetes")

GPU_RESOURCE = "nvidia.com/gpu"
PORT = 8080
MANAGED = {"app.kubernetes.io/managed-by": "pier"}
MODEL_LABEL = "pier.dev/model-id"
VERSION_LABEL = "pier.dev/version"
INSTANCES_ANNOTATION = "pier.dev/instances"
SECRET_KEY = "instance-secret"
# Where the init container unpacks the image (pier.fetch), and the environment's interpreter there.
POD_ROOT = "/pier"
POD_PYTHON = f"{POD_ROOT}/env/bin/python"
# Where the init container (only) mounts the artifact store's volume, read-only.
STORE_MOUNT = "/store"
# The runtime image's user (infra/runtime.Dockerfile), and what no container of a pod may do.
POD_USER = 10001
UNPRIVILEGED = {"allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"]}}
# Pod volume names of a model API's volumes (pier.volumes): never the platform's own `work` or `store`.
VOLUME_PREFIX = "vol-"
# Seconds the driver waits at start for its first list of Deployments.
SYNC_TIMEOUT = 30.0
# Seconds between attempts to (re)open the watch after it failed.
REWATCH = 1.0


def object_name(model_id: str, version: int) -> str:
    """The Deployment's, Service's and Secret's name: DNS-1123, under 63 characters."""
    return f"m-{model_id.lower()}-v{version}"[:63]


def _seconds(value: float) -> int:
    """Probe times are whole seconds, at least 1 (0 for a delay)."""
    return max(1, math.ceil(value))


def probes(policy: HealthPolicy) -> dict[str, Any]:
    """The health policy as the three probes, with the same numbers."""
    check = {"exec": {"command": [POD_PYTHON, "-m", "pier.harness.probe"]}}
    common = {
        **check,
        "periodSeconds": _seconds(policy.period),
        "timeoutSeconds": _seconds(policy.timeout),
        "failureThreshold": policy.failure_threshold,
    }
    return {
        "startupProbe": {**common, "initialDelaySeconds": math.ceil(policy.initial_delay)},
        "readinessProbe": {**common, "successThreshold": 1},
        "livenessProbe": common,
    }


def resources(spec: InstanceSpec) -> dict[str, Any]:
    """Requests and limits: the quota's CPU and memory, the GPUs, and disk_size as ephemeral storage."""
    limits: dict[str, str] = {}
    if spec.cpu > 0:
        limits["cpu"] = f"{round(spec.cpu * 1000)}m"
    if spec.memory > 0:
        limits["memory"] = str(spec.memory)
    if spec.disk_size > 0:
        limits["ephemeral-storage"] = str(spec.disk_size)
    if spec.gpu_devices:
        limits[GPU_RESOURCE] = str(len(spec.gpu_devices))
    return {"requests": dict(limits), "limits": limits} if limits else {}


class KubernetesRuntime:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.namespace = settings.kube_namespace
        self._api: client.ApiClient | None = None
        self._deployments: dict[str, dict[str, Any]] = {}  # name -> the Deployment as last seen
        self._secrets: dict[str, str] = {}  # name -> the instance secret its pods want
        self._addresses: dict[str, str] = {}  # name -> its Service's cluster IP
        self._gpu_labels: dict[str, str] = {}  # Pier's GPU type -> the node label's value
        self._watching: asyncio.Task[None] | None = None
        self._synced = asyncio.Event()

    # ---- connection ---------------------------------------------------------------------------------

    async def __aenter__(self) -> KubernetesRuntime:
        if self.settings.kube_api:
            self._api = client.ApiClient(client.Configuration(host=self.settings.kube_api))
        else:
            try:
                config.load_incluster_config()
            except config.ConfigException:
                await config.load_kube_config()
            self._api = client.ApiClient()
        self._watching = asyncio.create_task(self._watch())
        try:
            async with asyncio.timeout(SYNC_TIMEOUT):
                await self._synced.wait()
        except TimeoutError:
            await self.__aexit__(None, None, None)
            where = self.settings.kube_api or "the in-cluster or kubeconfig API server"
            raise RuntimeError(
                f"the Kubernetes API at {where} did not list the Deployments of namespace {self.namespace!r}"
                f" within {SYNC_TIMEOUT:g} s (see the warnings above)"
            ) from None
        log.info("kubernetes runtime ready", namespace=self.namespace, deployments=len(self._deployments))
        return self

    async def __aexit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._watching is not None:
            self._watching.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._watching
        if self._api is not None:
            await self._api.close()

    @property
    def apps(self) -> client.AppsV1Api:
        return client.AppsV1Api(self._api)

    @property
    def core(self) -> client.CoreV1Api:
        return client.CoreV1Api(self._api)

    # ---- the Runtime protocol -----------------------------------------------------------------------

    async def inventory(self) -> Inventory:
        """GPUs from the nodes' allocatable nvidia.com/gpu, typed by their GPU label (lowercased)."""
        nodes = await self.core.list_node()
        gpus: list[Gpu] = []
        for node in nodes.items:
            allocatable = (node.status.allocatable if node.status else None) or {}
            label = (node.metadata.labels or {}).get(self.settings.kube_gpu_label)
            count = int(allocatable.get(GPU_RESOURCE, "0"))
            if not label or count <= 0:
                continue
            gpu_type = label.lower()
            self._gpu_labels[gpu_type] = label
            gpus.extend(Gpu(node=node.metadata.name, device=str(i), type=gpu_type) for i in range(count))
        log.info("GPU inventory from the cluster's nodes", gpus=len(gpus), types=sorted(self._gpu_labels))
        return Inventory(gpus=tuple(gpus), simulated=False)

    async def start(self, spec: InstanceSpec) -> Handle:
        name = object_name(spec.model_id, spec.version)
        try:
            deployment = self._deployments.get(name) or await self._read(name)
            if deployment is None:
                deployment = await self._create(spec, name)
            else:
                members = _members(deployment)
                if spec.instance_id not in members:
                    deployment = await self._scale(name, [*members, spec.instance_id])
            if name not in self._secrets or name not in self._addresses:
                await self._read_dependents(name)
        except ApiException as exc:
            raise StartError(f"the Kubernetes API refused {name}: {_reason(exc)}") from exc
        self._deployments[name] = deployment
        log.info("instance placed as a pod of its Deployment", instance_id=spec.instance_id, deployment=name)
        return self._handle(name)

    async def stop(self, instance_id: str) -> bool:
        name = self._deployment_of(instance_id)
        if name is None:
            return False
        members = [m for m in _members(self._deployments[name]) if m != instance_id]
        try:
            if members:
                self._deployments[name] = await self._scale(name, members)
            else:
                # Its Service and Secret go with it (owner references); its pods with its ReplicaSets.
                await self.apps.delete_namespaced_deployment(name, self.namespace, propagation_policy="Background")
                self._deployments.pop(name, None)
                self._secrets.pop(name, None)
                self._addresses.pop(name, None)
        except ApiException as exc:
            if exc.status != 404:
                raise
            self._deployments.pop(name, None)
        log.info("instance stopped", instance_id=instance_id, deployment=name, replicas=len(members))
        return True

    def find(self, instance_id: str) -> Handle | None:
        name = self._deployment_of(instance_id)
        if name is None or name not in self._secrets or name not in self._addresses:
            return None
        return self._handle(name)

    def poll(self, instance_id: str, handle: Handle) -> Exit | None:
        if self._deployment_of(instance_id) is not None:
            return None
        return Exit(status=None, detail="its Deployment is gone from the cluster")

    async def last_words(self, instance_id: str, handle: Handle) -> str:
        return ""

    def note(self, instance_id: str, line: str) -> None:
        log.info(line, instance_id=instance_id)

    def disk_usage(self, instance_id: str) -> int:
        # The kubelet enforces the ephemeral-storage limit itself (it evicts the pod).
        return 0

    async def purge(self, instance_id: str) -> None:
        await self.stop(instance_id)

    def volumes_refused(self) -> str:
        """Never: a volume is a hostPath volume of the pod, on whichever node it runs."""
        return ""

    # ---- objects ------------------------------------------------------------------------------------

    def _handle(self, name: str) -> Handle:
        # The Service's cluster IP, not its DNS name: the gateway and the monitor need no cluster DNS.
        return Handle(pid=0, start_time=0, port=PORT, host=self._addresses[name], secret=self._secrets[name])

    def _deployment_of(self, instance_id: str) -> str | None:
        return next((n for n, d in self._deployments.items() if instance_id in _members(d)), None)

    async def _read(self, name: str) -> dict[str, Any] | None:
        try:
            found = await self.apps.read_namespaced_deployment(name, self.namespace)
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise
        return _plain(self._api, found)

    async def _read_dependents(self, name: str) -> None:
        """The version's instance secret and its Service's address, into memory."""
        secret = await self.core.read_namespaced_secret(name, self.namespace)
        self._secrets[name] = base64.b64decode((secret.data or {})[SECRET_KEY]).decode()
        service = await self.core.read_namespaced_service(name, self.namespace)
        self._addresses[name] = service.spec.cluster_ip

    async def _scale(self, name: str, members: list[str]) -> dict[str, Any]:
        patch = {
            "metadata": {"annotations": {INSTANCES_ANNOTATION: json.dumps(members)}},
            "spec": {"replicas": len(members)},
        }
        return _plain(self._api, await self.apps.patch_namespaced_deployment(name, self.namespace, patch))

    async def _create(self, spec: InstanceSpec, name: str) -> dict[str, Any]:
        labels = {**MANAGED, MODEL_LABEL: spec.model_id, VERSION_LABEL: str(spec.version)}
        # The client takes plain dicts as well as its models (it serialises either).
        body: Any = self.deployment(spec, name, labels)
        try:
            created = _plain(self._api, await self.apps.create_namespaced_deployment(self.namespace, body))
        except ApiException as exc:
            if exc.status != 409:
                raise
            # A run of ours made it and died before it was recorded: take it over.
            existing = await self._read(name)
            assert existing is not None
            return await self._scale(name, [*_members(existing), spec.instance_id])
        owner = {
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "name": name,
            "uid": created["metadata"]["uid"],
            "controller": True,
            "blockOwnerDeletion": True,
        }
        meta = {"name": name, "labels": labels, "ownerReferences": [owner]}
        secret = secrets.token_urlsafe(32)
        body = {"apiVersion": "v1", "kind": "Secret", "metadata": meta, "stringData": {SECRET_KEY: secret}}
        try:
            await self.core.create_namespaced_secret(self.namespace, body)
        except ApiException as exc:
            # The one of an earlier Deployment of this name, not yet collected: ours from now on.
            if exc.status != 409:
                raise
            await self.core.patch_namespaced_secret(
                name, self.namespace, {"metadata": meta, "stringData": body["stringData"]}
            )
        self._secrets[name] = secret
        service: Any = {
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": meta,
            "spec": {
                "selector": {MODEL_LABEL: spec.model_id, VERSION_LABEL: str(spec.version)},
                "ports": [{"name": "http", "port": PORT, "targetPort": "http"}],
            },
        }
        try:
            made = await self.core.create_namespaced_service(self.namespace, service)
        except ApiException as exc:
            if exc.status != 409:
                raise
            made = await self.core.patch_namespaced_service(name, self.namespace, {"metadata": meta})
        self._addresses[name] = made.spec.cluster_ip
        return created

    def deployment(self, spec: InstanceSpec, name: str, labels: dict[str, str]) -> dict[str, Any]:
        """The Deployment of one model API version, for its first placed instance."""
        env = {
            "PIER_HOST": "0.0.0.0",
            "PIER_PORT": str(PORT),
            "PIER_WORKING_DIR": f"{POD_ROOT}/work",
            "PYTHONPATH": f"{POD_ROOT}/runtime",
            "PIER_ENTRYPOINT": msgspec.json.encode(spec.entrypoint).decode(),
            "PIER_WORKERS": str(spec.workers),
            "PIER_REQUEST_TIMEOUT": str(spec.request_timeout),
            "PIER_MODEL_VERSION_ID": spec.version_id,
            "PIER_MODEL_VERSION_NUMBER": str(spec.version),
            "PIER_MAX_BODY_BYTES": str(self.settings.max_body_bytes),
            "PIER_REQUEST_LOG_BUFFER": str(self.settings.request_log_buffer),
            "PIER_OUTPUT_RATE": str(self.settings.instance_output_rate),
            "PYTHONUNBUFFERED": "1",
            # Its own home, as under the local driver: whatever the model writes there goes with the pod.
            "HOME": f"{POD_ROOT}/work",
        }
        container: dict[str, Any] = {
            "name": "model",
            "image": self.settings.kube_image,
            "command": [POD_PYTHON, "-m", "pier.harness"],
            "env": [
                *({"name": k, "value": v} for k, v in env.items()),
                {"name": "PIER_INSTANCE_ID", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
                {
                    "name": "PIER_INSTANCE_SECRET",
                    "valueFrom": {"secretKeyRef": {"name": name, "key": SECRET_KEY}},
                },
            ],
            "ports": [{"name": "http", "containerPort": PORT}],
            "volumeMounts": [
                {"name": "work", "mountPath": POD_ROOT},
                *(
                    {"name": VOLUME_PREFIX + v.name, "mountPath": v.mount_path, "readOnly": v.read_only}
                    for v in spec.volumes
                ),
            ],
            "securityContext": UNPRIVILEGED,
            **probes(spec.health),
        }
        if resources(spec):
            container["resources"] = resources(spec)
        pod: dict[str, Any] = {
            "initContainers": [
                {
                    "name": "fetch-artifact",
                    "image": self.settings.kube_image,
                    "command": ["python", "-m", "pier.fetch", "--store", f"{STORE_MOUNT}/artifacts"],
                    "args": ["--digest", spec.image, "--into", POD_ROOT],
                    "volumeMounts": [
                        {"name": "work", "mountPath": POD_ROOT},
                        {"name": "store", "mountPath": STORE_MOUNT, "readOnly": True},
                    ],
                    "securityContext": UNPRIVILEGED,
                }
            ],
            "containers": [container],
            "volumes": [
                {"name": "work", "emptyDir": {"sizeLimit": str(spec.disk_size)} if spec.disk_size else {}},
                {
                    "name": "store",
                    "persistentVolumeClaim": {"claimName": self.settings.kube_artifacts_claim, "readOnly": True},
                },
                # The node's folder, which must exist there (type Directory): a typo is a pod that does
                # not start, with the kubelet's reason, rather than an empty folder made on the node.
                *(
                    {"name": VOLUME_PREFIX + v.name, "hostPath": {"path": v.host_path, "type": "Directory"}}
                    for v in spec.volumes
                ),
            ],
            "automountServiceAccountToken": False,
            "enableServiceLinks": False,
            # The runtime image's user, never root; the model's code is the user's, not the platform's.
            "securityContext": {
                "runAsNonRoot": True,
                "runAsUser": POD_USER,
                "runAsGroup": POD_USER,
                "fsGroup": POD_USER,
                "seccompProfile": {"type": "RuntimeDefault"},
            },
        }
        if spec.gpu_devices and spec.gpu_type:
            pod["nodeSelector"] = {self.settings.kube_gpu_label: self._gpu_labels.get(spec.gpu_type, spec.gpu_type)}
        return {
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": {
                "name": name,
                "labels": labels,
                "annotations": {INSTANCES_ANNOTATION: json.dumps([spec.instance_id])},
            },
            "spec": {
                "replicas": 1,
                "selector": {"matchLabels": {MODEL_LABEL: spec.model_id, VERSION_LABEL: str(spec.version)}},
                "template": {"metadata": {"labels": labels}, "spec": pod},
            },
        }

    # ---- the watch ----------------------------------------------------------------------------------

    def _seen(self, kind: str, obj: dict[str, Any]) -> None:
        """One watch event into the cache, unless the cache already holds something newer."""
        name = obj["metadata"]["name"]
        if _older(obj, self._deployments.get(name)):
            return
        if kind == "DELETED":
            self._deployments.pop(name, None)
        elif kind in ("ADDED", "MODIFIED"):
            self._deployments[name] = obj

    async def _watch(self) -> None:
        """Keep `_deployments` current: list, then watch from the list's resourceVersion; list again
        when the watch ends or its resourceVersion is too old."""
        selector = ",".join(f"{k}={v}" for k, v in MANAGED.items())
        while True:
            try:
                listed = await self.apps.list_namespaced_deployment(self.namespace, label_selector=selector)
                self._deployments = {d.metadata.name: _plain(self._api, d) for d in listed.items}
                for name in self._deployments:
                    if name not in self._secrets or name not in self._addresses:
                        with contextlib.suppress(ApiException, KeyError):
                            await self._read_dependents(name)
                self._synced.set()
                async with watch.Watch() as w:
                    async for event in w.stream(
                        self.apps.list_namespaced_deployment,
                        self.namespace,
                        label_selector=selector,
                        resource_version=listed.metadata.resource_version,
                        timeout_seconds=300,
                    ):
                        self._seen(event["type"], event["raw_object"])
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("deployment watch failed; listing again", error=str(exc))
                await asyncio.sleep(REWATCH)


def _older(event: dict[str, Any], cached: dict[str, Any] | None) -> bool:
    """Is a watch event about an older state than the cache holds? The driver's own writes update the
    cache at once, before the watch delivers the events before them (a Deployment scaled up, or made
    anew under the same name). resourceVersions are etcd revisions: compared as numbers."""
    return cached is not None and _revision(event) < _revision(cached)


def _revision(obj: dict[str, Any]) -> int:
    text = str(obj["metadata"].get("resourceVersion", "0"))
    return int(text) if text.isdigit() else 0


def _members(deployment: dict[str, Any]) -> list[str]:
    raw = (deployment.get("metadata", {}).get("annotations") or {}).get(INSTANCES_ANNOTATION, "[]")
    members: list[str] = json.loads(raw)
    return members


def _plain(api: client.ApiClient | None, obj: Any) -> dict[str, Any]:
    """A client model as the API's JSON (camelCase keys), as the watch's raw objects are."""
    assert api is not None
    out: dict[str, Any] = api.sanitize_for_serialization(obj)
    return out


def _reason(exc: ApiException) -> str:
    try:
        return str(json.loads(exc.body or b"")["message"])
    except (TypeError, ValueError, KeyError):
        return f"{exc.status} {exc.reason}"
