"""`pier schedules create/list/runs/run/delete`: scheduled rebuilds of a model API."""

from __future__ import annotations

import argparse
from typing import Any

from pier.cli.command import add, group, json_flag, printed_json
from pier.client import Client
from pier.client.answers import Run

SCHEDULES = "/v1/models/{ref}/schedules"


def _run_line(r: Run) -> str:
    made = f" -> version {r['version']}" if r["version"] else ""
    reason = f"  {r['reason']}" if r["reason"] else ""
    return f"run {r['id'][:12]}  {r['state']:<9} {r['created_at']}{made}{reason}"


def cmd_create(client: Client, args: argparse.Namespace) -> int:
    made = client.create_schedule(args.name, args.cron, args.command, args.timeout)
    print(f"schedule {made['id']}: {made['cron']} -> {made['command']} (next {made['next_run']})")
    return 0


def cmd_list(client: Client, args: argparse.Namespace) -> int:
    found = client.schedules(args.name)
    if printed_json(args, found):
        return 0
    for s in found:
        print(f"{s['id']}  {s['cron']:<16} {s['command']}  next {s['next_run']}")
        for r in s["runs"]:
            print(f"    {_run_line(r)}")
    return 0


def cmd_runs(client: Client, args: argparse.Namespace) -> int:
    runs = client.runs(args.name, args.id)
    if printed_json(args, runs):
        return 0
    for r in runs:
        print(_run_line(r))
        if args.log:
            for line in r["log"]:
                print(f"    {line}")
    return 0


def cmd_run(client: Client, args: argparse.Namespace) -> int:
    run = client.run_schedule(args.name, args.id)
    print(f"run {run['id']} {run['state']}")
    return 0


def cmd_delete(client: Client, args: argparse.Namespace) -> int:
    client.delete_schedule(args.name, args.id)
    print(f"schedule {args.id} deleted")
    return 0


def register(sub: Any) -> None:
    _, ssub = group(
        sub,
        "schedules",
        "scheduled rebuilds: run a command, deploy what it leaves",
        ['pier schedules create hello --cron "0 3 * * *" --command "python train.py"', "pier schedules list hello"],
        "schedules_command",
    )
    c = add(
        ssub,
        "create",
        cmd_create,
        "run COMMAND on a cron schedule in a copy of the serving source (admin)",
        ['pier schedules create hello --cron "0 3 * * *" --command "python train.py" --timeout 600'],
        (f"POST {SCHEDULES}",),
    )
    c.add_argument("name")
    c.add_argument("--cron", required=True, help='e.g. "0 3 * * *"')
    c.add_argument("--command", required=True, help='e.g. "python train.py" (no shell)')
    c.add_argument("--timeout", type=float, default=3600.0, help="seconds the command may run")
    ls = add(
        ssub,
        "list",
        cmd_list,
        "list a model API's schedules and their recent runs",
        ["pier schedules list hello --json"],
        (f"GET {SCHEDULES}",),
    )
    ls.add_argument("name")
    json_flag(ls)
    rs = add(
        ssub,
        "runs",
        cmd_runs,
        "list a schedule's runs, newest first (--log: with each run's output)",
        ["pier schedules runs hello SCHEDULE_ID --log"],
        (f"GET {SCHEDULES}/{{id}}/runs",),
    )
    rs.add_argument("name")
    rs.add_argument("id")
    rs.add_argument("--log", action="store_true", help="print each run's log lines too")
    json_flag(rs)
    r = add(
        ssub,
        "run",
        cmd_run,
        "run a schedule now",
        ["pier schedules run hello SCHEDULE_ID"],
        (f"POST {SCHEDULES}/{{id}}/runs",),
    )
    r.add_argument("name")
    r.add_argument("id")
    d = add(
        ssub,
        "delete",
        cmd_delete,
        "delete a schedule",
        ["pier schedules delete hello SCHEDULE_ID"],
        (f"DELETE {SCHEDULES}/{{id}}",),
    )
    d.add_argument("name")
    d.add_argument("id")
