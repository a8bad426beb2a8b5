"""Problems with what the user gave the CLI, found before or without any call to Pier, each
reported as one `error: ...` line naming the flag or the file: a flag's value (UsageError, exit
code 2, as argparse exits for a bad flag), or a file or folder that is missing, unreadable or
malformed (LocalError, exit code 4)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import msgspec

from pier.spec import Route


class UsageError(Exception):
    """A bad flag or value; the message names the flag and what is wrong with it."""


class LocalError(Exception):
    """A local file or folder the CLI cannot use; the message names it and what is wrong with it."""


def folder(path: str) -> Path:
    found = Path(path)
    if not found.exists():
        raise LocalError(f"{path}: no such folder")
    if not found.is_dir():
        raise LocalError(f"{path}: is not a folder")
    return found


def read_text(path: str | Path, what: str) -> str:
    try:
        return Path(path).read_text()
    except FileNotFoundError:
        raise LocalError(f"{what} {path}: no such file") from None
    except IsADirectoryError:
        raise LocalError(f"{what} {path}: is a folder, not a file") from None
    except UnicodeDecodeError as exc:
        raise LocalError(f"{what} {path}: is not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    except OSError as exc:
        raise LocalError(f"{what} {path}: cannot be read: {exc.strerror or exc}") from None


# Deeper than any routes file needs; past it PyYAML's recursive composer would overflow the stack.
_MAX_YAML_DEPTH = 64


def _routes_loader() -> type[Any]:
    import yaml  # only deploys with routes pay for the import

    class Loader(yaml.SafeLoader):
        """safe_load without aliases (`*name`: a few lines of them expand to billions of nodes when
        the routes are checked and sent) and without nesting deep enough to exhaust the stack."""

        depth = 0

        def compose_node(self, parent: Any, index: Any) -> Any:
            event = self.peek_event()
            mark: Any = event.start_mark  # where the message points (line, column)
            if isinstance(event, yaml.AliasEvent):
                raise yaml.composer.ComposerError(None, None, "aliases (*name) are not allowed", mark)
            self.depth += 1
            try:
                if self.depth > _MAX_YAML_DEPTH:
                    raise yaml.composer.ComposerError(None, None, f"nested deeper than {_MAX_YAML_DEPTH} levels", mark)
                return super().compose_node(parent, index)
            finally:
                self.depth -= 1

    return Loader


def load_routes(path: str | Path) -> list[dict[str, Any]]:
    """The `routes` list of a routes.yaml, checked for shape here so a typo names the file and the route."""
    import yaml

    text = read_text(path, "routes file")
    try:
        document = yaml.load(text, Loader=_routes_loader())  # a SafeLoader: no Python objects
    except yaml.MarkedYAMLError as exc:  # the usual case: say where, without PyYAML's echo of the text
        mark = exc.problem_mark
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        raise LocalError(f"routes file {path}: is not valid YAML: {where}{exc.problem}") from None
    except yaml.YAMLError as exc:
        raise LocalError(f"routes file {path}: is not valid YAML: {' '.join(str(exc).split())}") from None
    if not isinstance(document, dict) or not isinstance(document.get("routes"), list):
        raise LocalError(f"routes file {path}: expected a YAML document whose top-level key `routes` holds a list")
    routes = document["routes"]
    try:
        msgspec.convert(routes, list[Route])
    except msgspec.ValidationError as exc:
        # msgspec says "... - at `$[0]`": point at the YAML key instead.
        raise LocalError(f"routes file {path}: {str(exc).replace('`$', '`routes')}") from None
    return list(routes)


def json_value(text: str, flag: str, kind: type[dict[str, Any]] | type[list[Any]]) -> Any:
    try:
        value = json.loads(text)
    except ValueError as exc:
        raise UsageError(f"{flag}: is not valid JSON: {exc}") from None
    if not isinstance(value, kind):
        expected = "object, e.g. '{\"x\": 1}'" if kind is dict else "array, e.g. '[1, 2]'"
        raise UsageError(f"{flag}: expected a JSON {expected}")
    return value
