"""The CLI against the API's policy table: every management route of `/v1` has a command, every
command that only reads has `--json`, every command's help shows examples, and docs/cli.md names
every command. Each command declares the routes it calls (`pier.cli.command.add`)."""

from __future__ import annotations

import argparse
import re
from collections.abc import Iterator
from pathlib import Path

from pier.cli import parser
from services.api.policy import POLICY

DOCS = Path(__file__).resolve().parents[2] / "docs" / "cli.md"

# Routes that are not management operations a user runs from a shell.
NOT_COMMANDS = {
    ("GET", "/v1/health"): "a load balancer's probe",
    ("GET", "/v1/openapi.json"): "the API's description, for tools (the Python client has `openapi()`)",
    ("GET", "/metrics"): "Prometheus scrapes it",
    ("POST", "/v1/session"): "the dashboard's sign-in; the CLI signs in with an API key (`pier login`)",
    ("DELETE", "/v1/session"): "the dashboard's sign-out",
    ("GET", "/"): "the dashboard's page",
    ("GET", "/static/{name}"): "the dashboard's files",
    ("POST", "/v1/models/{ref}/try"): "the dashboard's tester; `pier call` calls the gateway itself",
}


def commands(p: argparse.ArgumentParser, path: tuple[str, ...] = ()) -> Iterator[tuple[str, argparse.ArgumentParser]]:
    """Every (sub)command as ("tokens create", its parser), groups included."""
    for action in p._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, child in action.choices.items():
                yield " ".join((*path, name)), child
                yield from commands(child, (*path, name))


def runs(p: argparse.ArgumentParser) -> bool:
    return p.get_default("func") is not None


def routes(p: argparse.ArgumentParser) -> set[tuple[str, str]]:
    return {tuple(r.split(" ", 1)) for r in p.get_default("api_routes") or ()}  # type: ignore[misc]


ALL = dict(commands(parser()))


def test_every_route_of_the_policy_table_has_a_command() -> None:
    called = set().union(*(routes(p) for p in ALL.values()))
    missing = set(POLICY) - set(NOT_COMMANDS) - called
    assert not missing, f"routes with no `pier` command: {sorted(missing)}"
    unknown = called - set(POLICY)
    assert not unknown, f"commands name routes the api does not have: {sorted(unknown)}"


def test_every_command_that_only_reads_has_json() -> None:
    readers = [
        name
        for name, p in ALL.items()
        if runs(p) and routes(p) and {m for m, _ in routes(p)} == {"GET"} and name != "login"  # login writes
    ]
    assert "show" in readers and "keys list" in readers
    lacking = [name for name in readers if "--json" not in ALL[name]._option_string_actions]
    assert not lacking, f"read commands without --json: {lacking}"


def test_pier_help_and_every_commands_help_show_examples() -> None:
    for name, p in [("pier", parser()), *ALL.items()]:
        examples = p.format_help().partition("examples:\n")[2]
        assert "pier " in examples, f"`{name} --help` shows no example"


def test_docs_cli_md_names_every_command_with_an_example() -> None:
    text = DOCS.read_text()
    for name, p in ALL.items():
        if runs(p):
            assert re.search(rf"`pier {re.escape(name)}( [^`]*)?`", text), f"docs/cli.md does not show `pier {name}`"
