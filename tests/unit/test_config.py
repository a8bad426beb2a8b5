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


def test_gateway_processes_default_to_one_per_usable_cpu_up_to_four_and_never_fewer_than_replicas(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    for cpus, replicas, given, expected in ((2, 1, 0, 2), (16, 1, 0, 4), (1, 1, 0, 1), (2, 3, 0, 3), (8, 1, 6, 6)):
        monkeypatch.setattr(config.os, "sched_getaffinity", lambda _pid, n=cpus: set(range(n)))
        settings = config.load(env={"PIER_REPLICAS": str(replicas), "PIER_GATEWAY_PROCESSES": str(given)})
        assert config.gateway_processes(settings) == expected, (cpus, replicas, given)


def test_make_up_refuses_a_gateway_count_out_of_range_naming_the_variable() -> None:
    from infra.supervisor import StartFailed, _check_ports

    with pytest.raises(StartFailed, match=r"PIER_GATEWAY_PROCESSES must be between 0 .* and 32, not 33"):
        _check_ports(config.load(env={"PIER_GATEWAY_PROCESSES": "33"}), 1, 2)
