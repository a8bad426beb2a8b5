"""When to call a model API again: exponential backoff with full jitter, at least the server's
Retry-After, within a total deadline. No I/O here: the clients sleep and call, this decides."""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from email.utils import parsedate_to_datetime

from pier.client.errors import ApiError, Unreachable

# A shed call (503: no capacity now) and a bad gateway (502: no instance answered) were not served:
# calling again is safe. A 500 is the model's own error and any other 4xx the caller's: the same
# call would fail the same way. A 504 may have run: it is not repeated either.
RETRIED_STATUSES = frozenset({502, 503})


@dataclass(frozen=True)
class RetryPolicy:
    """Wait `uniform(0, min(cap, base * 2**n))` seconds before attempt n + 1 (full jitter: retries
    of many clients spread out instead of arriving together), or the server's Retry-After when that
    is longer; give up once the next attempt would start after `deadline` seconds in all."""

    deadline: float = 30.0
    base: float = 0.1
    cap: float = 10.0
    uniform: Callable[[float, float], float] = field(default=random.uniform, repr=False, compare=False)
    clock: Callable[[], float] = field(default=time.monotonic, repr=False, compare=False)

    def start(self) -> Attempts:
        return Attempts(self, self.clock() + self.deadline)


def retryable(error: Exception) -> bool:
    return isinstance(error, Unreachable) or (isinstance(error, ApiError) and error.status in RETRIED_STATUSES)


class Attempts:
    """The attempts of one call: `wait_after(error)` is the pause before the next one, or None
    when the error is final (not retryable, or the deadline leaves no time for another try)."""

    def __init__(self, policy: RetryPolicy, deadline: float) -> None:
        self.policy = policy
        self.deadline = deadline
        self.failures = 0

    def remaining(self) -> float:
        return max(0.0, self.deadline - self.policy.clock())

    def wait_after(self, error: Exception) -> float | None:
        if not retryable(error):
            return None
        p = self.policy
        wait = p.uniform(0.0, min(p.cap, p.base * 2**self.failures))
        self.failures += 1
        if isinstance(error, ApiError) and error.retry_after is not None:
            wait = max(wait, error.retry_after)
        if wait >= self.remaining():
            return None
        return wait


def parse_retry_after(value: str | None, now: Callable[[], float] = time.time) -> float | None:
    """Retry-After as seconds: a number of seconds, or an HTTP date (RFC 9110); None when absent or unreadable."""
    if not value:
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - now())
