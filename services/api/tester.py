"""`POST /v1/models/{ref}/try`: the dashboard's tester calls a model API through the gateway.

The gateway is another origin than the dashboard, and a call needs an access token the page holds:
rather than open the gateway to cross-origin calls (CORS on the data plane, for every model API),
the api makes the call for the page, to its own gateway only, and answers what came back (status,
time, headers, body) as it came back, 400s and 503s with Retry-After included. The token travels
in the request body and in the forwarded Authorization header only: it is never logged or stored.
"""

from __future__ import annotations

import re
import time
from typing import Annotated, Literal

import aiohttp
import msgspec
from aiohttp import web

from services.api import store
from services.api.errors import Invalid, Problem
from services.api.http import Context, json_response, read_body

# A route path or `model` (the Domino endpoint): segments of URL-safe characters, never `..`.
_PATH = re.compile(r"^(?!.*(?:^|/)\.\.?(?:/|$))[A-Za-z0-9._~\-/{}]*$")
_LABEL = re.compile(r"^[a-z0-9][a-z0-9-]{0,62}$")
_HOP = frozenset({"connection", "keep-alive", "transfer-encoding", "content-length", "content-encoding"})


class GatewayUnreachable(Problem):
    status, title = 502, "Bad Gateway"


class TryCall(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    path: Annotated[str, msgspec.Meta(max_length=512, description="a route's path, or `model`")] = "model"
    method: Literal["GET", "POST", "PUT", "PATCH", "DELETE"] = "POST"
    label: Annotated[str, msgspec.Meta(description="`latest`, or a label such as `prod`")] = "latest"
    # The JSON sent as is; null (or left out): no body.
    body: msgspec.Raw = msgspec.field(default_factory=lambda: msgspec.Raw(b"null"))
    token: Annotated[str, msgspec.Meta(max_length=512)] | None = None


class TryAnswer(msgspec.Struct, kw_only=True):
    status: int
    time_ms: float
    headers: dict[str, str]
    body: str


class Tester:
    def __init__(self, ctx: Context) -> None:
        self.pool = ctx.pool
        self.gateway_url = ctx.settings.gateway_url

    def routes(self) -> list[web.RouteDef]:
        return [web.post("/v1/models/{ref}/try", self.call)]

    async def call(self, request: web.Request) -> web.Response:
        """Call the model API through the gateway, as a client would, and answer what came back"""
        spec = await read_body(request, TryCall)
        path = spec.path.strip("/")
        if not _PATH.match(path):
            raise Invalid("path: must be a route's path (letters, digits, . _ ~ - /)", [("path", "is not a path")])
        if not _LABEL.match(spec.label):
            raise Invalid("label: must be latest or a label's name", [("label", "is not a label")])
        async with self.pool.acquire() as conn:
            model = await store.resolve(conn, request.match_info["ref"])
        where = "latest" if spec.label == "latest" else f"labels/{spec.label}"
        url = f"{self.gateway_url}/models/{model['id']}/{where}/{path}"
        headers = {"Content-Type": "application/json"}
        if spec.token:
            headers["Authorization"] = f"Bearer {spec.token}"
        timeout = aiohttp.ClientTimeout(total=float(model["request_timeout"]) + 10)
        started = time.perf_counter()
        try:
            async with (
                aiohttp.ClientSession(timeout=timeout) as session,
                session.request(
                    spec.method, url, data=None if bytes(spec.body) == b"null" else bytes(spec.body), headers=headers
                ) as answer,
            ):
                text = await answer.text(errors="replace")
                kept = {k: v for k, v in answer.headers.items() if k.lower() not in _HOP}
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise GatewayUnreachable(f"the gateway at {self.gateway_url} did not answer: {exc!r}") from None
        elapsed = (time.perf_counter() - started) * 1000
        return json_response(TryAnswer(status=answer.status, time_ms=round(elapsed, 1), headers=kept, body=text))


def routes(ctx: Context) -> list[web.RouteDef]:
    return Tester(ctx).routes()
