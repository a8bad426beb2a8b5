"""`pier events NAME [-f] [--json]` and `pier events --all`: who changed what, newest first.

With `-f` the recent events come oldest first, then each new one below, as `pier logs -f` does."""

from __future__ import annotations

import argparse
import json
import time
from typing import Any

from pier.cli.command import add
from pier.cli.following import ctrl_c_ends
from pier.cli.usage import UsageError
from pier.client import Client
from pier.client.answers import Event


def _show(event: Event) -> str:
    stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(event["at"]))
    model = event["model"]["name"] if event["model"] else "-"
    parts = [f"{stamp} #{event['id']} {event['actor']} {event['action']} {model}"]
    parts += [f"{k}={json.dumps(v)}" for k, v in event.get("fields", {}).items()]
    before, after = event.get("before", {}), event.get("after", {})
    if event["action"] != "model.create":  # a creation's "after" is the whole model API
        parts += [f"{k}: {json.dumps(before.get(k))} -> {json.dumps(after.get(k))}" for k in {**before, **after}]
    if event.get("recovered"):
        parts.append("(recorded after an api restart)")
    return " ".join(parts)


def _print(event: Event, as_json: bool) -> None:
    print(json.dumps(event) if as_json else _show(event), flush=True)


def cmd_events(client: Client, args: argparse.Namespace) -> int:
    if (args.name is None) == (not args.all):
        raise UsageError("name a model API, or give --all for every one's events (admins only)")
    page = client.events(args.name, limit=args.limit)
    recent = list(reversed(page["events"])) if args.follow else page["events"]
    for event in recent:
        _print(event, args.json)
    if args.follow:
        last = page["events"][0]["id"] if page["events"] else None
        with ctrl_c_ends():
            for event in client.follow_events(args.name, last_event_id=last):
                _print(event, args.json)
    return 0


def register(sub: Any) -> None:
    ev = add(
        sub,
        "events",
        cmd_events,
        "a model API's audit events: who changed what, newest first",
        ["pier events hello", "pier events hello -f --json", "pier events --all --limit 50"],
        ("GET /v1/events",),
    )
    ev.add_argument("name", nargs="?")
    ev.add_argument("--all", action="store_true", help="every model API's events, and the rest (admins only)")
    ev.add_argument("-f", "--follow", action="store_true", help="keep printing new events as they happen")
    ev.add_argument("--json", action="store_true", help="one JSON object per line, as the API gives them")
    ev.add_argument("--limit", type=int, default=20, help="how many of the newest events (default 20)")
