"""`pier environments`: the compute environments a model API can be built on."""

from __future__ import annotations

import argparse
from typing import Any

from pier.cli.command import add, group, json_flag, printed_json
from pier.client import Client


def cmd_list(client: Client, args: argparse.Namespace) -> int:
    found = client.environments()
    if printed_json(args, found):
        return 0
    for e in found:
        python = e["python_version"] or "platform"
        print(f"{e['name']:<24} python {python:<8} {' '.join(e['packages'])}")
    return 0


def cmd_create(client: Client, args: argparse.Namespace) -> int:
    body: dict[str, Any] = {"name": args.name, "packages": args.package or [], "description": args.description}
    if args.python_version:
        body["python_version"] = args.python_version
    client.create_environment(body)
    print(f"environment {args.name} defined")
    return 0


def register(sub: Any) -> None:
    e, esub = group(
        sub,
        "environments",
        "list compute environments (admins: define them)",
        ["pier environments", "pier environments create ml --python-version 3.12 --package numpy==2.1.0"],
        "environments_command",
        required=False,
    )
    e.set_defaults(func=cmd_list, api_routes=("GET /v1/environments",))
    json_flag(e)
    c = add(
        esub,
        "create",
        cmd_create,
        "define or redefine a compute environment (admin)",
        ['pier environments create ml --package numpy==2.1.0 --package scikit-learn --description "numpy + sklearn"'],
        ("POST /v1/environments",),
    )
    c.add_argument("name")
    c.add_argument("--python-version")
    c.add_argument("--package", action="append", help="a requirement, e.g. numpy==2.1.0 (repeatable)")
    c.add_argument("--description", default="")
