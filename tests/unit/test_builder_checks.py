"""The static entrypoint check: what a module binds at import, as far as `ast` can tell."""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import pier
from pier.spec import Entrypoint, Route
from services.builder.checks import import_problem, module_names, static_problem


def _names(source: str) -> set[str] | None:
    return module_names(ast.parse(source))


def test_module_level_definitions_count() -> None:
    source = """
import numpy as np, os.path
from x import y as z
def f(): pass
async def g(): pass
class Model: pass
h = lambda: 1
a, (b, *c) = 1, (2, 3)
n: int = 1
try:
    from fast import k
except ImportError:
    def k(): pass
if True:
    with open("f") as fh:
        pass
"""
    assert _names(source) == {"np", "os", "z", "f", "g", "Model", "h", "a", "b", "c", "n", "k", "fh"}


def test_names_inside_functions_do_not_count() -> None:
    assert _names("def outer():\n    def inner(): pass\n    x = 1\n") == {"outer"}


def test_star_imports_and_module_getattr_defer_to_the_import_check() -> None:
    assert _names("from models import *") is None
    assert _names("def __getattr__(name): ...") is None


def _code(tmp_path: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    return tmp_path


def test_static_problem_names_the_missing_function(tmp_path: Path) -> None:
    code = _code(tmp_path, {"predict.py": "def other(): pass\n"})
    assert static_problem(code, Entrypoint(file="predict.py", function="predict")) == (
        "predict.py defines no function 'predict'"
    )


def test_static_problem_names_a_missing_route_file(tmp_path: Path) -> None:
    code = _code(tmp_path, {"predict.py": "def predict(): pass\n"})
    entrypoint = Entrypoint(
        file="predict.py", function="predict", routes=[Route(path="/x", file="pkg/routes.py", function="x")]
    )
    assert static_problem(code, entrypoint) == "entry file pkg/routes.py does not exist"


def test_static_problem_reports_a_syntax_error_with_its_line(tmp_path: Path) -> None:
    code = _code(tmp_path, {"predict.py": "x = 1\ndef predict(:\n"})
    problem = static_problem(code, Entrypoint(file="predict.py", function="predict"))
    assert problem is not None
    assert problem.startswith("predict.py line 2:")


def test_static_problem_refuses_an_entry_file_outside_the_code(tmp_path: Path) -> None:
    code = _code(tmp_path / "code", {"predict.py": "def predict(): pass\n"})
    (tmp_path / "outside.py").write_text("def predict(): pass\n")
    assert static_problem(code, Entrypoint(file="../outside.py", function="predict")) == (
        "entry file ../outside.py is outside the source"
    )


def test_a_complete_entrypoint_has_no_problem(tmp_path: Path) -> None:
    code = _code(tmp_path, {"predict.py": "def predict(): pass\ndef healthy(): return True\n"})
    assert static_problem(code, Entrypoint(file="predict.py", function="predict", health_function="healthy")) is None


async def test_a_routes_only_entrypoint_passes_both_checks_without_a_predict_py(tmp_path: Path) -> None:
    code = _code(tmp_path / "code", {"text.py": "def classify(text): return text\n"})
    entrypoint = Entrypoint(routes=[Route(path="/classify", file="text.py", function="classify")])
    assert static_problem(code, entrypoint) is None
    lines: list[str] = []

    async def collect(line: str) -> None:
        lines.append(line)

    # The import check as the builder runs it, with this interpreter standing in for the environment's.
    runtime = Path(pier.__file__).parents[1]
    assert await import_problem(Path(sys.executable), runtime, code, entrypoint, 60.0, collect) is None, lines
