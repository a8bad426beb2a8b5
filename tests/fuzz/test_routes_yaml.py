"""The routes.yaml reader (`pier deploy --routes`, libs/pier/cli/usage.py) on any text: it returns the
routes or raises LocalError naming the file (exit 4 in the CLI: a local file it cannot use), and
nothing else: no crash, no hang (the profile's deadline bounds each example)."""

from __future__ import annotations

import tempfile
from pathlib import Path

import pytest
import yaml
from hypothesis import example, given
from hypothesis import strategies as st

from pier.cli.usage import LocalError, load_routes

scalars = st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=10)
documents = st.recursive(
    scalars, lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3)
)
route_like = st.fixed_dictionaries(
    {"path": st.text(max_size=6), "file": st.text(max_size=6), "function": st.text(max_size=6)},
    optional={"verb": scalars, "positional": scalars, "parameters": documents},
)
# YAML as people (and attackers) write it: real documents, fragments of its syntax, any text.
texts = (
    st.builds(lambda routes: yaml.safe_dump({"routes": routes}), st.lists(route_like | documents, max_size=3))
    | st.lists(
        st.sampled_from(
            ["routes:", "\n", " - ", "path: /a", "&a ", "*a", "[", "]", "{", "}", "!!str ", ": ", "'", "#"]
        ),
        max_size=30,
    ).map("".join)
    | st.text(max_size=80)
)

# A billion laughs: a few lines of aliases that expand to 10^9 values once walked.
LAUGHS = "a: &a [x,x,x,x,x,x,x,x,x,x]\n" + "".join(
    f"{c}: &{c} [{', '.join([f'*{p}'] * 10)}]\n" for p, c in zip("abcdefgh", "bcdefghi", strict=True)
)


def _read(text: str) -> None:
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "routes.yaml"
        path.write_text(text)
        try:
            routes = load_routes(path)
        except LocalError as exc:
            assert str(path) in str(exc)
        else:
            assert isinstance(routes, list)


@given(text=texts)
@example(text="routes: " + "[" * 3000 + "]" * 3000)  # was RecursionError
@example(text="routes:\n" + "".join(" " * i + "- a:\n" for i in range(0, 400, 2)))  # was RecursionError
@example(text=LAUGHS + "routes:\n - {path: /a, file: a.py, function: f, parameters: [{name: x, default: *i}]}")
@example(text="routes: &r [*r]")
def test_any_text_gives_routes_or_an_error_naming_the_file(text: str) -> None:
    _read(text)


def test_aliases_and_deep_nesting_are_refused_naming_the_line(tmp_path: Path) -> None:
    path = tmp_path / "routes.yaml"
    path.write_text(LAUGHS + "routes: [*i]\n")
    with pytest.raises(LocalError, match=r"line 2, column \d+: aliases \(\*name\) are not allowed"):
        load_routes(path)
    path.write_text("routes: " + "[" * 100 + "]" * 100)
    with pytest.raises(LocalError, match="nested deeper than 64 levels"):
        load_routes(path)
