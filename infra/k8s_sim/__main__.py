"""`python -m infra.k8s_sim`: a SIMULATED Kubernetes cluster on this machine, in one process: the
simulated API server, the Deployment controller's part (pods for each Deployment's replicas) and one
simulated kubelet that runs the pods as local processes. For tests and trials of PIER_RUNTIME=kubernetes
where no cluster can be had (docs/kubernetes.md); nothing here is a real cluster.

    python -m infra.k8s_sim --port 6443 --root /tmp/k8s-sim --claim pier-home=$PIER_HOME \\
        --node node-1 --node gpu-1=nvidia-a100:4
"""

from __future__ import annotations

import argparse
import asyncio
import signal
from pathlib import Path

import structlog
from kubernetes_asyncio import client

from infra.k8s_sim.simulated_apiserver import SimulatedCluster, kind_of, serving
from infra.k8s_sim.simulated_kubelet import SimulatedKubelet
from pier.tasks import together

log = structlog.get_logger("k8s.simulated-cluster")
GPU_LABEL = "nvidia.com/gpu.product"


def node(spec: str) -> dict[str, object]:
    """`name` or `name=gpu-type:count`: a Node whose allocatable nvidia.com/gpu and GPU label say so."""
    name, _, gpus = spec.partition("=")
    labels: dict[str, str] = {}
    allocatable = {"cpu": "16", "memory": "64Gi", "ephemeral-storage": "500Gi"}
    if gpus:
        kind, _, count = gpus.partition(":")
        labels[GPU_LABEL] = kind
        allocatable["nvidia.com/gpu"] = count or "1"
    return {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {"name": name, "labels": labels},
        "status": {"allocatable": allocatable, "capacity": allocatable},
    }


async def controllers(cluster: SimulatedCluster) -> None:
    """The Deployment controller's part: make each Deployment's pods whenever anything changes."""
    while True:
        seen = cluster.rv
        await cluster.reconcile_deployments()
        async with cluster.changed:
            if cluster.rv == seen:
                await cluster.changed.wait()


async def main(args: argparse.Namespace) -> None:
    claims = dict((name, Path(path)) for name, _, path in (c.partition("=") for c in args.claim))
    async with serving(args.host, args.port) as (url, cluster):
        for spec in args.node or ["node-1"]:
            await cluster.create(kind_of("nodes"), "", node(spec))
        async with client.ApiClient(client.Configuration(host=url)) as api:
            kubelet = SimulatedKubelet(api, args.root, claims)
            stop = asyncio.Event()
            loop = asyncio.get_running_loop()
            for signum in (signal.SIGTERM, signal.SIGINT):
                loop.add_signal_handler(signum, stop.set)
            log.info("simulated cluster ready", url=url, nodes=args.node or ["node-1"])

            async def until_stopped() -> None:
                await stop.wait()
                raise SystemExit(0)

            try:
                await together(controllers(cluster), kubelet.run(), until_stopped())
            except SystemExit:
                pass
            finally:
                await kubelet.stop_all()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description="A SIMULATED Kubernetes cluster (no real cluster behind it).")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=6443)
    parser.add_argument("--root", type=Path, required=True, help="where pods' folders go")
    parser.add_argument("--claim", action="append", default=[], help="NAME=PATH: the folder a volume claim is")
    parser.add_argument("--node", action="append", help="NAME or NAME=GPU_TYPE:COUNT (repeatable)")
    asyncio.run(main(parser.parse_args()))
