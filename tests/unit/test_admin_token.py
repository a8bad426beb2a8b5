"""Where the api takes the admin token from at start: a file (as `make up` gives it), else the variable."""

from pathlib import Path

import pytest

from pier import config
from services.api.auth import admin_token


def test_the_admin_token_file_wins_over_the_variable(tmp_path: Path) -> None:
    (tmp_path / "admin.token").write_text("pier_from_the_file\n")
    env = {"PIER_ADMIN_TOKEN_FILE": str(tmp_path / "admin.token"), "PIER_ADMIN_TOKEN": "pier_from_the_environment"}
    assert admin_token(config.load(env=env)) == "pier_from_the_file"


def test_without_a_file_the_variable_is_the_admin_token() -> None:
    assert admin_token(config.load(env={"PIER_ADMIN_TOKEN": "pier_from_env"})) == "pier_from_env"


@pytest.mark.parametrize(("content", "problem"), [(None, "cannot read"), ("\n", "is empty")])
def test_a_missing_or_empty_admin_token_file_stops_the_api_naming_it(
    tmp_path: Path, content: str | None, problem: str
) -> None:
    path = tmp_path / "admin.token"
    if content is not None:
        path.write_text(content)
    with pytest.raises(SystemExit, match=problem) as stopped:
        admin_token(config.load(env={"PIER_ADMIN_TOKEN_FILE": str(path)}))
    assert str(path) in str(stopped.value)
