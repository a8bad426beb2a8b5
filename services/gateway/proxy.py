"""Forwarding one request to one instance over a shared keep-alive connection pool.

Kept apart from routing so the transport can be swapped without touching the rest: the
gateway only sees `Proxy.forward` and the three ways it can fail.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import TracebackType

import aiohttp
import msgspec
from yarl import URL


class Reply(msgspec.Struct, frozen=True):
    status: int
    body: bytes
    content_type: str | None


class Unreachable(Exception):
    """The connection failed before anything was sent: another instance may safely take the request."""


class UpstreamTimeout(Exception):
    """No complete answer within the request timeout."""


class UpstreamFailed(Exception):
    """The instance broke the exchange after the request may have reached it."""


class Proxy:
    def __init__(self, keepalive_timeout: float = 15.0) -> None:
        # Fewer seconds than the harness's own keep-alive (75 s), so the gateway closes idle
        # connections first and never sends on one the instance is closing.
        self._keepalive_timeout = keepalive_timeout
        self._session: aiohttp.ClientSession | None = None

    async def __aenter__(self) -> Proxy:
        # No pool limit: how many requests an instance gets is the balancer's decision, not the pool's.
        connector = aiohttp.TCPConnector(limit=0, keepalive_timeout=self._keepalive_timeout)
        self._session = aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=None))
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._session is not None:
            await self._session.close()

    async def forward(
        self,
        method: str,
        address: str,
        path: str,
        query: str,
        body: bytes,
        headers: Mapping[str, str],
        timeout: float,
    ) -> Reply:
        assert self._session is not None, "use Proxy as an async context manager"
        url = URL(f"http://{address}{path}?{query}" if query else f"http://{address}{path}", encoded=True)
        try:
            async with self._session.request(
                method, url, data=body or None, headers=headers, timeout=aiohttp.ClientTimeout(total=timeout)
            ) as response:
                data = await response.read()
                return Reply(response.status, data, response.headers.get("Content-Type"))
        except aiohttp.ClientConnectorError as exc:
            raise Unreachable(str(exc)) from exc
        except TimeoutError as exc:
            raise UpstreamTimeout(f"no answer within {timeout:g} s") from exc
        except aiohttp.ClientError as exc:
            raise UpstreamFailed(f"{type(exc).__name__}: {exc}") from exc
