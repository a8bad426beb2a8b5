"""`pier settings NAME ...`: change a model API's health-check policy, request timeout and visibility."""

from __future__ import annotations

import argparse
import json
from typing import Any

from pier.cli.deploy import HEALTH_FLAGS, add_health_flags
from pier.client import Client


def cmd_settings(client: Client, args: argparse.Namespace) -> int:
    changes = {f: getattr(args, f) for f in (*HEALTH_FLAGS, "visibility") if getattr(args, f) is not None}
    current = client.change_settings(args.name, changes) if changes else client.settings(args.name)
    if args.json:
        print(json.dumps(current, indent=2))
        return 0
    health = current["health"]
    print(f"{args.name}")
    print(f"  visibility:         {current['visibility']}")
    print(f"  request timeout:    {current['request_timeout']:g} s")
    for field in ("initial_delay", "period", "timeout", "failure_threshold", "max_restarts", "restart_window"):
        print(f"  {field.replace('_', ' ') + ':':<19} {health[field]:g}")
    if current["restarting"]:
        print(f"  restarting one at a time: {', '.join(current['restarting'])}")
    return 0


def register(sub: Any) -> None:
    s = sub.add_parser("settings", help="show or change a model API's health checks and request timeout")
    s.add_argument("name")
    add_health_flags(s)
    s.add_argument(
        "--visibility", choices=("public", "private"), help="public: every signed-in user may see it (owner only)"
    )
    s.add_argument("--json", action="store_true")
    s.set_defaults(func=cmd_settings)
