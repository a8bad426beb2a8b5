"""The asyncio shell: sends each `Call` with httpx.AsyncClient, awaits between a call's attempts."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import Any

import httpx

from pier.client import answers as a
from pier.client.core import AsyncShell, Call, SseParser, T, Waiter
from pier.client.retry import RetryPolicy
from pier.client.transport import NO_ANSWER, timeout, unreachable


async def _async(chunks: Iterator[bytes]) -> AsyncIterator[bytes]:
    for chunk in chunks:  # httpx.AsyncClient takes an async stream only
        yield chunk


class AsyncClient(AsyncShell):
    """The same operations as `Client`, each awaited: `await client.model("x")`. Use as an async
    context manager, or `await aclose()`."""

    def __init__(
        self,
        api_url: str | None = None,
        token: str | None = None,
        gateway_url: str | None = None,
        retry: RetryPolicy | None = None,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        super().__init__(api_url, token, gateway_url, retry)
        self._sleep = sleep
        self._http = httpx.AsyncClient(transport=transport)

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._http.aclose()

    async def _once(self, call: Call[T]) -> T:
        try:
            response = await self._http.request(
                call.method,
                call.url,
                headers=call.headers,
                content=_async(call.chunks()) if call.progress else call.content,
                params=call.params,
                timeout=timeout(call),
            )
        except NO_ANSWER as exc:
            raise unreachable(call, exc) from None
        return call.finish(response.status_code, response.headers, response.content)

    async def _send(self, call: Call[T]) -> T:
        if call.retry is None:
            return await self._once(call)
        attempts = call.retry.start()
        while True:
            try:
                return await self._once(call)
            except Exception as exc:
                wait = attempts.wait_after(exc)
                if wait is None:
                    raise
                await self._sleep(wait)

    async def _stream(self, call: Call[T]) -> AsyncIterator[T]:
        parser = SseParser()
        try:
            async with self._http.stream(
                call.method, call.url, headers=call.headers, params=call.params, timeout=timeout(call)
            ) as response:
                if response.status_code >= 400:
                    call.finish(response.status_code, response.headers, await response.aread())
                async for line in response.aiter_lines():
                    item = parser.line(line)
                    if item is not None:
                        yield item
        except NO_ANSWER as exc:
            raise unreachable(call, exc) from None

    async def wait(
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
        while True:  # polled: the api has no push for a version's state to a client
            settled = waiter.seen(await self.model(ref))
            if settled is not None:
                return settled
            await asyncio.sleep(waiter.POLL)
