"""What a call to Pier can fail with: an answer that is an error, or no answer at all."""

from __future__ import annotations

from typing import Any


class ApiError(Exception):
    """An error answer from Pier; `problem` is the parsed body (problem+json or an invocation error).

    `retry_after` is the server's Retry-After in seconds, when it sent one (a shed call's 503)."""

    def __init__(self, status: int, problem: dict[str, Any], retry_after: float | None = None) -> None:
        self.status = status
        self.problem = problem
        self.retry_after = retry_after
        error = problem.get("error")
        detail = problem.get("detail") or (error.get("message") if isinstance(error, dict) else None) or problem
        super().__init__(f"HTTP {status}: {detail}")


class Unreachable(ConnectionError):
    """No answer from Pier at all: the connection was refused, timed out or dropped.

    Raised for these alone, so that any other OSError a caller sees is a local one (a file)."""

    def __init__(self, url: str, reason: object) -> None:
        self.url = url
        super().__init__(f"cannot reach Pier at {url} ({reason})")
