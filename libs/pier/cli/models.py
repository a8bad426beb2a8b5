"""`pier call`, `show`, `list`, `versions`, `labels`, `usage`: using and looking at model APIs."""

from __future__ import annotations

import argparse
import json
from typing import Any

from pier.cli import usage
from pier.cli.command import add, json_flag, printed_json
from pier.client import Client

MODEL = "/v1/models/{ref}"


def cmd_call(client: Client, args: argparse.Namespace) -> int:
    data = usage.json_value(args.data, "--data", dict) if args.data else None
    parameters = usage.json_value(args.parameters, "--parameters", list) if args.parameters else None
    if data is None and parameters is None:
        data = {}
    answer = client.predict(
        args.name,
        data=data,
        parameters=parameters,
        route=args.route,
        label=args.label,
        token=args.token,
        deadline=args.deadline,
        verb=args.verb,
    )
    print(json.dumps(answer if args.full else answer.get("result"), indent=None if args.full else 2))
    return 0


def cmd_show(client: Client, args: argparse.Namespace) -> int:
    model = client.model(args.name)
    if printed_json(args, model):
        return 0
    print(f"{model['name']}  ({model['id']})")
    print(f"  state:     {model['state']}" + (f" ({model['reason']})" if model["reason"] else ""))
    print(f"  latest:    version {model['latest']}" if model["latest"] else "  latest:    none yet")
    if model.get("queue_position"):
        print(f"  queue:     place {model['queue_position']} in line for {model['gpu_type']} GPUs")
    gpus = f"{model['gpu_count']} x {model['gpu_type']} GPU(s)" if model.get("gpu_count") else "CPU only"
    quota = f", quota {model['quota']}" if model.get("quota") else ""
    print(f"  runs on:   {model.get('instances')} instance(s), {gpus}{quota}")
    print(f"  owner:     {model['owner']}, {model['visibility']}, {model['access']}, routing {model['routing_mode']}")
    print(f"  url:       {model['url']}")
    for inst in model["running_instances"]:
        isolation = "  not isolated (runs as the platform user)" if inst.get("isolated") is False else ""
        print(f"  instance   {inst['instance_id']}  v{inst['version']}  {inst['state']}  {inst['address']}{isolation}")
    return 0


def cmd_list(client: Client, args: argparse.Namespace) -> int:
    models = client.models()
    if printed_json(args, models):
        return 0
    for m in models:
        print(f"{m['name']:<30} {m['state']:<10} latest={m['latest']}")
    return 0


def cmd_versions(client: Client, args: argparse.Namespace) -> int:
    versions = client.versions(args.name)
    if printed_json(args, versions):
        return 0
    for v in versions:
        reason = f"  {v['reason']}" if v["reason"] else ""
        if v.get("git"):
            commit = (v.get("commit") or "")[:12] or (v.get("ref") or "default branch")
            source = f"{v['git']}@{commit}"
        else:
            source = f"{v['source_name']}:" if v.get("source_name") else ""
            source += v["source"][:12]
        environment = v.get("environment") or v.get("python_version") or "-"
        print(f"{v['number']:>4}  {v['state']:<9} {source}  env={environment}  {v['created_at']}{reason}")
    return 0


def cmd_labels(client: Client, args: argparse.Namespace) -> int:
    labels = client.labels(args.name)
    if printed_json(args, labels):
        return 0
    for label in labels:
        print(f"{label['label']:<16} -> version {label['version']}  by {label['promoted_by']} {label['promoted_at']}")
    if not labels:
        print("no labels: only `latest` serves (`pier promote NAME VERSION` sets prod)")
    return 0


def cmd_usage(client: Client, args: argparse.Namespace) -> int:
    used = client.usage(args.name)
    if printed_json(args, used):
        return 0
    print(f"{args.name}")
    print(f"  GPU-seconds:       {used['gpu_seconds']:.1f}")
    print(f"  instance-seconds:  {used['instance_seconds']:.1f}")
    print(f"  running instances: {used['running_instances']}")
    return 0


def register(sub: Any) -> None:
    c = add(
        sub,
        "call",
        cmd_call,
        "call a model API through the gateway (a shed call is retried, after its Retry-After)",
        [
            'pier call hello --data \'{"name": "Ada"}\'',
            "pier call hello --parameters '[\"Grace\"]' --label prod --token $TOKEN --full",
            'pier call routes --route /classify --data \'{"text": "a great day"}\'',
        ],
    )
    c.add_argument("name")
    c.add_argument("--data", help="named arguments (or a route's body) as a JSON object, e.g. '{\"x\": 1}'")
    c.add_argument("--parameters", help="positional arguments as a JSON array")
    c.add_argument("--route", help="call this route (e.g. /classify) instead of /model")
    c.add_argument("--verb", default="POST", help="the route's verb (default POST; GET sends --data as the query)")
    c.add_argument("--label", default="latest", help="call a label (e.g. prod) instead of latest")
    c.add_argument("--token", help="an access token for a restricted model API")
    c.add_argument("--full", action="store_true", help="print the whole response, not only the result")
    c.add_argument(
        "--deadline", type=float, default=30.0, help="seconds to keep retrying a shed call (503, 502; default 30)"
    )

    s = add(sub, "show", cmd_show, "show a model API", ["pier show hello", "pier show hello --json"], (f"GET {MODEL}",))
    s.add_argument("name")
    json_flag(s)

    ls = add(sub, "list", cmd_list, "list the model APIs you may see", ["pier list --json"], ("GET /v1/models",))
    json_flag(ls)

    v = add(
        sub,
        "versions",
        cmd_versions,
        "list a model API's versions and where each came from",
        ["pier versions hello"],
        (f"GET {MODEL}/versions",),
    )
    v.add_argument("name")
    json_flag(v)

    lb = add(
        sub,
        "labels",
        cmd_labels,
        "list a model API's labels (prod, ...) and the version each points at",
        ["pier labels hello"],
        (f"GET {MODEL}/labels",),
    )
    lb.add_argument("name")
    json_flag(lb)

    u = add(
        sub,
        "usage",
        cmd_usage,
        "GPU-seconds and instance-seconds a model API has used",
        ["pier usage hello --json"],
        (f"GET {MODEL}/usage",),
    )
    u.add_argument("name")
    json_flag(u)
