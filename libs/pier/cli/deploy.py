"""`pier deploy`: pack a folder, upload it, create the model API or a new version, wait."""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path
from typing import Any

from pier.client import Client


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


def register(sub: Any) -> None:
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
