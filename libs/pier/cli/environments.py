"""`pier environments`: the compute environments a model API can be built on."""

from __future__ import annotations

import argparse
import json
from typing import Any

from pier.client import Client


def cmd_list(client: Client, args: argparse.Namespace) -> int:
    found = client.api("GET", "/environments")
    if args.json:
        print(json.dumps(found, indent=2))
        return 0
    for e in found:
        python = e["python_version"] or "platform"
        print(f"{e['name']:<24} python {python:<8} {' '.join(e['packages'])}")
    return 0


def cmd_create(client: Client, args: argparse.Namespace) -> int:
    body: dict[str, Any] = {"name": args.name, "packages": args.package or [], "description": args.description}
    if args.python_version:
        body["python_version"] = args.python_version
    client.api("POST", "/environments", body)
    print(f"environment {args.name} defined")
    return 0


def register(sub: Any) -> None:
    e = sub.add_parser("environments", help="list compute environments (admins: define them)")
    e.add_argument("--json", action="store_true")
    e.set_defaults(func=cmd_list)
    esub = e.add_subparsers(dest="environments_command")
    c = esub.add_parser("create", help="define or redefine a compute environment (admin)")
    c.add_argument("name")
    c.add_argument("--python-version")
    c.add_argument("--package", action="append", help="a requirement, e.g. numpy==2.1.0 (repeatable)")
    c.add_argument("--description", default="")
    c.set_defaults(func=cmd_create)
