"""Probe counting: when a probe result makes an instance ready or unhealthy."""

from __future__ import annotations

import itertools

import pytest

from services.monitor.policy import (
    DEFAULT_FAILURE_THRESHOLD,
    DEFAULT_PERIOD,
    STARTING_PERIOD,
    Action,
    Policy,
    ProbeCounter,
)


def test_first_success_while_starting_marks_ready_once() -> None:
    counter = ProbeCounter(Policy())
    assert counter.on_success() is Action.MARK_READY
    assert counter.state == "ready"
    assert counter.on_success() is Action.NONE


def test_failures_while_starting_never_mark_unhealthy() -> None:
    counter = ProbeCounter(Policy(failure_threshold=2))
    assert [counter.on_failure() for _ in range(10)] == [Action.NONE] * 10
    assert counter.state == "starting"
    assert counter.on_success() is Action.MARK_READY


def test_ready_instance_is_unhealthy_after_exactly_threshold_failures() -> None:
    counter = ProbeCounter(Policy(), "ready")
    actions = [counter.on_failure() for _ in range(DEFAULT_FAILURE_THRESHOLD)]
    assert actions == [Action.NONE] * (DEFAULT_FAILURE_THRESHOLD - 1) + [Action.MARK_UNHEALTHY]
    assert counter.state == "unhealthy"


def test_success_resets_the_failure_count() -> None:
    counter = ProbeCounter(Policy(failure_threshold=3), "ready")
    assert counter.on_failure() is Action.NONE
    assert counter.on_failure() is Action.NONE
    assert counter.on_success() is Action.NONE
    assert counter.on_failure() is Action.NONE
    assert counter.on_failure() is Action.NONE
    assert counter.on_failure() is Action.MARK_UNHEALTHY


def test_unhealthy_is_reported_once() -> None:
    counter = ProbeCounter(Policy(failure_threshold=1), "ready")
    assert counter.on_failure() is Action.MARK_UNHEALTHY
    assert counter.on_failure() is Action.NONE
    assert counter.on_success() is Action.NONE
    assert counter.state == "unhealthy"


def test_starting_instances_are_probed_more_often() -> None:
    counter = ProbeCounter(Policy())
    assert counter.interval() == STARTING_PERIOD
    counter.on_success()
    assert counter.interval() == DEFAULT_PERIOD


def _expected(results: tuple[bool, ...], threshold: int) -> list[Action]:
    """The rules restated independently: ready at the first success, unhealthy at the
    threshold-th failure in a row after that, and nothing once unhealthy."""
    actions: list[Action] = []
    ready_at = next((i for i, ok in enumerate(results) if ok), None)
    unhealthy_at = None
    if ready_at is not None:
        run = 0
        for i in range(ready_at + 1, len(results)):
            run = 0 if results[i] else run + 1
            if run == threshold:
                unhealthy_at = i
                break
    for i in range(len(results)):
        if i == ready_at:
            actions.append(Action.MARK_READY)
        elif i == unhealthy_at:
            actions.append(Action.MARK_UNHEALTHY)
        else:
            actions.append(Action.NONE)
    return actions


@pytest.mark.parametrize("threshold", [1, 2, 3])
def test_every_sequence_of_probe_results_follows_the_rules(threshold: int) -> None:
    for results in itertools.product([True, False], repeat=9):
        counter = ProbeCounter(Policy(failure_threshold=threshold))
        actions = [counter.on_success() if ok else counter.on_failure() for ok in results]
        assert actions == _expected(results, threshold), results
