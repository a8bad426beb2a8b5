"""`pier call`, `show`, `list`, `versions`: using and looking at model APIs."""

from __future__ import annotations

import argparse
import json
from typing import Any

from pier.cli import usage
from pier.client import Client


def cmd_call(client: Client, args: argparse.Namespace) -> int:
    data = usage.json_value(args.data, "--data", dict) if args.data else None
    parameters = usage.json_value(args.parameters, "--parameters", list) if args.parameters else None
    if data is None and parameters is None:
        data = {}
    answer = client.call(args.name, data=data, parameters=parameters, label=args.label, token=args.token)
    print(json.dumps(answer if args.full else answer.get("result"), indent=None if args.full else 2))
    return 0


def cmd_show(client: Client, args: argparse.Namespace) -> int:
    model = client.model(args.name)
    if args.json:
        print(json.dumps(model, indent=2))
        return 0
    print(f"{model['name']}  ({model['id']})")
    print(f"  state:     {model['state']}" + (f" ({model['reason']})" if model["reason"] else ""))
    print(f"  latest:    version {model['latest']}" if model["latest"] else "  latest:    none yet")
    if model.get("queue_position"):
        print(f"  queue:     place {model['queue_position']} in line for {model['gpu_type']} GPUs")
    gpus = f"{model['gpu_count']} x {model['gpu_type']} GPU(s)" if model.get("gpu_count") else "CPU only"
    quota = f", quota {model['quota']}" if model.get("quota") else ""
    print(f"  runs on:   {model.get('instances')} instance(s), {gpus}{quota}")
    print(f"  url:       {model['url']}")
    for inst in model["running_instances"]:
        isolation = {True: "", False: "  not isolated (runs as the platform user)"}.get(inst.get("isolated"), "")
        print(f"  instance   {inst['instance_id']}  v{inst['version']}  {inst['state']}  {inst['address']}{isolation}")
    return 0


def cmd_list(client: Client, args: argparse.Namespace) -> int:
    models = client.models()
    if args.json:
        print(json.dumps(models, indent=2))
        return 0
    for m in models:
        print(f"{m['name']:<30} {m['state']:<10} latest={m['latest']}")
    return 0


def cmd_versions(client: Client, args: argparse.Namespace) -> int:
    versions = client.api("GET", f"/models/{args.name}/versions")
    if args.json:
        print(json.dumps(versions, indent=2))
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


def register(sub: Any) -> None:
    c = sub.add_parser("call", help="call a model API")
    c.add_argument("name")
    c.add_argument("--data", help="named arguments as a JSON object, e.g. '{\"x\": 1}'")
    c.add_argument("--parameters", help="positional arguments as a JSON array")
    c.add_argument("--label", help="call a label (e.g. prod) instead of latest")
    c.add_argument("--token", help="an access token for a restricted model API")
    c.add_argument("--full", action="store_true", help="print the whole response, not only the result")
    c.set_defaults(func=cmd_call)

    s = sub.add_parser("show", help="show a model API")
    s.add_argument("name")
    s.add_argument("--json", action="store_true")
    s.set_defaults(func=cmd_show)

    ls = sub.add_parser("list", help="list model APIs")
    ls.add_argument("--json", action="store_true")
    ls.set_defaults(func=cmd_list)

    v = sub.add_parser("versions", help="list a model API's versions")
    v.add_argument("name")
    v.add_argument("--json", action="store_true")
    v.set_defaults(func=cmd_versions)
