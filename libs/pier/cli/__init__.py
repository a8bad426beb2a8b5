"""The `pier` command: one module per group of subcommands, each with `register(subparsers)`."""

from __future__ import annotations

import argparse
import os
import sys

from pier.cli import (
    access,
    control,
    deploy,
    environments,
    events,
    logs,
    models,
    schedules,
    settings,
    sources,
    tokens,
)
from pier.cli.usage import UsageError
from pier.client import ApiError, Client, Unreachable, credentials_path

USAGE = 2  # as argparse exits for a bad flag

COMMANDS = [deploy, models, sources, environments, schedules, logs, events, settings, tokens, control, access]


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="pier", description="Deploy and call model APIs.")
    sub = p.add_subparsers(dest="command", required=True)
    for module in COMMANDS:
        module.register(sub)
    return p


def main(argv: list[str] | None = None) -> None:
    args = parser().parse_args(argv)
    try:
        try:
            client = Client()
        except (OSError, ValueError) as exc:
            raise UsageError(f"credentials file {credentials_path()}: cannot be read: {exc}") from None
        code = args.func(client, args)
        sys.stdout.flush()  # here, so a reader that left is a BrokenPipeError caught below
    except UsageError as exc:
        print(f"error: {exc}", file=sys.stderr)
        code = USAGE
    except ApiError as exc:
        print(f"error: {exc}", file=sys.stderr)
        for item in exc.problem.get("errors", []):
            print(f"  {item['field']}: {item['problem']}", file=sys.stderr)
        code = 1
    except Unreachable as exc:
        # Only a call that got no answer lands here; local files are UsageErrors above.
        print(f"error: {exc}; is `make up` running?", file=sys.stderr)
        code = 1
    except BrokenPipeError:
        # The reader left (`pier logs NAME | head`): nothing is wrong, and nothing more can be said.
        # stdout goes to /dev/null so the interpreter's final flush raises nothing either.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        code = 1
    sys.exit(code)
