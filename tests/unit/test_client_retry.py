"""The client's retry schedule: exponential backoff with full jitter, at least Retry-After, a
total deadline, and which answers are never repeated. Random, clock and sleep are injected."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime

import httpx
import pytest

from infra.embedded import free_port
from pier.client import ApiError, AsyncClient, Client, RetryPolicy, Unreachable
from pier.client.retry import parse_retry_after


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += seconds


def highest(low: float, high: float) -> float:
    return high  # the top of each jitter range: the schedule's bounds


def shed(retry_after: str | None = None) -> ApiError:
    return ApiError(503, {"error": {"type": "Overloaded"}}, parse_retry_after(retry_after))


def test_waits_double_from_base_up_to_cap_with_full_jitter_between_zero_and_the_bound() -> None:
    ranges: list[tuple[float, float]] = []

    def uniform(low: float, high: float) -> float:
        ranges.append((low, high))
        return high / 2

    clock = FakeClock()
    attempts = RetryPolicy(deadline=1000, base=0.5, cap=3.0, uniform=uniform, clock=clock).start()
    waits = [attempts.wait_after(shed()) for _ in range(5)]
    assert ranges == [(0.0, 0.5), (0.0, 1.0), (0.0, 2.0), (0.0, 3.0), (0.0, 3.0)]
    assert waits == [0.25, 0.5, 1.0, 1.5, 1.5]


def test_retry_after_is_the_least_wait_even_when_the_jitter_draws_less() -> None:
    attempts = RetryPolicy(deadline=100, uniform=lambda low, high: 0.0, clock=FakeClock()).start()
    assert attempts.wait_after(shed("4")) == 4.0
    assert attempts.wait_after(shed()) == 0.0


def test_no_attempt_is_made_that_would_start_past_the_deadline() -> None:
    clock = FakeClock()
    attempts = RetryPolicy(deadline=5, uniform=lambda low, high: 0.0, clock=clock).start()
    assert attempts.wait_after(shed("3")) == 3.0
    clock.sleep(3.0)
    assert attempts.wait_after(shed("3")) is None  # 2 s are left: waiting 3 would overrun


@pytest.mark.parametrize("status", [400, 401, 404, 413, 500, 504])
def test_other_4xx_500_and_504_are_final(status: int) -> None:
    attempts = RetryPolicy(clock=FakeClock()).start()
    assert attempts.wait_after(ApiError(status, {})) is None


@pytest.mark.parametrize("error", [ApiError(502, {}), shed(), Unreachable("http://x", "refused")])
def test_502_503_and_no_answer_are_retried(error: Exception) -> None:
    assert RetryPolicy(clock=FakeClock()).start().wait_after(error) is not None


def test_retry_after_reads_seconds_and_http_dates() -> None:
    assert parse_retry_after("7") == 7.0
    later = datetime(2030, 1, 1, tzinfo=UTC)
    assert parse_retry_after(format_datetime(later, usegmt=True), now=lambda: later.timestamp() - 9) == 9.0
    assert parse_retry_after(format_datetime(later - timedelta(days=1), usegmt=True), now=later.timestamp) == 0.0
    assert parse_retry_after("soon") is None and parse_retry_after(None) is None


def _answers(*responses: httpx.Response) -> tuple[httpx.MockTransport, list[str]]:
    """A gateway that gives these answers in turn, and the paths it was asked for."""
    seen: list[str] = []
    queue = list(responses)

    def handle(request: httpx.Request) -> httpx.Response:
        seen.append(request.url.path)
        return queue.pop(0)

    return httpx.MockTransport(handle), seen


def _503(retry_after: str) -> httpx.Response:
    return httpx.Response(503, json={"error": {"type": "Overloaded"}}, headers={"Retry-After": retry_after})


def test_predict_sleeps_the_scheduled_waits_between_attempts_and_returns_the_answer() -> None:
    transport, seen = _answers(_503("2"), httpx.Response(502, json={}), httpx.Response(200, json={"result": 1}))
    clock = FakeClock()
    slept: list[float] = []

    def sleep(seconds: float) -> None:
        slept.append(seconds)
        clock.sleep(seconds)

    policy = RetryPolicy(base=0.5, uniform=highest, clock=clock)
    with Client("http://api", "k", "http://gw", retry=policy, sleep=sleep, transport=transport) as client:
        assert client.predict("m", data={"x": 1})["result"] == 1
    assert slept == [2.0, 1.0]  # Retry-After over the first bound (0.5); then the doubled bound
    assert seen == ["/models/m/latest/model"] * 3


def test_async_predict_gives_up_at_the_deadline_with_the_last_error() -> None:
    transport, seen = _answers(*(_503("1") for _ in range(10)))
    clock = FakeClock()
    slept: list[float] = []

    async def sleep(seconds: float) -> None:
        slept.append(seconds)
        clock.sleep(seconds)

    async def main() -> None:
        policy = RetryPolicy(uniform=highest, clock=clock)
        async with AsyncClient("http://api", "k", "http://gw", retry=policy, sleep=sleep, transport=transport) as c:
            with pytest.raises(ApiError) as raised:
                await c.predict("m", label="prod", deadline=3.5)
        assert raised.value.status == 503 and raised.value.retry_after == 1.0

    asyncio.run(main())
    assert slept == [1.0, 1.0, 1.0]
    assert seen == ["/models/m/labels/prod/model"] * 4


def test_management_calls_are_never_retried() -> None:
    transport, seen = _answers(_503("1"))
    with Client("http://api", "k", "http://gw", sleep=pytest.fail, transport=transport) as c, pytest.raises(ApiError):
        c.models()
    assert seen == ["/v1/models"]


def test_no_answer_at_all_is_retried_until_the_deadline_then_unreachable() -> None:
    clock = FakeClock()
    slept: list[float] = []

    def sleep(seconds: float) -> None:
        slept.append(seconds)
        clock.sleep(seconds)

    nowhere = f"http://127.0.0.1:{free_port()}"
    policy = RetryPolicy(deadline=1.0, base=0.1, uniform=highest, clock=clock)
    with (
        Client(nowhere, "k", nowhere, retry=policy, sleep=sleep) as c,
        pytest.raises(Unreachable, match="cannot reach"),
    ):
        c.predict("m")
    assert slept == pytest.approx([0.1, 0.2, 0.4])  # then 0.8 would pass the deadline
