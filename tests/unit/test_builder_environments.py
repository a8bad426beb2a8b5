"""Environment identity, uv's error lines, and the image digest."""

from __future__ import annotations

import ast
import importlib.metadata
import importlib.util
import sys
from pathlib import Path

from pier.spec import Entrypoint
from services.builder.environments import env_hash, harness_requirements, pinned_packages, uv_error
from services.builder.images import image_digest, runtime_files

HARNESS = ["aiohttp==3.10.0", "msgspec==0.19.0"]


def test_env_hash_is_stable_for_the_same_inputs() -> None:
    assert env_hash("3.11.7", "six\n", HARNESS) == env_hash("3.11.7", "six\n", list(reversed(HARNESS)))


def test_env_hash_changes_with_each_input() -> None:
    base = env_hash("3.11.7", "six\n", HARNESS)
    others = {
        env_hash("3.12.1", "six\n", HARNESS),
        env_hash("3.11.7", "six==1.16\n", HARNESS),
        env_hash("3.11.7", None, HARNESS),
        env_hash("3.11.7", "", HARNESS),
        env_hash("3.11.7", "six\n", ["aiohttp==3.11.0", "msgspec==0.19.0"]),
    }
    assert base not in others
    assert len(others) == 5


def test_harness_requirements_pin_the_platforms_versions() -> None:
    assert harness_requirements() == [
        f"httptools=={importlib.metadata.version('httptools')}",
        f"msgspec=={importlib.metadata.version('msgspec')}",
        f"uvloop=={importlib.metadata.version('uvloop')}",
    ]


def test_uv_error_joins_the_error_with_its_innermost_cause() -> None:
    output = [
        "Using Python 3.11.7 environment at: /tmp/env",
        "error: No solution found when resolving dependencies",
        "  cause: Because nosuchpkg was not found in the package registry, your requirements are unsatisfiable.",
    ]
    assert uv_error(output) == (
        "No solution found when resolving dependencies: "
        "Because nosuchpkg was not found in the package registry, your requirements are unsatisfiable."
    )


def test_uv_error_without_an_error_line_uses_the_last_line() -> None:
    assert uv_error(["Resolved 3 packages", "killed", ""]) == "killed"
    assert uv_error([]) == "uv exited with an error and no output"


def test_the_recorded_package_list_holds_only_pins_not_uvs_status_lines() -> None:
    frozen = [
        "Using Python 3.11.7 environment at: envs/.tmp-41797c9a5e06-0b9d440a",
        "numpy==2.4.6",
        "",
        "# a comment",
        "local @ file:///tmp/local-1.0-py3-none-any.whl",
        "-e file:///src/mine",
    ]
    assert pinned_packages(frozen) == [
        "numpy==2.4.6",
        "local @ file:///tmp/local-1.0-py3-none-any.whl",
        "-e file:///src/mine",
    ]


def test_image_digest_covers_code_environment_and_entrypoint() -> None:
    entrypoint = Entrypoint(file="predict.py", function="predict")
    base = image_digest("c" * 64, "e" * 64, entrypoint)
    assert base == image_digest("c" * 64, "e" * 64, Entrypoint(file="predict.py", function="predict"))
    assert base != image_digest("d" * 64, "e" * 64, entrypoint)
    assert base != image_digest("c" * 64, "f" * 64, entrypoint)
    assert base != image_digest("c" * 64, "e" * 64, Entrypoint(file="predict.py", function="other"))


def test_runtime_ships_the_harness_and_spec_but_not_the_platform() -> None:
    shipped = {relative for _, relative in runtime_files()}
    assert {"pier/__init__.py", "pier/spec.py", "pier/harness/loader.py", "pier/harness/server.py"} <= shipped
    assert {"pier/http/__init__.py", "pier/http/server.py", "pier/http/limits.py"} <= shipped
    assert "pier/bus.py" not in shipped


def _imports(path: Path) -> set[str]:
    """Every module `path` imports absolutely (`import a.b`, `from a.b import c` -> a.b and a.b.c)."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            names.add(node.module)
            names |= {f"{node.module}.{alias.name}" for alias in node.names}
    return names


def test_every_pier_module_the_shipped_code_imports_is_shipped_too() -> None:
    """A harness import of a pier module left out of runtime/ builds fine and then fails every instance."""
    shipped = {
        relative.removesuffix(".py").removesuffix("/__init__").replace("/", ".") for _, relative in runtime_files()
    }
    packages = {name for name in shipped if any(other.startswith(name + ".") for other in shipped)} | {"pier"}
    missing: set[str] = set()
    for path, relative in runtime_files():
        for name in _imports(path):
            if name.split(".")[0] == "pier" and name not in shipped:
                # `from pier.http import server` names a module; `from pier.http import SECRET_HEADER`
                # or `from pier.spec import Route` a name in one: only a real module must be shipped.
                parent = name.rpartition(".")[0]
                if parent not in shipped or (parent in packages and importlib.util.find_spec(name) is not None):
                    missing.add(f"{relative}: {name}")
    assert not missing, missing


def test_every_third_party_module_the_harness_imports_is_installed_in_each_environment() -> None:
    """An instance runs the harness in the user's environment: a harness import missing from
    HARNESS_PACKAGES builds fine and then fails every instance at start."""
    from services.builder.environments import HARNESS_PACKAGES

    imported: set[str] = set()
    for path, _ in runtime_files():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                imported |= {alias.name.split(".")[0] for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
                imported.add(node.module.split(".")[0])
    third_party = imported - set(sys.stdlib_module_names) - {"pier", "__future__"}
    assert third_party <= set(HARNESS_PACKAGES), third_party - set(HARNESS_PACKAGES)
