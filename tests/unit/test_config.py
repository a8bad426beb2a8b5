from pathlib import Path

import pytest

from pier import config


def test_settings_come_from_pier_variables() -> None:
    settings = config.load(env={"PIER_HOME": "/tmp/pier-home", "PIER_API_PORT": "9090", "PIER_GPUS": "a100:2"})
    assert settings.home == Path("/tmp/pier-home")
    assert settings.api_port == 9090
    assert settings.gpus == "a100:2"


def test_a_bad_value_names_the_variable() -> None:
    with pytest.raises(SystemExit, match="api_port"):
        config.load(env={"PIER_API_PORT": "eighty"})


def test_settings_survive_the_trip_through_a_child_environment() -> None:
    settings = config.load(env={"PIER_HOME": "/srv/pier", "PIER_ACK_WAIT": "2.5"})
    assert config.load(env=config.to_env(settings)) == settings
