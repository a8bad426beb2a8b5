"""How a subcommand is declared: its help with examples, the `/v1` routes it calls (so a test can
check that every route has a command), and `--json` for what it reads."""

from __future__ import annotations

import argparse
import json
from typing import Any


def _epilog(examples: list[str]) -> str:
    return "examples:\n" + "\n".join(f"  {e}" for e in examples)


def add(
    sub: Any, name: str, func: Any, text: str, examples: list[str], routes: tuple[str, ...] = ()
) -> argparse.ArgumentParser:
    """A subcommand running `func(client, args)`, which calls `routes` ("GET /v1/models/{ref}")."""
    p: argparse.ArgumentParser = sub.add_parser(
        name,
        help=text,
        description=text,
        epilog=_epilog(examples),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.set_defaults(func=func, api_routes=routes)
    return p


def group(sub: Any, name: str, text: str, examples: list[str], dest: str, required: bool = True) -> Any:
    """A subcommand with subcommands of its own (`pier tokens create ...`)."""
    p = sub.add_parser(
        name,
        help=text,
        description=text,
        epilog=_epilog(examples),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.set_defaults(api_routes=())
    return p, p.add_subparsers(dest=dest, required=required, metavar="COMMAND")


def json_flag(p: argparse.ArgumentParser) -> None:
    p.add_argument("--json", action="store_true", help="print the API's answer as JSON, for scripts")


def printed_json(args: argparse.Namespace, answer: Any) -> bool:
    """With --json, print the answer as the API gave it and say so; else print nothing."""
    if getattr(args, "json", False):
        print(json.dumps(answer, indent=2))
        return True
    return False
