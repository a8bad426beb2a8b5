"""`pier settings NAME ...`: show or change what a model API's owner and editors may change after
its creation: health checks and restarts, request timeout, access, routing mode and visibility."""

from __future__ import annotations

import argparse
from typing import Any

from pier.cli.command import add, json_flag, printed_json
from pier.cli.deploy import HEALTH_FLAGS, add_health_flags
from pier.client import Client

RESTART_FLAGS = ("max_restarts", "restart_window", "restart_backoff", "restart_backoff_max")
GATEWAY_FLAGS = ("access", "routing_mode", "visibility")


def cmd_settings(client: Client, args: argparse.Namespace) -> int:
    fields = (*HEALTH_FLAGS, *RESTART_FLAGS, *GATEWAY_FLAGS)
    changes = {f: getattr(args, f) for f in fields if getattr(args, f) is not None}
    current = client.change_settings(args.name, changes) if changes else client.settings(args.name)
    if printed_json(args, current):
        return 0
    health = current["health"]
    print(f"{args.name}")
    print(f"  visibility:         {current['visibility']}")
    print(f"  request timeout:    {current['request_timeout']:g} s")
    for field in ("initial_delay", "period", "timeout", "failure_threshold", *RESTART_FLAGS):
        if field in health:
            print(f"  {field.replace('_', ' ') + ':':<19} {health[field]:g}")
    if current["restarting"]:
        print(f"  restarting one at a time: {', '.join(current['restarting'])}")
    return 0


def register(sub: Any) -> None:
    s = add(
        sub,
        "settings",
        cmd_settings,
        "show or change a model API's health checks, restart policy, request timeout, access and visibility",
        [
            "pier settings hello",
            "pier settings hello --period 5 --failure-threshold 20 --request-timeout 30",
            "pier settings hello --max-restarts 10 --restart-window 1200 --restart-backoff 5",
            "pier settings hello --access unrestricted --routing-mode advanced --visibility public",
        ],
        ("GET /v1/models/{ref}/settings", "PATCH /v1/models/{ref}"),
    )
    s.add_argument("name")
    add_health_flags(s)
    s.add_argument("--max-restarts", type=int, help="restarts within the window before the model API fails")
    s.add_argument("--restart-window", type=float, help="seconds after which a restart is forgotten")
    s.add_argument("--restart-backoff", type=float, help="seconds before the second restart; doubles after each")
    s.add_argument("--restart-backoff-max", type=float, help="the longest wait between restarts, in seconds")
    s.add_argument("--access", choices=("restricted", "unrestricted"), help="restricted: calls need an access token")
    s.add_argument("--routing-mode", choices=("basic", "advanced"), help="advanced: labels such as prod serve too")
    s.add_argument(
        "--visibility", choices=("public", "private"), help="public: every signed-in user may see it (owner only)"
    )
    json_flag(s)
