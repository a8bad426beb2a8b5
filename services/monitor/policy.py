"""The health-check rules as pure counting: what one probe result means for an instance.

No I/O and no clock here, so every rule is a unit test away. Per-model settings and back-off
come later; `Policy` is the struct they will fill in.
"""

from __future__ import annotations

import enum
from typing import Literal

import msgspec

DEFAULT_INITIAL_DELAY = 0.0
DEFAULT_PERIOD = 1.0
# A fresh instance is probed faster so it takes traffic soon after it can.
STARTING_PERIOD = 0.2
DEFAULT_TIMEOUT = 2.0
DEFAULT_FAILURE_THRESHOLD = 3

State = Literal["starting", "ready", "unhealthy"]


class Policy(msgspec.Struct, kw_only=True, frozen=True):
    initial_delay: float = DEFAULT_INITIAL_DELAY  # seconds after the instance started before the first probe
    period: float = DEFAULT_PERIOD  # seconds between probes of a ready instance
    starting_period: float = STARTING_PERIOD  # seconds between probes while starting
    timeout: float = DEFAULT_TIMEOUT  # a probe slower than this has failed
    failure_threshold: int = DEFAULT_FAILURE_THRESHOLD  # failures in a row that make a ready instance unhealthy


DEFAULT_POLICY = Policy()


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
        return self.policy.starting_period if self.state == "starting" else self.policy.period
