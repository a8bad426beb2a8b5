# PYTHON_ARGCOMPLETE_OK
"""The `pier` command: one module per group of subcommands, each with `register(subparsers)`.

Exit codes (docs/cli.md): 0 done, 1 Pier answered with an error (or the deploy failed), 2 a usage
error (a bad flag or value), 3 Pier could not be reached, 4 a local file or folder problem,
130 interrupted."""

from __future__ import annotations

import argparse
import os
import sys
from typing import NoReturn

import argcomplete

from pier.cli import (
    access,
    completion,
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
from pier.cli.usage import LocalError, UsageError
from pier.client import ApiError, Client, Unreachable, credentials_path

OK, API_ERROR, USAGE, UNREACHABLE, LOCAL, INTERRUPTED = 0, 1, 2, 3, 4, 130

COMMANDS = [
    deploy,
    models,
    sources,
    environments,
    schedules,
    logs,
    events,
    settings,
    tokens,
    control,
    access,
    completion,
]

EXAMPLES = """examples:
  pier deploy examples/hello --name hello --unrestricted
  pier call hello --data '{"name": "Ada"}'
  pier show hello --json
  pier logs hello -f
  pier <command> --help     each command's flags, with examples

exit codes: 0 done, 1 error answer from Pier, 2 usage, 3 Pier unreachable, 4 local file problem"""


class Parser(argparse.ArgumentParser):
    """argparse, with a bad flag said on one line as every other error is (subcommands inherit it)."""

    def error(self, message: str) -> NoReturn:
        self.exit(USAGE, f"error: {message} (see `{self.prog} --help`)\n")


def parser() -> argparse.ArgumentParser:
    p = Parser(
        prog="pier",
        description="Deploy and call model APIs.",
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for module in COMMANDS:
        module.register(sub)
    return p


def _one_line(exc: ApiError) -> str:
    """The error and each field at fault, on one line (the detail often names them already)."""
    text = str(exc)
    fields = [f"{e['field']}: {e['problem']}" for e in exc.problem.get("errors", []) if isinstance(e, dict)]
    extra = [f for f in fields if f not in text]
    return f"{text} ({'; '.join(extra)})" if extra else text


def main(argv: list[str] | None = None) -> None:
    p = parser()
    argcomplete.autocomplete(p)  # answers a shell's completion request and exits; else nothing
    args = p.parse_args(argv)
    try:
        try:
            client = Client()
        except (OSError, ValueError) as exc:
            raise LocalError(f"credentials file {credentials_path()}: cannot be read: {exc}") from None
        with client:
            code = args.func(client, args)
        sys.stdout.flush()  # here, so a reader that left is a BrokenPipeError caught below
    except UsageError as exc:
        print(f"error: {exc}", file=sys.stderr)
        code = USAGE
    except LocalError as exc:
        print(f"error: {exc}", file=sys.stderr)
        code = LOCAL
    except ApiError as exc:
        print(f"error: {_one_line(exc)}", file=sys.stderr)
        code = API_ERROR
    except Unreachable as exc:
        # Only a call that got no answer lands here; local files are LocalErrors above.
        print(f"error: {exc}; is `make up` running?", file=sys.stderr)
        code = UNREACHABLE
    except TimeoutError as exc:  # a deploy that did not settle within --wait
        print(f"error: {exc}", file=sys.stderr)
        code = API_ERROR
    except KeyboardInterrupt:
        print(file=sys.stderr)
        code = INTERRUPTED
    except BrokenPipeError:
        # The reader left (`pier logs NAME | head`): nothing is wrong, and nothing more can be said.
        # stdout goes to /dev/null so the interpreter's final flush raises nothing either.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        code = API_ERROR
    sys.exit(code)
