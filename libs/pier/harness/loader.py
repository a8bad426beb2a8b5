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
            spec = importlib.util.spec_from_file_location(module_name, path)
            assert spec and spec.loader
            module = importlib.util.module_from_spec(spec)
            sys.modules[module_name] = module
            spec.loader.exec_module(module)
            self.modules[file] = module
        return self.modules[file]

    def get(self, file: str, name: str) -> Callable[..., Any]:
        return self.table[(file, name)]


def bind_error(func: Callable[..., Any], args: list[Any], kwargs: dict[str, Any]) -> str | None:
    """Why these arguments cannot be passed to `func` (missing or unexpected ones), or None."""
    try:
        inspect.signature(func).bind(*args, **kwargs)
    except TypeError as exc:
        return str(exc)
    except ValueError:
        return None  # no signature (a builtin): let the call decide
    return None
