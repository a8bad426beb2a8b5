"""Probe counting (when a probe result makes an instance ready or unhealthy) and restart back-off."""

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
    Restart,
    backoff,
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


# ---- restarts: CrashLoopBackOff, then `failed` ------------------------------------------------


def _restarts(policy: Policy, times: list[float]) -> list[Restart]:
    history: dict[str, float] = {}
    decisions = []
    for n, at in enumerate(times):
        history[f"cause-{n}"] = at
        decisions.append(backoff(policy, history, f"cause-{n}", at))
    return decisions


def test_first_restart_is_at_once_then_the_wait_doubles_up_to_the_cap() -> None:
    policy = Policy(restart_backoff=10, restart_backoff_max=35, max_restarts=10, restart_window=600)
    delays = [d.delay for d in _restarts(policy, [float(t) for t in range(6)])]
    assert delays == [0, 10, 20, 35, 35, 35]


def test_one_restart_beyond_the_limit_in_the_window_gives_up() -> None:
    policy = Policy(max_restarts=3, restart_window=600)
    decisions = _restarts(policy, [0, 1, 2, 3])
    assert [d.give_up for d in decisions] == [False, False, False, True]
    assert decisions[-1].attempt == 4


def test_restarts_older_than_the_window_are_forgotten() -> None:
    policy = Policy(restart_backoff=10, max_restarts=2, restart_window=600)
    decisions = _restarts(policy, [0, 1, 700, 701])
    assert [(d.attempt, d.delay, d.give_up) for d in decisions] == [(1, 0, False), (2, 10, False)] * 2


def test_a_cause_seen_again_counts_once() -> None:
    policy = Policy(restart_backoff=10)
    history = {"a": 0.0, "b": 5.0}
    first = backoff(policy, history, "b", 5.0)
    again = backoff(policy, history, "b", 50.0)
    assert first == again == Restart(attempt=2, delay=10, give_up=False)


@pytest.mark.parametrize("limit", [0, 1, 3, 6])
def test_backoff_never_exceeds_the_cap_and_gives_up_only_past_the_limit(limit: int) -> None:
    policy = Policy(restart_backoff=10, restart_backoff_max=300, max_restarts=limit, restart_window=600)
    for gaps in itertools.product([0.0, 250.0, 601.0], repeat=7):
        times = list(itertools.accumulate(gaps))
        for n, decision in enumerate(_restarts(policy, times)):
            in_window = sum(1 for t in times[: n + 1] if times[n] - 600 < t <= times[n])
            assert decision.attempt == in_window, gaps
            assert decision.give_up == (in_window > limit), gaps
            assert 0 <= decision.delay <= 300
