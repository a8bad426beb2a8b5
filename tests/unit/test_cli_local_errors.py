"""The `pier` CLI run as a user runs it, with no Pier listening: a problem with what the user gave
is named as such, on one line: a flag's value with exit code 2, a file or folder with exit code 4;
only a refused connection says Pier cannot be reached, with exit code 3."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from infra.embedded import free_port

NOT_REACHED = "cannot reach Pier"


@pytest.fixture
def nowhere(tmp_path: Path) -> dict[str, str]:
    """The environment of a CLI whose api and gateway ports have nothing listening on them."""
    home = tmp_path / "home"
    home.mkdir()
    return {
        **os.environ,
        "PIER_HOME": str(home),
        "PIER_API_URL": f"http://127.0.0.1:{free_port()}",
        "PIER_GATEWAY_URL": f"http://127.0.0.1:{free_port()}",
    }


def _pier(env: dict[str, str], *args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "pier", *args], env=env, cwd=cwd, capture_output=True, text=True, timeout=60
    )


def _error(done: subprocess.CompletedProcess[str], code: int, named: tuple[str, ...]) -> None:
    assert done.returncode == code, done.stdout + done.stderr
    assert NOT_REACHED not in done.stderr and "Traceback" not in done.stderr, done.stderr
    assert len(done.stderr.strip().splitlines()) == 1 and done.stderr.startswith("error: "), done.stderr
    for text in named:
        assert text in done.stderr, done.stderr


def _usage_error(done: subprocess.CompletedProcess[str], *named: str) -> None:
    _error(done, 2, named)


def _local_error(done: subprocess.CompletedProcess[str], *named: str) -> None:
    _error(done, 4, named)


@pytest.fixture
def code(tmp_path: Path) -> Path:
    folder = tmp_path / "code"
    folder.mkdir()
    (folder / "text.py").write_text("def classify(text):\n    return text\n")
    return folder


ROUTE = "  - {path: /classify, file: text.py, function: classify}\n"


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("routes: [unclosed\n", "is not valid YAML: line 2, column 1: expected ',' or ']'"),
        ("paths:\n" + ROUTE, "top-level key `routes` holds a list"),
        ("routes:\n  - {file: text.py, function: classify}\n", "missing required field `path` - at `routes[0]`"),
        ("routes:\n" + ROUTE + "  - {path: /b, file: text.py, function: classify, verb: FETCH}\n", "`routes[1].verb`"),
    ],
)
def test_a_bad_routes_file_is_named_with_what_is_wrong(
    nowhere: dict[str, str], code: Path, tmp_path: Path, text: str, problem: str
) -> None:
    routes = tmp_path / "my-routes.yaml"
    routes.write_text(text)
    done = _pier(nowhere, "deploy", str(code), "--name", "m", "--routes", str(routes))
    _local_error(done, str(routes), problem)


def test_a_missing_routes_file_is_named_not_taken_for_an_unreachable_server(
    nowhere: dict[str, str], code: Path
) -> None:
    done = _pier(nowhere, "deploy", str(code), "--name", "m", "--routes", "missing.yaml")
    _local_error(done, "routes file missing.yaml: no such file")
    not_text = code / "binary.yaml"
    not_text.write_bytes(b"\xff\xfe\x00routes")
    _local_error(_pier(nowhere, "deploy", str(code), "--name", "m", "--routes", str(not_text)), "is not UTF-8 text")


def test_a_folders_own_routes_yaml_is_used_and_checked(nowhere: dict[str, str], code: Path) -> None:
    (code / "routes.yaml").write_text("routes:\n  - {file: text.py, function: classify}\n")
    done = _pier(nowhere, "deploy", str(code), "--name", "m")
    assert f"using the routes in {code / 'routes.yaml'}" in done.stdout
    _local_error(done, "missing required field `path`")


def test_a_path_that_is_not_a_folder_is_a_local_error(nowhere: dict[str, str], code: Path) -> None:
    _local_error(_pier(nowhere, "deploy", str(code / "text.py"), "--name", "m"), "text.py: is not a folder")
    _local_error(_pier(nowhere, "deploy", str(code / "absent"), "--name", "m"), "absent: no such folder")
    _local_error(_pier(nowhere, "sources", "push", str(code / "text.py"), "--name", "s"), "is not a folder")
    _usage_error(_pier(nowhere, "deploy", str(code), "--source", "s", "--name", "m"), "give exactly one of")


def test_a_bad_or_missing_flag_is_one_line_naming_it(nowhere: dict[str, str], code: Path) -> None:
    _usage_error(
        _pier(nowhere, "deploy", str(code)), "the following arguments are required: --name", "pier deploy --help"
    )
    _usage_error(_pier(nowhere, "tokens", "list"), "the following arguments are required: NAME")
    _usage_error(_pier(nowhere, "settings", "m", "--access", "open"), "--access: invalid choice: 'open'")


@pytest.mark.parametrize(
    ("flag", "value", "problem"),
    [
        ("--data", "{name: Ada}", "--data: is not valid JSON"),
        ("--data", "[1, 2]", "--data: expected a JSON object"),
        ("--parameters", '{"x": 1}', "--parameters: expected a JSON array"),
    ],
)
def test_bad_call_arguments_name_the_flag(nowhere: dict[str, str], flag: str, value: str, problem: str) -> None:
    _usage_error(_pier(nowhere, "call", "m", flag, value), problem)


def test_an_unreadable_secret_file_or_credentials_file_is_named(nowhere: dict[str, str], code: Path) -> None:
    done = _pier(nowhere, "git-credentials", "add", "c", "--from-file", str(code))
    _local_error(done, f"--from-file {code}: is a folder, not a file")
    credentials = Path(nowhere["PIER_HOME"]) / "credentials.json"
    credentials.write_text("{not json")
    _local_error(_pier(nowhere, "list"), f"credentials file {credentials}: cannot be read")


def test_only_a_refused_connection_says_pier_cannot_be_reached(nowhere: dict[str, str], code: Path) -> None:
    (code / "routes.yaml").write_text("routes:\n" + ROUTE)
    # A call is tried again while nothing answers: --deadline 0 makes it one attempt.
    for args in (("list",), ("deploy", str(code), "--name", "m"), ("call", "m", "--data", "{}", "--deadline", "0")):
        done = _pier(nowhere, *args)
        assert done.returncode == 3, done.stdout + done.stderr
        assert NOT_REACHED in done.stderr and "is `make up` running?" in done.stderr
        assert "Traceback" not in done.stderr


def test_an_unreadable_file_in_the_folder_is_named_as_local(nowhere: dict[str, str], code: Path) -> None:
    if os.geteuid() == 0:
        pytest.skip("root reads every file")
    secret = code / "secret.txt"
    secret.write_text("x")
    secret.chmod(0)
    _local_error(_pier(nowhere, "deploy", str(code), "--name", "m"), f"cannot pack {secret}", "Permission denied")


def test_an_unreadable_folder_is_named_as_local(nowhere: dict[str, str], code: Path) -> None:
    if os.geteuid() == 0:
        pytest.skip("root reads every folder")
    code.chmod(0)
    try:
        _local_error(_pier(nowhere, "sources", "push", str(code), "--name", "s"), str(code), "Permission denied")
    finally:
        code.chmod(0o755)
