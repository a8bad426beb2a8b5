"""A SIMULATED kubelet (and kube-proxy) for the simulated API server: it runs pods' containers as local
processes, so that a model API deployed with PIER_RUNTIME=kubernetes answers calls on one machine.

It watches the pods of every namespace and, for each, runs the init containers one after the other,
then the container, with its command, args and environment (values, Secret keys, the pod's name and
IP), and reports the pod's status back (phase, pod IP, container states, the Ready condition from the
startup and readiness probes). A container that exits, or fails its liveness probe, is started again
and its restartCount counted, as restartPolicy Always does.

What a real node adds it does not: images are not pulled (`python` is this interpreter), there are no
namespaces or cgroups (resources are not enforced), and volumes are folders: an emptyDir under the
pod's folder, a PersistentVolumeClaim the folder given for its name, and paths in commands and the
environment under a mountPath are rewritten to the folder. Each pod gets a loopback IP of its own
(127.200-254.x.y) and listens there: a value `0.0.0.0` in its environment (the harness's PIER_HOST)
becomes that IP.

As kube-proxy, it listens on each Service's cluster IP (the simulated API server hands out
127.100-199.x.y) and port, and forwards each connection to a ready pod the Service selects, in turn.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import itertools
import os
import random
import signal
import sys
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import structlog
from kubernetes_asyncio import client, watch
from kubernetes_asyncio.client.exceptions import ApiException

from pier.tasks import cancel_and_wait

log = structlog.get_logger("k8s.simulated-kubelet")

STOP_TIMEOUT = 10.0
RESTART_BACKOFF = 1.0
Obj = dict[str, Any]


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass
class RunningPod:
    namespace: str
    name: str
    ip: str
    labels: dict[str, str]
    ports: dict[str, int]  # container port names -> numbers
    ready: bool = False
    task: asyncio.Task[None] | None = None
    processes: list[asyncio.subprocess.Process] = field(default_factory=list)


class SimulatedKubelet:
    def __init__(self, api: client.ApiClient, root: Path, claims: dict[str, Path]) -> None:
        self.api = api
        self.core = client.CoreV1Api(api)
        self.root = root
        self.claims = claims
        self.pods: dict[tuple[str, str], RunningPod] = {}
        self._ips = itertools.count(0)
        # Pod IPs from a /16 of 127/8 picked at random, so two simulated clusters rarely share one.
        self._pod_net = f"127.{random.randint(200, 254)}"
        self._turn = itertools.count(0)
        self._proxies: dict[tuple[str, str], list[asyncio.Server]] = {}

    async def run(self) -> None:
        log.info("simulated kubelet: pods run as local processes", root=str(self.root))
        try:
            await asyncio.gather(self._watch("pods"), self._watch("services"))
        finally:
            await self.stop_all()

    async def stop_all(self) -> None:
        pods, self.pods = list(self.pods.values()), {}
        for pod in pods:
            await self._stop(pod)
        for servers in self._proxies.values():
            for server in servers:
                server.close()
        self._proxies.clear()

    # ---- watching -------------------------------------------------------------------------------

    async def _watch(self, what: str) -> None:
        lister = self.core.list_pod_for_all_namespaces if what == "pods" else self.core.list_service_for_all_namespaces
        while True:
            try:
                async with watch.Watch() as w:
                    async for event in w.stream(lister, timeout_seconds=300):
                        obj = event["raw_object"]
                        if what == "pods":
                            await self._pod_event(event["type"], obj)
                        else:
                            await self._service_event(event["type"], obj)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("simulated kubelet: watch failed; watching again", what=what, error=str(exc))
                await asyncio.sleep(RESTART_BACKOFF)

    async def _pod_event(self, kind: str, obj: Obj) -> None:
        key = (obj["metadata"]["namespace"], obj["metadata"]["name"])
        if kind == "DELETED":
            if (pod := self.pods.pop(key, None)) is not None:
                await self._stop(pod)
        elif kind == "ADDED" and key not in self.pods:
            n = next(self._ips)
            ports = {
                p["name"]: p["containerPort"]
                for c in obj["spec"]["containers"]
                for p in c.get("ports", [])
                if p.get("name")
            }
            pod = RunningPod(
                namespace=key[0],
                name=key[1],
                ip=f"{self._pod_net}.{n // 250 % 256}.{n % 250 + 1}",
                labels=obj["metadata"].get("labels") or {},
                ports=ports,
            )
            self.pods[key] = pod
            pod.task = asyncio.create_task(self._run_pod(pod, obj))

    async def _service_event(self, kind: str, obj: Obj) -> None:
        key = (obj["metadata"]["namespace"], obj["metadata"]["name"])
        if kind == "DELETED":
            for server in self._proxies.pop(key, []):
                server.close()
            return
        ip = obj["spec"].get("clusterIP")
        if key in self._proxies or not ip or ip == "None":
            return
        selector: dict[str, str] = obj["spec"].get("selector") or {}
        servers = []
        for port in obj["spec"].get("ports", []):
            target: int | str = port.get("targetPort", port["port"])

            async def forward(r: asyncio.StreamReader, w: asyncio.StreamWriter, t: int | str = target) -> None:
                await self._forward(key[0], selector, t, r, w)

            servers.append(await asyncio.start_server(forward, ip, port["port"]))
        self._proxies[key] = servers

    # ---- kube-proxy ----------------------------------------------------------------------------------

    async def _forward(
        self,
        namespace: str,
        selector: dict[str, str],
        target: int | str,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
    ) -> None:
        ready = [
            p
            for p in self.pods.values()
            if p.namespace == namespace and p.ready and selector.items() <= p.labels.items()
        ]
        if not ready:
            writer.close()  # as a Service without ready endpoints refuses
            return
        pod = ready[next(self._turn) % len(ready)]
        port = pod.ports.get(target, 0) if isinstance(target, str) else target
        try:
            up_reader, up_writer = await asyncio.open_connection(pod.ip, port)
        except OSError:
            writer.close()
            return

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            try:
                while data := await src.read(65536):
                    dst.write(data)
                    await dst.drain()
            except (ConnectionError, OSError):
                pass
            finally:
                with contextlib.suppress(Exception):
                    dst.close()

        await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))

    # ---- running a pod -------------------------------------------------------------------------------

    async def _run_pod(self, pod: RunningPod, obj: Obj) -> None:
        spec = obj["spec"]
        folder = self.root / pod.namespace / pod.name
        volumes = self._volumes(spec.get("volumes", []), folder)
        status: Obj = {"phase": "Pending", "podIP": pod.ip, "podIPs": [{"ip": pod.ip}], "startTime": _now()}
        try:
            for init in spec.get("initContainers", []):
                code = await self._run_to_end(pod, init, volumes, folder)
                if code != 0:
                    status["initContainerStatuses"] = [_terminated(init["name"], code, "Error")]
                    status["conditions"] = [_condition("Ready", False, "InitError")]
                    await self._report(pod, status)
                    log.warning("simulated kubelet: init container failed", pod=pod.name, container=init["name"])
                    return
            (container,) = spec["containers"]  # what Pier's driver makes; more are not simulated
            restarts = 0
            while True:
                process = await self._start(pod, container, volumes, folder)
                status.update(
                    phase="Running",
                    containerStatuses=[_running(container["name"], restarts)],
                    conditions=[_condition("Ready", False, "ContainersNotReady")],
                )
                await self._report(pod, status)
                prober = asyncio.create_task(self._probe(pod, container, volumes, status, process))
                code = await process.wait()
                await cancel_and_wait([prober])
                pod.ready = False
                restarts += 1
                log.info("simulated kubelet: container exited; restarting", pod=pod.name, status=code)
                status["containerStatuses"] = [
                    {**_running(container["name"], restarts), "lastState": {"terminated": {"exitCode": code}}}
                ]
                await asyncio.sleep(RESTART_BACKOFF)
        except ApiException as exc:
            if exc.status != 404:  # 404: the pod was deleted meanwhile
                log.exception("simulated kubelet: the pod could not be run", pod=pod.name)
        except Exception:
            log.exception("simulated kubelet: the pod could not be run", pod=pod.name)

    def _volumes(self, volumes: list[Obj], folder: Path) -> dict[str, Path]:
        out = {}
        for volume in volumes:
            if "emptyDir" in volume:
                path = folder / "volumes" / volume["name"]
                path.mkdir(parents=True, exist_ok=True)
            elif "persistentVolumeClaim" in volume:
                path = self.claims[volume["persistentVolumeClaim"]["claimName"]]
            elif "hostPath" in volume:
                path = Path(volume["hostPath"]["path"])
            else:
                raise ValueError(f"the simulated kubelet has no volume like {volume}")
            out[volume["name"]] = path
        return out

    def _rewriter(self, container: Obj, volumes: dict[str, Path], pod: RunningPod) -> Any:
        mounts = sorted(
            ((m["mountPath"].rstrip("/"), volumes[m["name"]]) for m in container.get("volumeMounts", [])),
            key=lambda m: -len(m[0]),
        )

        def rewrite(text: str) -> str:
            if text == "0.0.0.0":
                return pod.ip
            if text == "python":
                return sys.executable
            for mount, path in mounts:
                if text == mount or text.startswith(mount + "/"):
                    return str(path) + text[len(mount) :]
            return text

        return rewrite

    async def _environment(self, pod: RunningPod, container: Obj, rewrite: Any) -> dict[str, str]:
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOSTNAME": pod.name}
        for item in container.get("env", []):
            if "value" in item:
                env[item["name"]] = rewrite(item["value"])
                continue
            source = item["valueFrom"]
            if "secretKeyRef" in source:
                ref = source["secretKeyRef"]
                secret = await self.core.read_namespaced_secret(ref["name"], pod.namespace)
                env[item["name"]] = base64.b64decode((secret.data or {})[ref["key"]]).decode()
            elif "fieldRef" in source:
                path = source["fieldRef"]["fieldPath"]
                env[item["name"]] = {"metadata.name": pod.name, "status.podIP": pod.ip}.get(path, "")
        return env

    async def _start(
        self, pod: RunningPod, container: Obj, volumes: dict[str, Path], folder: Path
    ) -> asyncio.subprocess.Process:
        rewrite = self._rewriter(container, volumes, pod)
        argv = [rewrite(a) for a in [*container.get("command", []), *container.get("args", [])]]
        env = await self._environment(pod, container, rewrite)
        logs = folder / f"{container['name']}.log"
        with logs.open("ab") as out:
            process = await asyncio.create_subprocess_exec(
                *argv,
                env=env,
                cwd=folder,
                stdout=out,
                stderr=out,
                stdin=asyncio.subprocess.DEVNULL,
                start_new_session=True,
            )
        pod.processes.append(process)
        log.info("simulated kubelet: container started", pod=pod.name, container=container["name"], pid=process.pid)
        return process

    async def _run_to_end(self, pod: RunningPod, container: Obj, volumes: dict[str, Path], folder: Path) -> int:
        process = await self._start(pod, container, volumes, folder)
        return await process.wait()

    async def _probe(
        self,
        pod: RunningPod,
        container: Obj,
        volumes: dict[str, Path],
        status: Obj,
        process: asyncio.subprocess.Process,
    ) -> None:
        """The startup probe until it passes, then the readiness probe (the Ready condition) and the
        liveness probe (failureThreshold failures in a row end the container, which is started again)."""
        rewrite = self._rewriter(container, volumes, pod)
        env = await self._environment(pod, container, rewrite)
        startup, readiness = container.get("startupProbe"), container.get("readinessProbe")
        liveness, failures = container.get("livenessProbe"), 0
        if startup:
            await asyncio.sleep(startup.get("initialDelaySeconds", 0))
            # A kubelet polls by design: it asks every periodSeconds.
            while not await self._check(startup, rewrite, env):  # noqa: ASYNC110
                await asyncio.sleep(startup.get("periodSeconds", 10))
        while True:
            ready = await self._check(readiness, rewrite, env) if readiness else True
            if ready != pod.ready:
                pod.ready = ready
                status["conditions"] = [_condition("Ready", ready, "" if ready else "ContainersNotReady")]
                status["containerStatuses"][0]["ready"] = ready
                await self._report(pod, status)
            if liveness:
                failures = 0 if await self._check(liveness, rewrite, env) else failures + 1
                if failures >= liveness.get("failureThreshold", 3):
                    log.info("simulated kubelet: liveness probe failed; restarting", pod=pod.name)
                    with contextlib.suppress(ProcessLookupError):
                        os.killpg(process.pid, signal.SIGKILL)
                    return
            await asyncio.sleep((readiness or {}).get("periodSeconds", 10))

    async def _check(self, probe: Obj, rewrite: Any, env: dict[str, str]) -> bool:
        if "exec" not in probe:
            return True  # httpGet and tcpSocket probes are not simulated
        argv = [rewrite(a) for a in probe["exec"]["command"]]
        process = await asyncio.create_subprocess_exec(
            *argv, env=env, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL
        )
        try:
            async with asyncio.timeout(probe.get("timeoutSeconds", 1)):
                return await process.wait() == 0
        except TimeoutError:
            process.kill()
            await process.wait()
            return False

    async def _report(self, pod: RunningPod, status: Obj) -> None:
        await self.core.patch_namespaced_pod_status(pod.name, pod.namespace, {"status": status})

    async def _stop(self, pod: RunningPod) -> None:
        if pod.task is not None:
            await cancel_and_wait([pod.task])
        for process in pod.processes:
            if process.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(process.pid, signal.SIGTERM)
                try:
                    async with asyncio.timeout(STOP_TIMEOUT):
                        await process.wait()
                except TimeoutError:
                    with contextlib.suppress(ProcessLookupError):
                        os.killpg(process.pid, signal.SIGKILL)
                    await process.wait()
        log.info("simulated kubelet: pod stopped", pod=pod.name)


def _condition(kind: str, status: bool, reason: str) -> Obj:
    out = {"type": kind, "status": "True" if status else "False", "lastTransitionTime": _now()}
    return {**out, "reason": reason} if reason else out


def _running(name: str, restarts: int) -> Obj:
    return {
        "name": name,
        "image": "simulated",
        "imageID": "",
        "ready": False,
        "restartCount": restarts,
        "started": True,
        "state": {"running": {"startedAt": _now()}},
    }


def _terminated(name: str, code: int, reason: str) -> Obj:
    return {
        "name": name,
        "image": "simulated",
        "imageID": "",
        "ready": False,
        "restartCount": 0,
        "state": {"terminated": {"exitCode": code, "reason": reason}},
    }
