"""What both shells do with httpx's answers and failures, so neither has its own copy."""

from __future__ import annotations

from typing import Any

import httpx

from pier.client.core import Call
from pier.client.errors import Unreachable

# No answer at all: refused, reset, timed out, or cut off mid-answer. A bad URL or a local
# protocol misuse is not Pier being away, so those stay httpx's own errors.
NO_ANSWER = (httpx.TimeoutException, httpx.NetworkError, httpx.RemoteProtocolError)


def unreachable(call: Call[Any], exc: Exception) -> Unreachable:
    return Unreachable(call.url, exc)


def timeout(call: Call[Any]) -> httpx.Timeout:
    """The call's own limit on reading its answer (None: none), and at most 10 s to connect."""
    return httpx.Timeout(call.timeout, connect=min(10.0, call.timeout) if call.timeout else 10.0)
