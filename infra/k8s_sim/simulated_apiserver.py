"""A SIMULATED Kubernetes API server, for tests and trials on machines without a cluster.

It serves the part of the API that Pier's kubernetes driver (and the simulated kubelet) use: create,
get, list, patch (merge and strategic merge, both applied as a JSON merge patch), replace, delete and
delete-collection, and watch from a resourceVersion, for Deployments, Services, Secrets, Pods and
Nodes. Every object it is sent is validated against the OpenAPI schema of a pinned Kubernetes version
(`kubernetes-validate`, strict: unknown fields are errors, as `kubectl --validate=strict` makes them),
and errors are the Status objects a real API server answers (404 NotFound, 409 AlreadyExists and
Conflict, 422 Invalid, 410 Gone for a watch from a compacted resourceVersion).

What it does not do: authentication, admission, defaulting beyond metadata, scheduling, and the
controllers (`Deployments` get their pods from `SimulatedCluster.reconcile_deployments`, run by the
simulated kubelet's host, not by this server). Deleting an object deletes its dependents (owner
references), as the garbage collector does with background propagation.

    python -m infra.k8s_sim.simulated_apiserver --port 6443
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import copy
import hashlib
import itertools
import json
import random
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import kubernetes_validate
import structlog
from aiohttp import web

log = structlog.get_logger("k8s.simulated-apiserver")

# The Kubernetes version whose schemas every object is checked against (and the manifests in infra/k8s/).
KUBERNETES_VERSION = "1.31.0"
# Watch events kept for watchers that resume from a resourceVersion; older ones answer 410 Gone.
HISTORY = 10_000

Obj = dict[str, Any]


@dataclass(frozen=True)
class Kind:
    kind: str
    plural: str
    group: str  # "" for the core group
    version: str
    namespaced: bool

    @property
    def api_version(self) -> str:
        return f"{self.group}/{self.version}" if self.group else self.version

    @property
    def qualified(self) -> str:
        """How a real API server names the resource in messages: `deployments.apps`, `pods`."""
        return f"{self.plural}.{self.group}" if self.group else self.plural


KINDS = [
    Kind("Deployment", "deployments", "apps", "v1", True),
    Kind("Service", "services", "", "v1", True),
    Kind("Secret", "secrets", "", "v1", True),
    Kind("Pod", "pods", "", "v1", True),
    Kind("Node", "nodes", "", "v1", False),
]


class ApiError(Exception):
    def __init__(self, code: int, reason: str, message: str, details: Obj | None = None) -> None:
        super().__init__(message)
        self.code, self.reason, self.message, self.details = code, reason, message, details or {}

    def status(self) -> Obj:
        return {
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": self.message,
            "reason": self.reason,
            "details": self.details,
            "code": self.code,
        }


def validate(obj: Obj) -> None:
    """Raise a 422 Invalid naming the problem when `obj` does not match the pinned schema."""
    try:
        kubernetes_validate.validate(obj, KUBERNETES_VERSION, strict=True)
    except kubernetes_validate.ValidationError as exc:
        path = ".".join(str(p) for p in exc.path)
        kind = obj.get("kind", "object")
        name = obj.get("metadata", {}).get("name", "")
        raise ApiError(
            422,
            "Invalid",
            f'{kind} "{name}" is invalid: {path}: {exc.message}',
            {"name": name, "kind": kind, "causes": [{"field": path, "message": exc.message}]},
        ) from None
    except kubernetes_validate.utils.SchemaNotFoundError as exc:
        raise ApiError(400, "BadRequest", exc.message) from None


def _store_secret(obj: Obj) -> None:
    """What an API server does with a Secret's stringData: base64 it into data, keep no stringData."""
    if obj.get("kind") == "Secret" and "stringData" in obj:
        data = obj.setdefault("data", {})
        for key, value in obj.pop("stringData").items():
            data[key] = base64.b64encode(value.encode()).decode()


def merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386 JSON merge patch."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    out = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            out.pop(key, None)
        else:
            out[key] = merge_patch(out.get(key), value)
    return out


def selector_matches(selector: str, labels: dict[str, str]) -> bool:
    """An equality-based label selector (`a=b,c!=d,e`), as `labelSelector` takes it."""
    for term in (t.strip() for t in selector.split(",") if t.strip()):
        if "!=" in term:
            key, value = term.split("!=", 1)
            if labels.get(key.strip()) == value.strip():
                return False
        elif "=" in term:
            key, value = term.replace("==", "=").split("=", 1)
            if labels.get(key.strip()) != value.strip():
                return False
        elif term.startswith("!"):
            if term[1:] in labels:
                return False
        elif term not in labels:
            return False
    return True


def field_matches(selector: str, obj: Obj) -> bool:
    """An equality field selector (`spec.nodeName=n1,metadata.name=x`)."""
    for term in (t.strip() for t in selector.split(",") if t.strip()):
        negate = "!=" in term
        path, value = term.split("!=" if negate else "=", 1)
        current: Any = obj
        for part in path.strip().split("."):
            current = current.get(part) if isinstance(current, dict) else None
        if ((current or "") == value.strip()) == negate:
            return False
    return True


@dataclass
class Event:
    rv: int
    type: str
    kind: Kind
    obj: Obj


class SimulatedCluster:
    """The object store behind the server: one resourceVersion counter, a bounded event history."""

    def __init__(self) -> None:
        self.objects: dict[tuple[str, str, str], Obj] = {}  # (plural, namespace, name) -> object
        self.events: list[Event] = []
        self.rv = 0
        self.changed = asyncio.Condition()
        self._names = itertools.count(1)
        self._service_ips = itertools.count(0)
        # A /16 of 127/8 picked at random, so two simulated clusters on one machine rarely share one.
        self._service_net = f"127.{random.randint(100, 199)}"

    # ---- reading ----------------------------------------------------------------------------------

    def get(self, kind: Kind, namespace: str, name: str) -> Obj:
        obj = self.objects.get((kind.plural, namespace, name))
        if obj is None:
            raise ApiError(
                404,
                "NotFound",
                f'{kind.qualified} "{name}" not found',
                {"name": name, "group": kind.group, "kind": kind.plural},
            )
        return obj

    def list(self, kind: Kind, namespace: str | None, labels: str = "", fields: str = "") -> list[Obj]:
        return [
            obj
            for (plural, ns, _), obj in sorted(self.objects.items())
            if plural == kind.plural
            and (namespace is None or ns == namespace)
            and selector_matches(labels, obj["metadata"].get("labels") or {})
            and field_matches(fields, obj)
        ]

    # ---- writing ----------------------------------------------------------------------------------

    async def create(self, kind: Kind, namespace: str, obj: Obj) -> Obj:
        meta = obj.setdefault("metadata", {})
        if not meta.get("name") and meta.get("generateName"):
            meta["name"] = f"{meta['generateName']}{uuid.uuid4().hex[:5]}"
        name = meta.get("name")
        if not name:
            raise ApiError(422, "Invalid", f"{kind.kind} is invalid: metadata.name: Required value")
        if kind.namespaced:
            if meta.get("namespace", namespace) != namespace:
                raise ApiError(400, "BadRequest", "the namespace of the provided object does not match the request")
            meta["namespace"] = namespace
        obj.setdefault("apiVersion", kind.api_version)
        obj.setdefault("kind", kind.kind)
        validate(obj)
        key = (kind.plural, namespace, name)
        if key in self.objects:
            raise ApiError(
                409,
                "AlreadyExists",
                f'{kind.qualified} "{name}" already exists',
                {"name": name, "group": kind.group, "kind": kind.plural},
            )
        meta["uid"] = str(uuid.uuid4())
        meta["creationTimestamp"] = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        if kind.kind == "Deployment":
            meta["generation"] = 1
            obj.setdefault("status", {})
        if kind.kind == "Service" and obj.get("spec", {}).get("clusterIP") != "None":
            # Loopback addresses of their own (all of 127/8 is local on Linux: 127.100-199.x.y), which the simulated
            # kubelet's proxy listens on, as kube-proxy makes a Service's cluster IP reach its pods.
            n = next(self._service_ips)
            obj["spec"]["clusterIP"] = f"{self._service_net}.{n // 250 % 256}.{n % 250 + 1}"
            obj["spec"]["clusterIPs"] = [obj["spec"]["clusterIP"]]
        return await self._put(kind, key, obj, "ADDED")

    async def replace(self, kind: Kind, namespace: str, name: str, obj: Obj, *, status_only: bool = False) -> Obj:
        current = self.get(kind, namespace, name)
        sent_rv = obj.get("metadata", {}).get("resourceVersion")
        if sent_rv and sent_rv != current["metadata"]["resourceVersion"]:
            raise ApiError(
                409,
                "Conflict",
                f'Operation cannot be fulfilled on {kind.qualified} "{name}": the object has been modified; '
                "please apply your changes to the latest version and try again",
                {"name": name, "group": kind.group, "kind": kind.plural},
            )
        if status_only:
            # The status subresource changes status alone, whatever else was sent.
            obj = {**current, "status": obj.get("status", {})}
        else:
            obj = {**obj, "status": current.get("status", obj.get("status", {}))} if "status" in current else obj
        meta = obj.setdefault("metadata", {})
        for fixed in ("uid", "creationTimestamp", "namespace", "name"):
            if fixed in current["metadata"]:
                meta[fixed] = current["metadata"][fixed]
        if kind.kind == "Deployment" and obj.get("spec") != current.get("spec"):
            meta["generation"] = current["metadata"].get("generation", 1) + 1
        elif "generation" in current["metadata"]:
            meta["generation"] = current["metadata"]["generation"]
        obj.setdefault("apiVersion", kind.api_version)
        obj.setdefault("kind", kind.kind)
        validate(obj)
        return await self._put(kind, (kind.plural, namespace, name), obj, "MODIFIED")

    async def patch(self, kind: Kind, namespace: str, name: str, patch: Obj, *, status_only: bool = False) -> Obj:
        current = self.get(kind, namespace, name)
        merged = merge_patch(copy.deepcopy(current), patch)
        if "resourceVersion" not in patch.get("metadata", {}):
            merged["metadata"]["resourceVersion"] = current["metadata"]["resourceVersion"]
        return await self.replace(kind, namespace, name, merged, status_only=status_only)

    async def delete(self, kind: Kind, namespace: str, name: str) -> Obj:
        obj = self.get(kind, namespace, name)
        del self.objects[(kind.plural, namespace, name)]
        self.rv += 1
        obj = copy.deepcopy(obj)
        obj["metadata"]["resourceVersion"] = str(self.rv)
        await self._emit(Event(self.rv, "DELETED", kind, obj))
        # The garbage collector's background propagation: dependents go too.
        uid = obj["metadata"]["uid"]
        for (plural, ns, dep_name), dep in list(self.objects.items()):
            owners = dep["metadata"].get("ownerReferences") or []
            if any(o.get("uid") == uid for o in owners) and (plural, ns, dep_name) in self.objects:
                await self.delete(kind_of(plural), ns, dep_name)
        return obj

    async def _put(self, kind: Kind, key: tuple[str, str, str], obj: Obj, what: str) -> Obj:
        _store_secret(obj)
        self.rv += 1
        obj["metadata"]["resourceVersion"] = str(self.rv)
        self.objects[key] = obj
        await self._emit(Event(self.rv, what, kind, copy.deepcopy(obj)))
        return obj

    async def _emit(self, event: Event) -> None:
        self.events.append(event)
        del self.events[:-HISTORY]
        async with self.changed:
            self.changed.notify_all()

    def since(self, rv: int) -> Iterator[Event]:
        if self.events and rv < self.events[0].rv - 1:
            raise ApiError(410, "Expired", f"too old resource version: {rv} ({self.events[0].rv - 1})")
        return (e for e in self.events if e.rv > rv)

    # ---- the controller manager's part --------------------------------------------------------------

    async def reconcile_deployments(self) -> None:
        """What the Deployment controller does, reduced: each Deployment owns `spec.replicas` pods made
        from its template (no ReplicaSets, no rolling updates: a changed template replaces its pods)."""
        for deployment in self.list(kind_of("deployments"), None):
            meta, spec = deployment["metadata"], deployment["spec"]
            template = spec["template"]
            digest = hashlib.sha256(json.dumps(template, sort_keys=True).encode()).hexdigest()[:16]
            pods = [
                p
                for p in self.list(kind_of("pods"), meta["namespace"])
                if any(o.get("uid") == meta["uid"] for o in p["metadata"].get("ownerReferences") or [])
            ]
            for pod in pods:
                if pod["metadata"].get("annotations", {}).get("k8s-sim/template") != digest:
                    await self.delete(kind_of("pods"), meta["namespace"], pod["metadata"]["name"])
                    pods.remove(pod)
            want = int(spec.get("replicas", 1))
            for pod in pods[want:]:
                await self.delete(kind_of("pods"), meta["namespace"], pod["metadata"]["name"])
            for _ in range(want - len(pods)):
                pod_meta = copy.deepcopy(template.get("metadata", {}))
                pod_meta["name"] = f"{meta['name']}-{next(self._names):05d}"
                pod_meta.setdefault("annotations", {})["k8s-sim/template"] = digest
                pod_meta["ownerReferences"] = [
                    {"apiVersion": "apps/v1", "kind": "Deployment", "name": meta["name"], "uid": meta["uid"]}
                ]
                pod = {"apiVersion": "v1", "kind": "Pod", "metadata": pod_meta, "spec": copy.deepcopy(template["spec"])}
                await self.create(kind_of("pods"), meta["namespace"], pod)
            ready = sum(1 for p in self.list(kind_of("pods"), meta["namespace"]) if _owned_ready(p, meta["uid"]))
            status = {"observedGeneration": meta.get("generation", 1), "replicas": want, "readyReplicas": ready}
            if {k: v for k, v in deployment.get("status", {}).items() if k in status} != status:
                await self.patch(
                    kind_of("deployments"), meta["namespace"], meta["name"], {"status": status}, status_only=True
                )


def _owned_ready(pod: Obj, uid: str) -> bool:
    if not any(o.get("uid") == uid for o in pod["metadata"].get("ownerReferences") or []):
        return False
    conditions = pod.get("status", {}).get("conditions") or []
    return any(c.get("type") == "Ready" and c.get("status") == "True" for c in conditions)


def kind_of(plural: str) -> Kind:
    return next(k for k in KINDS if k.plural == plural)


# ---- HTTP -------------------------------------------------------------------------------------------


def _answer(obj: Obj, status: int = 200) -> web.Response:
    return web.json_response(obj, status=status)


def _list_of(kind: Kind, items: list[Obj], rv: int) -> Obj:
    return {
        "kind": f"{kind.kind}List",
        "apiVersion": kind.api_version,
        "metadata": {"resourceVersion": str(rv)},
        "items": items,
    }


def _success(kind: Kind, obj: Obj) -> Obj:
    meta = obj["metadata"]
    return {
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Success",
        "details": {"name": meta["name"], "group": kind.group, "kind": kind.plural, "uid": meta["uid"]},
    }


async def _body(request: web.Request) -> Obj:
    try:
        body = await request.json(loads=json.loads)
    except json.JSONDecodeError as exc:
        raise ApiError(400, "BadRequest", f"the request body is not JSON: {exc}") from None
    if not isinstance(body, dict):
        raise ApiError(400, "BadRequest", "the request body must be a JSON object")
    return body


def make_app(cluster: SimulatedCluster | None = None) -> web.Application:
    cluster = cluster or SimulatedCluster()
    app = web.Application(middlewares=[_errors])
    for kind in KINDS:
        prefix = f"/apis/{kind.group}/{kind.version}" if kind.group else f"/api/{kind.version}"
        collection = (
            f"{prefix}/namespaces/{{namespace}}/{kind.plural}" if kind.namespaced else f"{prefix}/{kind.plural}"
        )
        handlers = _Handlers(cluster, kind)
        app.router.add_get(collection, handlers.list_or_watch)
        app.router.add_post(collection, handlers.create)
        app.router.add_delete(collection, handlers.delete_collection)
        app.router.add_get(collection + "/{name}", handlers.get)
        app.router.add_put(collection + "/{name}", handlers.replace)
        app.router.add_patch(collection + "/{name}", handlers.patch)
        app.router.add_delete(collection + "/{name}", handlers.delete)
        app.router.add_patch(collection + "/{name}/status", handlers.patch_status)
        app.router.add_put(collection + "/{name}/status", handlers.replace_status)
        if kind.namespaced:
            # Across namespaces, as `kubectl get pods -A` lists.
            app.router.add_get(f"{prefix}/{kind.plural}", handlers.list_or_watch)
    return app


@web.middleware
async def _errors(request: web.Request, handler: Any) -> web.StreamResponse:
    try:
        response: web.StreamResponse = await handler(request)
        return response
    except ApiError as exc:
        if exc.code >= 500 or exc.code == 422:
            log.info("simulated API server refused", method=request.method, path=request.path, message=exc.message)
        return _answer(exc.status(), exc.code)


class _Handlers:
    def __init__(self, cluster: SimulatedCluster, kind: Kind) -> None:
        self.cluster, self.kind = cluster, kind

    def _ns(self, request: web.Request) -> str:
        return request.match_info.get("namespace", "")

    async def get(self, request: web.Request) -> web.Response:
        return _answer(self.cluster.get(self.kind, self._ns(request), request.match_info["name"]))

    async def create(self, request: web.Request) -> web.Response:
        obj = await self.cluster.create(self.kind, self._ns(request), await _body(request))
        log.info("simulated API server: created", kind=self.kind.kind, name=obj["metadata"]["name"])
        return _answer(obj, 201)

    async def replace(self, request: web.Request) -> web.Response:
        return _answer(
            await self.cluster.replace(self.kind, self._ns(request), request.match_info["name"], await _body(request))
        )

    async def replace_status(self, request: web.Request) -> web.Response:
        name = request.match_info["name"]
        return _answer(
            await self.cluster.replace(self.kind, self._ns(request), name, await _body(request), status_only=True)
        )

    async def patch(self, request: web.Request, *, status_only: bool = False) -> web.Response:
        if request.content_type not in ("application/merge-patch+json", "application/strategic-merge-patch+json"):
            raise ApiError(
                415, "UnsupportedMediaType", f"the simulated API server does not take {request.content_type}"
            )
        name = request.match_info["name"]
        patch = await _body(request)
        return _answer(await self.cluster.patch(self.kind, self._ns(request), name, patch, status_only=status_only))

    async def patch_status(self, request: web.Request) -> web.Response:
        return await self.patch(request, status_only=True)

    async def delete(self, request: web.Request) -> web.Response:
        obj = await self.cluster.delete(self.kind, self._ns(request), request.match_info["name"])
        log.info("simulated API server: deleted", kind=self.kind.kind, name=obj["metadata"]["name"])
        return _answer(_success(self.kind, obj))

    async def delete_collection(self, request: web.Request) -> web.Response:
        items = self.cluster.list(
            self.kind,
            self._ns(request),
            request.query.get("labelSelector", ""),
            request.query.get("fieldSelector", ""),
        )
        deleted = [await self.cluster.delete(self.kind, self._ns(request), o["metadata"]["name"]) for o in items]
        return _answer(_list_of(self.kind, deleted, self.cluster.rv))

    async def list_or_watch(self, request: web.Request) -> web.StreamResponse:
        namespace = request.match_info.get("namespace") if self.kind.namespaced else ""
        labels = request.query.get("labelSelector", "")
        fields = request.query.get("fieldSelector", "")
        if request.query.get("watch", "").lower() not in ("true", "1"):
            items = self.cluster.list(self.kind, namespace, labels, fields)
            return _answer(_list_of(self.kind, items, self.cluster.rv))
        return await self._watch(request, namespace, labels, fields)

    async def _watch(self, request: web.Request, namespace: str | None, labels: str, fields: str) -> web.StreamResponse:
        rv_text = request.query.get("resourceVersion", "")
        timeout = float(request.query.get("timeoutSeconds", "1800"))
        response = web.StreamResponse(headers={"Content-Type": "application/json"})
        await response.prepare(request)

        async def send(kind: str, obj: Obj) -> None:
            await response.write(json.dumps({"type": kind, "object": obj}).encode() + b"\n")

        def wanted(e: Event) -> bool:
            ns = e.obj["metadata"].get("namespace", "")
            return (
                e.kind == self.kind
                and (namespace is None or ns == namespace)
                and selector_matches(labels, e.obj["metadata"].get("labels") or {})
                and field_matches(fields, e.obj)
            )

        if rv_text in ("", "0"):
            # No resourceVersion: the current objects first, as ADDED, then what changes.
            rv = self.cluster.rv
            for obj in self.cluster.list(self.kind, namespace, labels, fields):
                await send("ADDED", obj)
        else:
            rv = int(rv_text)
        try:
            async with asyncio.timeout(timeout):
                while True:
                    try:
                        events = list(self.cluster.since(rv))
                    except ApiError as exc:
                        await send("ERROR", exc.status())
                        break
                    for event in events:
                        rv = event.rv
                        if wanted(event):
                            await send(event.type, event.obj)
                    async with self.cluster.changed:
                        if self.cluster.rv == rv:
                            await self.cluster.changed.wait()
        except TimeoutError:
            pass
        except ConnectionResetError:
            return response
        await response.write_eof()
        return response


@asynccontextmanager
async def serving(host: str = "127.0.0.1", port: int = 0) -> AsyncIterator[tuple[str, SimulatedCluster]]:
    """Run the simulated API server in this event loop; yields its URL and its object store."""
    cluster = SimulatedCluster()
    runner = web.AppRunner(make_app(cluster), handle_signals=False, shutdown_timeout=1.0)
    await runner.setup()
    site = web.TCPSite(runner, host, port)
    await site.start()
    bound = runner.addresses[0][1]
    url = f"http://{host}:{bound}"
    log.info("simulated Kubernetes API server: not a cluster", url=url, version=KUBERNETES_VERSION)
    try:
        yield url, cluster
    finally:
        await runner.cleanup()


def main() -> None:
    parser = argparse.ArgumentParser(description="A SIMULATED Kubernetes API server (no cluster behind it).")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=6443)
    args = parser.parse_args()
    log.info("simulated Kubernetes API server: not a cluster", port=args.port, version=KUBERNETES_VERSION)
    web.run_app(make_app(), host=args.host, port=args.port, print=None)


if __name__ == "__main__":
    main()
