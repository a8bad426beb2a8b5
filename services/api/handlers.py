"""HTTP handlers of the management API (`/v1`). Handlers raise domain errors; the middleware maps them."""

from __future__ import annotations

import msgspec
from aiohttp import web

from pier.artifacts import Store
from services.api import access, auth, model_states, openapi, store
from services.api.http import Context, json_response, read_body
from services.api.schemas import CreateModel, CreateVersion


class Handlers:
    def __init__(self, ctx: Context) -> None:
        self.pool = ctx.pool
        self.lifecycle = ctx.lifecycle
        self.settings = ctx.settings
        self.store = Store(ctx.settings.artifacts)

    def routes(self) -> list[web.RouteDef]:
        return [
            web.get("/v1/health", self.health),
            web.get("/v1/openapi.json", self.openapi),
            web.get("/v1/models", self.list_models),
            web.post("/v1/models", self.create_model),
            web.get("/v1/models/{ref}", self.show_model),
            web.get("/v1/models/{ref}/versions", self.list_versions),
            web.post("/v1/models/{ref}/versions", self.create_version),
        ]

    async def health(self, _: web.Request) -> web.Response:
        return json_response({"status": "ok"})

    async def openapi(self, request: web.Request) -> web.Response:
        """This document"""
        return json_response(openapi.document(request.app.router))

    async def list_models(self, request: web.Request) -> web.StreamResponse:
        """The model APIs the caller may see; `follow=true`: live, as server-sent events"""
        if request.query.get("follow", "").lower() in ("true", "1"):
            return await model_states.follow(request, self.pool, self.settings.gateway_url)
        async with self.pool.acquire() as conn:
            rows = await access.visible_models(conn, request[auth.USER], request[auth.ADMIN])
            return json_response([await store.model_out(conn, r, self.settings.gateway_url) for r in rows])

    async def show_model(self, request: web.Request) -> web.Response:
        async with self.pool.acquire() as conn:
            row = await store.resolve(conn, request.match_info["ref"])
            out = await store.model_out(conn, row, self.settings.gateway_url)
        return json_response(msgspec.structs.replace(out, role=request[auth.ROLE].label))

    async def create_model(self, request: web.Request) -> web.Response:
        spec = await read_body(request, CreateModel)
        model_id = await self.lifecycle.create_model(spec, request[auth.USER])
        async with self.pool.acquire() as conn:
            row = await store.resolve(conn, model_id)
            return json_response(await store.model_out(conn, row, self.settings.gateway_url), status=201)

    async def list_versions(self, request: web.Request) -> web.Response:
        async with self.pool.acquire() as conn:
            row = await store.resolve(conn, request.match_info["ref"])
            return json_response((await store.model_out(conn, row, self.settings.gateway_url)).versions)

    async def create_version(self, request: web.Request) -> web.Response:
        spec = await read_body(request, CreateVersion)
        number = await self.lifecycle.create_version(request.match_info["ref"], spec, request[auth.USER])
        return json_response({"number": number}, status=201)


def routes(ctx: Context) -> list[web.RouteDef]:
    return Handlers(ctx).routes()
