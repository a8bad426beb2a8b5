"""Labels (e.g. `prod`) and promotion.

In routing mode **advanced**, `latest` and every label serve. Promoting moves a label to
another running version in one write of the model API's route record, so each gateway switches
in one step: a call sees either the old or the new version, never a mix. The version left
without `latest` or a label stops afterwards.
"""

from __future__ import annotations

from typing import Annotated

import asyncpg
import msgspec
import structlog
from aiohttp import web

from pier.events import StopModel, new_id
from pier.outbox import enqueue
from services.api import auth, routing, store
from services.api.channel import CHANNEL
from services.api.errors import Conflict, Invalid, NotFound
from services.api.http import Context, json_response, read_body

log = structlog.get_logger("api.labels")

Label = Annotated[str, msgspec.Meta(pattern=r"^[a-z0-9][a-z0-9-]{0,30}$")]
_LABEL = msgspec.json.Decoder(Label)


class Promote(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    version: Annotated[int, msgspec.Meta(ge=1)]


class LabelOut(msgspec.Struct, kw_only=True):
    label: str
    version: int
    promoted_by: str
    promoted_at: str


async def serving_versions(conn: asyncpg.Connection, model: asyncpg.Record) -> set[int]:
    """The versions that must keep running: `latest` and, in routing mode advanced, every label."""
    serving = {model["latest"]} - {None}
    if model["routing_mode"] == "advanced":
        serving |= {
            r["version"] for r in await conn.fetch("SELECT version FROM labels WHERE model_id = $1", model["id"])
        }
    return serving


async def retire(conn: asyncpg.Connection, model: asyncpg.Record, version: int, reason: str) -> None:
    """Stop `version` unless it still serves (in the caller's transaction, through the outbox)."""
    if version in await serving_versions(conn, model):
        return
    await conn.execute(
        "UPDATE versions SET state = 'retired' WHERE model_id = $1 AND number = $2 AND state = 'serving'",
        model["id"],
        version,
    )
    await enqueue(conn, StopModel(id=new_id(), model_id=model["id"], version=version, reason=reason), CHANNEL)


class Labels:
    def __init__(self, ctx: Context) -> None:
        self.pool = ctx.pool
        self.bus = ctx.bus

    def routes(self) -> list[web.RouteDef]:
        return [
            web.get("/v1/models/{ref}/labels", self.list),
            web.put("/v1/models/{ref}/labels/{label}", self.promote),
        ]

    async def list(self, request: web.Request) -> web.Response:
        async with self.pool.acquire() as conn:
            model = await store.resolve(conn, request.match_info["ref"])
            rows = await conn.fetch("SELECT * FROM labels WHERE model_id = $1 ORDER BY label", model["id"])
        return json_response(
            [
                LabelOut(
                    label=r["label"],
                    version=r["version"],
                    promoted_by=r["promoted_by"],
                    promoted_at=r["promoted_at"].isoformat(),
                )
                for r in rows
            ]
        )

    async def promote(self, request: web.Request) -> web.Response:
        try:
            label = _LABEL.decode(msgspec.json.encode(request.match_info["label"]))
        except msgspec.ValidationError:
            raise Invalid(
                "label: lower-case letters, digits and -, at most 31", [("label", "is not a valid label")]
            ) from None
        spec = await read_body(request, Promote)
        async with self.pool.acquire() as conn:
            async with conn.transaction():
                model = await store.resolve(conn, request.match_info["ref"], lock=True)
                if model["routing_mode"] != "advanced":
                    raise Conflict(
                        f"model API {model['name']!r} is in routing mode basic, where only `latest` serves:"
                        " change its routing mode to advanced to promote",
                        [("routing_mode", "is basic")],
                    )
                state = await conn.fetchval(
                    "SELECT state FROM versions WHERE model_id = $1 AND number = $2", model["id"], spec.version
                )
                if state is None:
                    raise NotFound(f"model API {model['name']!r} has no version {spec.version}")
                if spec.version not in await serving_versions(conn, model):
                    # Only a running version can take a label at once; a stopped one would fail calls.
                    raise Conflict(
                        f"version {spec.version} is {state}, not serving: only a serving version can be promoted",
                        [("version", f"is {state}")],
                    )
                previous = await conn.fetchval(
                    "SELECT version FROM labels WHERE model_id = $1 AND label = $2", model["id"], label
                )
                await conn.execute(
                    "INSERT INTO labels (model_id, label, version, promoted_by) VALUES ($1, $2, $3, $4)"
                    " ON CONFLICT (model_id, label) DO UPDATE SET version = $3, promoted_by = $4, promoted_at = now()",
                    model["id"],
                    label,
                    spec.version,
                    request[auth.USER],
                )
            # The switch is the route publish; the previous version stops only after it.
            await routing.publish(self.bus, conn, model["id"])
            if previous is not None and previous != spec.version:
                async with conn.transaction():
                    model = await store.resolve(conn, model["id"], lock=True)
                    await retire(conn, model, previous, f"label {label} moved to version {spec.version}")
        log.info("promoted", model_id=model["id"], label=label, version=spec.version)
        return json_response({"label": label, "version": spec.version})


def routes(ctx: Context) -> list[web.RouteDef]:
    return Labels(ctx).routes()
