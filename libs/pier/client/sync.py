"""The blocking shell: sends each `Call` with httpx.Client, sleeps between a call's attempts."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from typing import Any

import httpx

from pier.client import answers as a
from pier.client.core import Call, SseParser, SyncShell, T, Waiter
from pier.client.retry import RetryPolicy
from pier.client.transport import NO_ANSWER, timeout, unreachable


class Client(SyncShell):
    """Pier's management API and model calls, blocking. Use as a context manager, or `close()`."""

    def __init__(
        self,
        api_url: str | None = None,
        token: str | None = None,
        gateway_url: str | None = None,
        retry: RetryPolicy | None = None,
        sleep: Callable[[float], None] = time.sleep,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        super().__init__(api_url, token, gateway_url, retry)
        self._sleep = sleep
        self._http = httpx.Client(transport=transport)

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    def _once(self, call: Call[T]) -> T:
        try:
            response = self._http.request(
                call.method,
                call.url,
                headers=call.headers,
                content=call.chunks() if call.progress else call.content,
                params=call.params,
                timeout=timeout(call),
            )
        except NO_ANSWER as exc:
            raise unreachable(call, exc) from None
        return call.finish(response.status_code, response.headers, response.content)

    def _send(self, call: Call[T]) -> T:
        if call.retry is None:
            return self._once(call)
        attempts = call.retry.start()
        while True:
            try:
                return self._once(call)
            except Exception as exc:
                wait = attempts.wait_after(exc)
                if wait is None:
                    raise
                self._sleep(wait)

    def _stream(self, call: Call[T]) -> Iterator[T]:
        parser = SseParser()
        try:
            with self._http.stream(
                call.method, call.url, headers=call.headers, params=call.params, timeout=timeout(call)
            ) as response:
                if response.status_code >= 400:
                    call.finish(response.status_code, response.headers, response.read())
                for line in response.iter_lines():
                    item = parser.line(line)
                    if item is not None:
                        yield item
        except NO_ANSWER as exc:
            raise unreachable(call, exc) from None

    def wait(
        self,
        ref: str,
        version: int,
        timeout: float = 600.0,
        on_change: Callable[[Any, Any], None] | None = None,
        on_poll: Callable[[Any, Any], None] | None = None,
    ) -> a.Model:
        """Poll until `version` serves, fails, or the model API settles in another state;
        `on_change(model, version)` is told each new state, `on_poll` each look."""
        waiter = Waiter(version, timeout, on_change, on_poll)
        while (settled := waiter.seen(self.model(ref))) is None:
            time.sleep(waiter.POLL)
        return settled
