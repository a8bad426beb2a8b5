"""`pier logs NAME [-f] [--build | --deployment]`: a model API's logs, newest first.

With `-f` the lines come as a stream does: the recent ones oldest first, then each new one below."""

from __future__ import annotations

import argparse
import json
import time
from typing import Any

from pier.cli.command import add
from pier.cli.following import ctrl_c_ends
from pier.client import Client
from pier.client.answers import LogLine


def _show(line: LogLine) -> str:
    stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(line["at"]))
    who = line.get("instance_id") or (f"v{line['version']}" if line.get("version") else "")
    return f"{stamp} {who} {line['line']}" if who else f"{stamp} {line['line']}"


def cmd_logs(client: Client, args: argparse.Namespace) -> int:
    kind = "build" if args.build else "deployment" if args.deployment else "instance"
    query = {"kind": kind, "version": args.version, "instance": args.instance, "limit": args.limit}
    if args.follow:
        with ctrl_c_ends():
            for line in client.follow_logs(args.name, **query):
                print(json.dumps(line) if args.json else _show(line), flush=True)
        return 0
    page = client.logs(args.name, **query)
    for line in page["lines"]:
        print(json.dumps(line) if args.json else _show(line))
    return 0


def register(sub: Any) -> None:
    lg = add(
        sub,
        "logs",
        cmd_logs,
        "show a model API's instance, build or deployment logs, newest first",
        [
            "pier logs hello",
            "pier logs hello --build --version 2",
            "pier logs hello -f",
            "pier logs hello --json | jq .line",
        ],
        ("GET /v1/models/{ref}/logs",),
    )
    lg.add_argument("name")
    which = lg.add_mutually_exclusive_group()
    which.add_argument("--build", action="store_true", help="the build logs")
    which.add_argument("--deployment", action="store_true", help="lifecycle events and heartbeats")
    lg.add_argument("-f", "--follow", action="store_true", help="keep printing new lines as they come")
    lg.add_argument("--version", type=int)
    lg.add_argument("--instance")
    lg.add_argument("--limit", type=int, default=100, help="how many of the newest lines (default 100)")
    lg.add_argument("--json", action="store_true", help="one JSON object per line, as the API gives them")
