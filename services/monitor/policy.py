"""The health-check rules as pure counting: what one probe result means for an instance.

No I/O and no clock here, so every rule is a unit test away. `Policy` is a model API's
`pier.events.HealthPolicy` (from its route record); `backoff` decides restarts.
"""

from __future__ import annotations

import enum
from typing import Literal, TypeAlias

import msgspec

from pier.events import HealthPolicy

Policy: TypeAlias = HealthPolicy
DEFAULT_POLICY = Policy()
DEFAULT_INITIAL_DELAY = DEFAULT_POLICY.initial_delay
DEFAULT_PERIOD = DEFAULT_POLICY.period
DEFAULT_TIMEOUT = DEFAULT_POLICY.timeout
DEFAULT_FAILURE_THRESHOLD = DEFAULT_POLICY.failure_threshold
# A fresh instance is probed faster (never slower than `period`) so it takes traffic soon after it can.
STARTING_PERIOD = 0.2

State = Literal["starting", "ready", "unhealthy"]


class Action(enum.Enum):
    NONE = "none"
    MARK_READY = "ready"
    MARK_UNHEALTHY = "unhealthy"


class ProbeCounter:
    """One instance's probe history, reduced to its state and its failures in a row."""

    def __init__(self, policy: Policy, state: State = "starting") -> None:
        self.policy = policy
        self.state: State = state
        self.failures = 0

    def on_success(self) -> Action:
        self.failures = 0
        if self.state == "starting":
            self.state = "ready"
            return Action.MARK_READY
        return Action.NONE

    def on_failure(self) -> Action:
        # Unhealthy is final for this incarnation: a restart brings a new record, and a new counter.
        if self.state == "unhealthy":
            return Action.NONE
        self.failures += 1
        # A starting instance is still importing or warming up: failing is normal until its first success.
        if self.state == "ready" and self.failures >= self.policy.failure_threshold:
            self.state = "unhealthy"
            return Action.MARK_UNHEALTHY
        return Action.NONE

    def interval(self) -> float:
        """Seconds from the start of one probe to the start of the next."""
        return min(STARTING_PERIOD, self.policy.period) if self.state == "starting" else self.policy.period


class Restart(msgspec.Struct, frozen=True):
    """What to do about an instance that crashed or is unhealthy: restart after `delay`, or give up."""

    attempt: int  # restarts in the window, this one included
    delay: float
    give_up: bool


def backoff(policy: Policy, history: dict[str, float], cause: str, now: float) -> Restart:
    """CrashLoopBackOff: the first restart in a window at once, then `restart_backoff` doubling up to
    `restart_backoff_max`; one restart beyond `max_restarts` in `restart_window` gives up.
    `history` maps each earlier cause (event id) to when it was seen; a cause seen before counts once."""
    at = history.get(cause, now)
    recent = sorted(t for c, t in history.items() if c != cause and at - policy.restart_window < t <= at)
    attempt = len(recent) + 1
    if attempt > policy.max_restarts:
        return Restart(attempt=attempt, delay=0.0, give_up=True)
    delay = 0.0 if attempt == 1 else min(policy.restart_backoff * 2 ** (attempt - 2), policy.restart_backoff_max)
    return Restart(attempt=attempt, delay=delay, give_up=False)
