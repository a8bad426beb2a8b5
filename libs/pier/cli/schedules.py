"""`pier schedules create/list/run/delete`: scheduled rebuilds of a model API."""

from __future__ import annotations

import argparse
import json
from typing import Any

from pier.client import Client


def cmd_create(client: Client, args: argparse.Namespace) -> int:
    body = {"cron": args.cron, "command": args.command, "timeout": args.timeout}
    made = client.api("POST", f"/models/{args.name}/schedules", body)
    print(f"schedule {made['id']}: {made['cron']} -> {made['command']} (next {made['next_run']})")
    return 0


def cmd_list(client: Client, args: argparse.Namespace) -> int:
    found = client.api("GET", f"/models/{args.name}/schedules")
    if args.json:
        print(json.dumps(found, indent=2))
        return 0
    for s in found:
        print(f"{s['id']}  {s['cron']:<16} {s['command']}  next {s['next_run']}")
        for r in s["runs"]:
            made = f" -> version {r['version']}" if r["version"] else ""
            reason = f"  {r['reason']}" if r["reason"] else ""
            print(f"    run {r['id'][:12]}  {r['state']:<9} {r['created_at']}{made}{reason}")
    return 0


def cmd_run(client: Client, args: argparse.Namespace) -> int:
    run = client.api("POST", f"/models/{args.name}/schedules/{args.id}/runs")
    print(f"run {run['id']} {run['state']}")
    return 0


def cmd_delete(client: Client, args: argparse.Namespace) -> int:
    client.api("DELETE", f"/models/{args.name}/schedules/{args.id}")
    print(f"schedule {args.id} deleted")
    return 0


def register(sub: Any) -> None:
    s = sub.add_parser("schedules", help="scheduled rebuilds: run a command, deploy what it leaves")
    ssub = s.add_subparsers(dest="schedules_command", required=True)
    c = ssub.add_parser("create", help="run COMMAND on a cron schedule in a copy of the serving source")
    c.add_argument("name")
    c.add_argument("--cron", required=True, help='e.g. "0 3 * * *"')
    c.add_argument("--command", required=True, help='e.g. "python train.py" (no shell)')
    c.add_argument("--timeout", type=float, default=3600.0, help="seconds the command may run")
    c.set_defaults(func=cmd_create)
    ls = ssub.add_parser("list", help="list a model API's schedules and their recent runs")
    ls.add_argument("name")
    ls.add_argument("--json", action="store_true")
    ls.set_defaults(func=cmd_list)
    r = ssub.add_parser("run", help="run a schedule now")
    r.add_argument("name")
    r.add_argument("id")
    r.set_defaults(func=cmd_run)
    d = ssub.add_parser("delete", help="delete a schedule")
    d.add_argument("name")
    d.add_argument("id")
    d.set_defaults(func=cmd_delete)
