"""Is the entrypoint callable? A static look first (fast, names the missing piece), then a real
import inside the environment, exactly as the harness will do it."""

from __future__ import annotations

import ast
import os
from collections.abc import Iterator
from pathlib import Path

import msgspec

from pier.spec import Entrypoint
from services.builder.processes import BuildUser, LineSink, ProcessTimeout, run

REASON_PREFIX = "pier-check: "

# Run by the environment's interpreter with cwd = the code folder, as the harness runs: it
# imports nothing but the runtime shipped in the image, and reports which entry file failed.
# It writes no bytecode: the environment's was compiled when it was built (it is read-only by now),
# and the code and the runtime are the image's, which must stay as they were digested.
_IMPORT_CHECK = f"""
import sys, traceback
from pathlib import Path
import msgspec
from pier.spec import Entrypoint
from pier.harness.loader import Functions, LoadError
entrypoint = msgspec.json.decode(sys.argv[1], type=Entrypoint)
files = {{str(Path(f).resolve()): f for f, _ in entrypoint.functions()}}
try:
    Functions(Path("."), entrypoint)
except LoadError as exc:
    print("{REASON_PREFIX}" + str(exc), flush=True)
    sys.exit(3)
except BaseException as exc:
    traceback.print_exc()
    frames = [files.get(str(Path(f.filename).resolve())) for f in traceback.extract_tb(exc.__traceback__)]
    failed = [f for f in frames if f] or entrypoint.files()[:1]
    last = traceback.format_exception_only(type(exc), exc)[-1].strip()
    print("{REASON_PREFIX}import of " + failed[-1] + " failed: " + last, flush=True)
    sys.exit(3)
"""


def static_problem(code_dir: Path, entrypoint: Entrypoint) -> str | None:
    """The first (file, function) of the entrypoint that plainly does not exist, or None.

    Only certain absences count: a module that could define names in ways `ast` cannot follow
    (`from x import *`, a module `__getattr__`) is left to the import check.
    """
    root = code_dir.resolve()
    names: dict[str, set[str] | None] = {}
    for file, function in entrypoint.functions():
        path = (code_dir / file).resolve()
        if not path.is_relative_to(root):
            return f"entry file {file} is outside the source"
        if not path.is_file():
            return f"entry file {file} does not exist"
        if file not in names:
            try:
                tree = ast.parse(path.read_bytes(), filename=file)
            except SyntaxError as exc:
                return f"{file} line {exc.lineno}: {exc.msg}"
            except ValueError as exc:  # null bytes and the like
                return f"{file} is not Python source: {exc}"
            names[file] = module_names(tree)
        defined = names[file]
        if defined is not None and function not in defined:
            return f"{file} defines no function {function!r}"
    return None


def module_names(tree: ast.Module) -> set[str] | None:
    """Names bound at module level, or None when they cannot be known statically."""
    found: set[str] = set()
    for node in _module_statements(tree.body):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            found.add(node.name)
        elif isinstance(node, ast.Import | ast.ImportFrom):
            for alias in node.names:
                if alias.name == "*":
                    return None
                found.add(alias.asname or alias.name.split(".")[0])
        elif isinstance(node, ast.Assign | ast.AnnAssign | ast.AugAssign):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            for target in targets:
                found.update(_bound(target))
        elif isinstance(node, ast.For | ast.AsyncFor | ast.With | ast.AsyncWith):
            targets = (
                [node.target]
                if isinstance(node, ast.For | ast.AsyncFor)
                else [item.optional_vars for item in node.items if item.optional_vars]
            )
            for target in targets:
                found.update(_bound(target))
    if "__getattr__" in found:
        return None
    return found


def _module_statements(body: list[ast.stmt]) -> Iterator[ast.stmt]:
    """Statements that run at import, including inside module-level if / try / with / for blocks."""
    for node in body:
        yield node
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            continue  # their bodies bind names in their own scope
        for block in ("body", "orelse", "finalbody"):
            yield from _module_statements(getattr(node, block, []))
        for handler in getattr(node, "handlers", []):
            yield from _module_statements(handler.body)
        for case in getattr(node, "cases", []):
            yield from _module_statements(case.body)


def _bound(target: ast.expr) -> Iterator[str]:
    if isinstance(target, ast.Name):
        yield target.id
    elif isinstance(target, ast.Tuple | ast.List):
        for element in target.elts:
            yield from _bound(element)
    elif isinstance(target, ast.Starred):
        yield from _bound(target.value)


async def import_problem(
    python: Path,
    runtime: Path,
    code_dir: Path,
    entrypoint: Entrypoint,
    timeout: float,
    on_line: LineSink,
    user: BuildUser | None = None,
) -> str | None:
    """Import the entry files in a child process of the environment's Python; None when it worked.

    The traceback goes to `on_line`; the returned reason is one line naming the file and the error.
    """
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": str(user.home) if user else os.environ.get("HOME", "/tmp"),
        "LANG": os.environ.get("LANG", "C.UTF-8"),
        "PYTHONPATH": str(runtime),
        # The code folder is part of the image: importing it must not add __pycache__ to it.
        "PYTHONDONTWRITEBYTECODE": "1",
        "PYTHONUNBUFFERED": "1",
    }
    args = [str(python), "-c", _IMPORT_CHECK, msgspec.json.encode(entrypoint).decode()]

    async def forward(line: str) -> None:
        if not line.startswith(REASON_PREFIX):
            await on_line(line)

    try:
        finished = await run(args, forward, timeout=timeout, cwd=code_dir, env=env, user=user.uid if user else None)
    except ProcessTimeout:
        return f"import of {entrypoint.files()[0]} took longer than {timeout:g} s"
    if finished.returncode == 0:
        return None
    reasons = [line.removeprefix(REASON_PREFIX) for line in finished.lines if line.startswith(REASON_PREFIX)]
    if reasons:
        return reasons[-1]
    return f"import of {entrypoint.files()[0]} failed: the process exited with code {finished.returncode}"
