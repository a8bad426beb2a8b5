"""The harness in-process, its requests handed straight to `Harness.handle` (no sockets), with one
function that keeps the arguments it was called with, as Python objects."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import msgspec

from pier.harness.server import Harness
from pier.http.server import Request
from pier.spec import Entrypoint, Route


def same(a: Any, b: Any) -> bool:
    """Equal and of the same Python types all the way down (1, 1.0 and True are not the same)."""
    if type(a) is not type(b):
        return False
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    if isinstance(a, list):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b, strict=True))
    return bool(a == b)


class Captured:
    """Every call of `keep`: (args, kwargs) as the function received them."""

    def __init__(self) -> None:
        self.calls: list[tuple[tuple[Any, ...], dict[str, Any]]] = []

    def keep(self, *args: Any, **kwargs: Any) -> str:
        self.calls.append((args, kwargs))
        return "kept"

    def get(self, file: str, name: str) -> Any:  # what Harness asks of its Functions
        return self.keep


class Answer(msgspec.Struct):
    status: int
    body: Any


class Calls:
    def __init__(self, harness: Harness, captured: Captured, loop: asyncio.AbstractEventLoop) -> None:
        self.harness, self.captured, self.loop = harness, captured, loop

    def route(self, route: Route) -> None:
        """Serve `route` (replacing any route on the same path) from now on."""
        self.harness.routes[route.path] = {route.verb: self.harness.route_handler(route)}

    def call(self, method: str, path: str, body: bytes = b"", query: str = "") -> Answer:
        self.captured.calls.clear()
        request = Request(method, path, query, {"content-type": "application/json"}, body)
        response = self.loop.run_until_complete(self.harness.handle(request))
        return Answer(response.status, msgspec.json.decode(response.body))


@contextmanager
def harness() -> Iterator[Calls]:
    captured = Captured()
    loop = asyncio.new_event_loop()
    entrypoint = Entrypoint(file="predict.py", function="keep")
    try:
        yield Calls(Harness(captured, entrypoint, 1, 10.0, "v-id", 1), captured, loop)  # type: ignore[arg-type]
    finally:
        loop.close()
