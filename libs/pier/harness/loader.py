"""Import the user's entry files once and find their functions."""

from __future__ import annotations

import importlib.util
import inspect
import sys
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any

from pier.spec import Entrypoint


class LoadError(Exception):
    pass


class Functions:
    """Every function an instance can call, keyed by (file, name); modules are imported once."""

    def __init__(self, code_dir: Path, entrypoint: Entrypoint) -> None:
        self.code_dir = code_dir
        self.modules: dict[str, ModuleType] = {}
        self.table: dict[tuple[str, str], Callable[..., Any]] = {}
        if str(code_dir) not in sys.path:
            sys.path.insert(0, str(code_dir))
        for file, name in entrypoint.functions():
            module = self._module(file)
            func = getattr(module, name, None)
            if not callable(func):
                raise LoadError(f"{file} defines no function {name!r}")
            self.table[(file, name)] = func

    def _module(self, file: str) -> ModuleType:
        if file not in self.modules:
            path = self.code_dir / file
            if not path.is_file():
                raise LoadError(f"entry file {file} does not exist")
            module_name = file[:-3].replace("/", ".")
            known = sys.modules.get(module_name)
            if known is not None and _same_file(getattr(known, "__file__", None), path):
                # Another entry file already imported it: running it again would repeat its
                # module-level initialisation and split its state in two.
                self.modules[file] = known
                return known
            spec = importlib.util.spec_from_file_location(module_name, path)
            assert spec and spec.loader
            module = importlib.util.module_from_spec(spec)
            sys.modules[module_name] = module
            spec.loader.exec_module(module)
            self.modules[file] = module
        return self.modules[file]

    def get(self, file: str, name: str) -> Callable[..., Any]:
        return self.table[(file, name)]


def _same_file(a: str | None, b: Path) -> bool:
    try:
        return a is not None and Path(a).resolve() == b.resolve()
    except OSError:
        return False


_P = inspect.Parameter


def argument_problems(func: Callable[..., Any], args: list[Any], kwargs: dict[str, Any]) -> list[tuple[str, str]]:
    """Every reason these arguments cannot be passed to `func`, as (argument, problem) pairs.

    `inspect.Signature.bind` stops at the first problem; a caller fixing a request wants them all.
    """
    try:
        signature = inspect.signature(func)
    except (TypeError, ValueError):
        return []  # no signature to read (a builtin): let the call decide
    params = list(signature.parameters.values())
    by_position = [p for p in params if p.kind in (_P.POSITIONAL_ONLY, _P.POSITIONAL_OR_KEYWORD)]
    takes_varargs = any(p.kind == _P.VAR_POSITIONAL for p in params)
    takes_varkw = any(p.kind == _P.VAR_KEYWORD for p in params)
    problems: list[tuple[str, str]] = []
    if len(args) > len(by_position) and not takes_varargs:
        problems.append(("parameters", f"takes {len(by_position)} positional arguments but {len(args)} were given"))
    given_by_position = {p.name for p in by_position[: len(args)]}
    for name in kwargs:
        param = signature.parameters.get(name)
        if param is None or param.kind in (_P.VAR_POSITIONAL, _P.VAR_KEYWORD, _P.POSITIONAL_ONLY):
            if not takes_varkw:
                problems.append((name, "is not an argument of the function"))
        elif name in given_by_position:
            problems.append((name, "is given twice, by position and by name"))
    for param in params:
        if param.default is not _P.empty or param.kind in (_P.VAR_POSITIONAL, _P.VAR_KEYWORD):
            continue
        by_name = param.name in kwargs and param.kind != _P.POSITIONAL_ONLY
        if param.name not in given_by_position and not by_name:
            problems.append((param.name, "is required"))
    if not problems:
        try:
            signature.bind(*args, **kwargs)
        except TypeError as exc:  # a case the rules above do not know: still name it
            problems.append(("arguments", str(exc)))
    return problems
