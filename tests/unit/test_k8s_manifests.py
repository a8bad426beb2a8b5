"""infra/k8s/: every manifest passes the schema check of the Kubernetes version the simulated API server
pins (strict: an unknown or misspelt field fails), kustomize applies every file, and the shape is
what docs/kubernetes.md promises (five services, NATS as a 3-node JetStream cluster with the
platform's NATS permissions, least-privilege RBAC, a PodDisruptionBudget for each replicated
workload)."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from infra.credentials import nats_permissions
from infra.k8s_sim.simulated_apiserver import KUBERNETES_VERSION
from infra.supervisor import SERVICES

K8S = Path(__file__).parents[2] / "infra" / "k8s"


def manifests() -> list[tuple[str, dict[str, Any]]]:
    return [
        (path.name, doc)
        for path in sorted(K8S.glob("*.yaml"))
        if path.name != "kustomization.yaml"
        for doc in yaml.safe_load_all(path.read_text())
        if doc
    ]


def of_kind(kind: str) -> list[dict[str, Any]]:
    return [doc for _, doc in manifests() if doc["kind"] == kind]


@pytest.mark.parametrize(
    ("file", "doc"), manifests(), ids=[f"{f}:{d['kind']}/{d['metadata']['name']}" for f, d in manifests()]
)
def test_every_manifest_matches_the_pinned_kubernetes_schema(file: str, doc: dict[str, Any]) -> None:
    kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)


def test_the_schema_check_catches_a_misspelt_field() -> None:
    (deployment, *_) = of_kind("Deployment")
    broken = json.loads(json.dumps(deployment))
    broken["spec"]["template"]["spec"]["containers"][0]["imagePullPolcy"] = "Always"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, KUBERNETES_VERSION, strict=True)


def test_kustomize_applies_every_file() -> None:
    kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    files = {p.name for p in K8S.glob("*.yaml")} - {"kustomization.yaml"}
    assert set(kustomization["resources"]) == files
    assert kustomization["namespace"] == "pier"


def test_the_five_services_run_and_every_replicated_workload_has_a_disruption_budget() -> None:
    workloads = of_kind("Deployment") + of_kind("StatefulSet")
    commands = {tuple(w["spec"]["template"]["spec"]["containers"][0].get("command", [])) for w in workloads}
    for service in SERVICES:
        assert ("python", "-m", f"services.{service}") in commands, service
    budgets = [b["spec"]["selector"]["matchLabels"] for b in of_kind("PodDisruptionBudget")]
    for workload in workloads:
        if workload["spec"]["replicas"] > 1:
            labels = workload["spec"]["template"]["metadata"]["labels"]
            assert any(selector.items() <= labels.items() for selector in budgets), workload["metadata"]["name"]


def test_nats_is_a_three_node_jetstream_cluster_with_the_platforms_permissions() -> None:
    (nats,) = [s for s in of_kind("StatefulSet") if s["metadata"]["name"] == "nats"]
    assert nats["spec"]["replicas"] == 3
    (config,) = [c for c in of_kind("ConfigMap") if c["metadata"]["name"] == "nats-config"]
    conf = config["data"]["nats.conf"]
    assert "jetstream {" in conf
    assert [f"nats-{n}.nats-cluster" for n in range(3)] == re.findall(r"nats://(nats-\d\.nats-cluster):6222", conf)
    users = dict(re.findall(r"\{user: (\w+), password: \$\w+(?:, permissions: (\{.*\}))?\}", conf))
    assert set(users) == set(SERVICES)
    want = nats_permissions(SERVICES)
    for service in SERVICES:
        assert (json.loads(users[service]) if users[service] else None) == want.get(service), service


def test_only_the_scheduler_may_use_the_kubernetes_api_and_only_for_what_its_driver_does() -> None:
    for role in of_kind("Role") + of_kind("ClusterRole"):
        for rule in role["rules"]:
            assert "*" not in rule["verbs"] and "*" not in rule["resources"] and "*" not in rule["apiGroups"]
    bound = {s["name"] for b in of_kind("RoleBinding") + of_kind("ClusterRoleBinding") for s in b["subjects"]}
    assert bound == {"pier-scheduler"}
    for workload in of_kind("Deployment") + of_kind("StatefulSet"):
        pod = workload["spec"]["template"]["spec"]
        if pod.get("serviceAccountName") != "pier-scheduler":
            (account,) = [
                a for a in of_kind("ServiceAccount") if a["metadata"]["name"] == pod.get("serviceAccountName")
            ] or [{"automountServiceAccountToken": pod.get("automountServiceAccountToken")}]
            assert account.get("automountServiceAccountToken") is False, workload["metadata"]["name"]
    (role,) = of_kind("Role")
    granted = {
        (g, r, v) for rule in role["rules"] for g in rule["apiGroups"] for r in rule["resources"] for v in rule["verbs"]
    }
    assert ("", "secrets", "list") not in granted  # it reads its own Secrets by name, never all of them
    assert ("apps", "deployments", "watch") in granted
