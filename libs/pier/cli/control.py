"""`pier stop|restart|terminate NAME`, `pier gpus`, `pier plan ...`: running model APIs and GPUs."""

from __future__ import annotations

import argparse
import json
from typing import Any

from pier.cli.deploy import add_resource_flags, resource_spec
from pier.client import Client


def cmd_stop(client: Client, args: argparse.Namespace) -> int:
    model = client.api("POST", f"/models/{args.name}/stop", {})
    print(f"{model['name']}: {model['state']} (its GPUs are freed and billing stops once stopped)")
    return 0


def cmd_restart(client: Client, args: argparse.Namespace) -> int:
    model = client.api("POST", f"/models/{args.name}/restart", {})
    print(f"{model['name']}: {model['state']} (same image, clean working directories)")
    return 0


def cmd_terminate(client: Client, args: argparse.Namespace) -> int:
    model = client.api("DELETE", f"/models/{args.name}")
    print(f"{model['name']}: terminated; its working directories are removed and the name is free")
    return 0


def cmd_gpus(client: Client, args: argparse.Namespace) -> int:
    inventory = client.api("GET", "/gpus")
    if args.json:
        print(json.dumps(inventory, indent=2))
        return 0
    kind = " (simulated: declared in PIER_GPUS, no real GPU behind them)" if inventory["simulated"] else ""
    print(f"GPUs{kind}")
    print(f"  {'type':<12} {'total':>5} {'free':>5} {'asked':>6} {'waiting':>8}")
    for name, t in sorted(inventory["types"].items()):
        print(f"  {name:<12} {t['total']:>5} {t['free']:>5} {t['requested']:>6} {t['waiting']:>8}")
    if not inventory["types"]:
        print("  none: model APIs run on CPUs only")
    return 0


def cmd_plan(client: Client, args: argparse.Namespace) -> int:
    plan = client.api("POST", "/plan", resource_spec(args))
    if args.json:
        print(json.dumps(plan, indent=2))
        return 0
    ask = f"{plan['instances']} instance(s)"
    if plan["gpu_count"]:
        simulated = " simulated" if plan["simulated"] else ""
        ask += f" x {plan['gpu_count']}{simulated} {plan['gpu_type']} GPU(s)"
    if plan["quota"]:
        ask += f", quota {plan['quota']}"
    print(ask)
    if plan["decision"] == "start":
        print(f"  starts now: {plan['reason']}")
    elif plan["decision"] == "wait":
        print(f"  waits: place {plan['position']} in line; {plan['reason']}")
    else:
        print(f"  can never start: {plan['reason']}")
        return 1
    return 0


def register(sub: Any) -> None:
    for name, func, text in (
        ("stop", cmd_stop, "stop a model API: instances stop, GPUs are freed, billing stops"),
        ("restart", cmd_restart, "restart a model API from the same image, with clean working directories"),
        ("terminate", cmd_terminate, "terminate a model API: its data is purged and its name is free again"),
    ):
        p = sub.add_parser(name, help=text)
        p.add_argument("name")
        p.set_defaults(func=func)

    g = sub.add_parser("gpus", help="GPU types: total, free, and asked for by waiting model APIs")
    g.add_argument("--json", action="store_true")
    g.set_defaults(func=cmd_gpus)

    p = sub.add_parser("plan", help="review a deploy: would it start now or wait, and why")
    add_resource_flags(p)
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_plan)
