"""The `pier` command."""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from pathlib import Path
from typing import Any

from pier.client import ApiError, Client


def _load_routes(path: str | None) -> list[dict[str, Any]]:
    if not path:
        return []
    import yaml

    document = yaml.safe_load(Path(path).read_text())
    if not isinstance(document, dict) or not isinstance(document.get("routes"), list):
        raise SystemExit(f"{path}: expected a YAML document whose top-level key `routes` holds a list")
    return list(document["routes"])


def _example_curl(client: Client, model: dict[str, Any]) -> str:
    url = f"{client.gateway_url}/models/{model['name']}/latest/model"
    return f"curl -s -X POST {shlex.quote(url)} -H 'Content-Type: application/json' -d '{{\"data\": {{}}}}'"


def cmd_deploy(client: Client, args: argparse.Namespace) -> int:
    path = Path(args.path)
    if not path.is_dir():
        raise SystemExit(f"{path} is not a directory")
    print(f"packing {path} ...", flush=True)
    digest = client.upload_source(path)
    code = {"source": digest, "file": args.file, "function": args.function, "routes": _load_routes(args.routes)}
    if args.health_function:
        code["health_function"] = args.health_function
    if client.exists(args.name):
        version = client.create_version(args.name, **code)
        print(f"{args.name}: building version {version}", flush=True)
    else:
        spec = {**code, "name": args.name, "instances": args.instances, "request_timeout": args.request_timeout}
        if args.workers:
            spec["workers"] = args.workers
        client.create_model(**spec)
        version = 1
        print(f"{args.name}: created; building version 1", flush=True)

    def progress(model: dict[str, Any], mine: dict[str, Any] | None) -> None:
        detail = f", version {version} {mine['state']}" if mine else ""
        print(f"  {model['state']}{detail}", flush=True)

    model = client.wait(args.name, version, timeout=args.timeout, on_change=progress)
    mine = next(v for v in model["versions"] if v["number"] == version)
    if mine["state"] == "failed" or model["state"] == "failed":
        print(f"deploy failed: {mine['reason'] or model['reason']}", file=sys.stderr)
        return 1
    if model["state"] != "running":
        print(f"{args.name} is {model['state']}: {model['reason']}")
        return 0
    print(f"{args.name} version {version} is serving")
    print(f"  URL:  {client.gateway_url}/models/{model['name']}/latest/model")
    print(f"  try:  {_example_curl(client, model)}")
    return 0


def cmd_call(client: Client, args: argparse.Namespace) -> int:
    data = json.loads(args.data) if args.data else None
    parameters = json.loads(args.parameters) if args.parameters else None
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
    print(f"  url:       {model['url']}")
    for inst in model["running_instances"]:
        print(f"  instance   {inst['instance_id']}  v{inst['version']}  {inst['state']}  {inst['address']}")
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
        print(f"{v['number']:>4}  {v['state']:<9} {v['source'][:12]}  {v['created_at']}{reason}")
    return 0


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="pier", description="Deploy and call model APIs.")
    sub = p.add_subparsers(dest="command", required=True)

    d = sub.add_parser("deploy", help="deploy a folder as a model API (or a new version of one)")
    d.add_argument("path")
    d.add_argument("--name", required=True)
    d.add_argument("--file", default="predict.py", help="the entry file (default predict.py)")
    d.add_argument("--function", default="predict", help="the function to serve (default predict)")
    d.add_argument("--routes", help="a YAML file whose top-level key `routes` lists the routes")
    d.add_argument("--health-function")
    d.add_argument("--workers", type=int)
    d.add_argument("--instances", type=int, default=1)
    d.add_argument("--request-timeout", type=float, default=60.0)
    d.add_argument("--timeout", type=float, default=600.0, help="seconds to wait for the deploy")
    d.set_defaults(func=cmd_deploy)

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
    return p


def main(argv: list[str] | None = None) -> None:
    args = parser().parse_args(argv)
    client = Client()
    try:
        code = args.func(client, args)
    except ApiError as exc:
        print(f"error: {exc}", file=sys.stderr)
        for item in exc.problem.get("errors", []):
            print(f"  {item['field']}: {item['problem']}", file=sys.stderr)
        code = 1
    except (ConnectionError, OSError) as exc:
        print(f"error: cannot reach Pier at {client.api_url} ({exc}); is `make up` running?", file=sys.stderr)
        code = 1
    sys.exit(code)
