"""`pier stop|restart|terminate NAME`, `pier gpus`, `pier plan ...`: running model APIs and GPUs."""

from __future__ import annotations

import argparse
from typing import Any

from pier.cli.command import add, json_flag, printed_json
from pier.cli.deploy import add_resource_flags, resource_spec
from pier.client import Client

MODEL = "/v1/models/{ref}"


def cmd_stop(client: Client, args: argparse.Namespace) -> int:
    model = client.stop(args.name)
    print(f"{model['name']}: {model['state']} (its GPUs are freed and billing stops once stopped)")
    return 0


def cmd_restart(client: Client, args: argparse.Namespace) -> int:
    model = client.restart(args.name)
    print(f"{model['name']}: {model['state']} (same image, clean working directories)")
    return 0


def cmd_terminate(client: Client, args: argparse.Namespace) -> int:
    model = client.terminate(args.name)
    print(f"{model['name']}: terminated; its working directories are removed and the name is free")
    return 0


def cmd_gpus(client: Client, args: argparse.Namespace) -> int:
    inventory = client.gpus()
    if printed_json(args, inventory):
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
    plan = client.plan(resource_spec(args))
    if printed_json(args, plan):
        return 1 if plan["decision"] == "never" else 0
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
    for name, func, text, route in (
        ("stop", cmd_stop, "stop a model API: instances stop, GPUs are freed, billing stops", "POST {m}/stop"),
        (
            "restart",
            cmd_restart,
            "restart a model API from the same image, with clean working directories",
            "POST {m}/restart",
        ),
        (
            "terminate",
            cmd_terminate,
            "terminate a model API: its data is purged and its name is free again",
            "DELETE {m}",
        ),
    ):
        p = add(sub, name, func, text, [f"pier {name} hello"], (route.format(m=MODEL),))
        p.add_argument("name")

    g = add(
        sub,
        "gpus",
        cmd_gpus,
        "GPU types: total, free, and asked for by waiting model APIs",
        ["pier gpus", "pier gpus --json"],
        ("GET /v1/gpus",),
    )
    json_flag(g)

    p = add(
        sub,
        "plan",
        cmd_plan,
        "review a deploy: would it start now or wait, and why (exit 1 when it can never start)",
        ["pier plan --instances 2 --gpu-type a100 --gpu-count 1", "pier plan --gpu-type h100 --gpu-count 8 --json"],
        ("POST /v1/plan",),
    )
    add_resource_flags(p)
    json_flag(p)
