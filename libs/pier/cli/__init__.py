"""The `pier` command: one module per group of subcommands, each with `register(subparsers)`."""

from __future__ import annotations

import argparse
import sys

from pier.cli import control, deploy, environments, logs, models, schedules, settings, sources, tokens
from pier.client import ApiError, Client

COMMANDS = [deploy, models, sources, environments, schedules, logs, settings, tokens, control]


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="pier", description="Deploy and call model APIs.")
    sub = p.add_subparsers(dest="command", required=True)
    for module in COMMANDS:
        module.register(sub)
    return p


def main(argv: list[str] | None = None) -> None:
    args = parser().parse_args(argv)
    client = Client()
    try:
        code = args.func(client, args)
    except ApiError as exc:
        print(f"error: {exc}", file=sys.stderr)
        for item in exc.problem.get("errors", []):
            print(f"  {item['field']}: {item['problem']}", file=sys.stderr)
        code = 1
    except (ConnectionError, OSError) as exc:
        print(f"error: cannot reach Pier at {client.api_url} ({exc}); is `make up` running?", file=sys.stderr)
        code = 1
    sys.exit(code)
