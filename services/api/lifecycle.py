"""The model API lifecycle: turning user intent into commands, and other services' events into state.

Every change commits together with the messages it causes (transactional outbox), and every event
is applied at most once (inbox), so a crash anywhere repeats work at worst, never loses it.

States: building -> starting -> running; failed (only terminate is accepted); a new version of a
running model API builds and starts beside the serving one, which keeps `latest` until the new
one is ready (routing mode basic), then stops.
"""

from __future__ import annotations

import asyncpg
import msgspec
import structlog

from pier import events, outbox
from pier.artifacts import Store
from pier.bus import Bus
from pier.config import Settings
from pier.events import (
    AnyEvent,
    BuildFailed,
    BuildStarted,
    BuildSucceeded,
    InstanceReady,
    InstanceStarted,
    InstanceStopped,
    InstanceUnhealthy,
    Message,
    ModelPlaced,
    ModelStateChanged,
    ModelStopped,
    PlaceModel,
    StartBuild,
    StopModel,
)
from pier.spec import Entrypoint, SpecError, check_entrypoint
from services.api import routing
from services.api.errors import Conflict, Invalid
from services.api.schemas import CodeSpec, CreateModel, CreateVersion
from services.api.store import resolve

CHANNEL = "api_outbox"
log = structlog.get_logger("api")


def _entrypoint(spec: CodeSpec) -> Entrypoint:
    ep = Entrypoint(file=spec.file, function=spec.function, routes=spec.routes, health_function=spec.health_function)
    try:
        check_entrypoint(ep)
    except SpecError as exc:
        raise Invalid(str(exc), exc.errors) from None
    return ep


class Lifecycle:
    def __init__(self, pool: asyncpg.Pool, bus: Bus, settings: Settings) -> None:
        self.pool = pool
        self.bus = bus
        self.settings = settings
        self.store = Store(settings.artifacts)

    def _check_source(self, digest: str) -> None:
        if not self.store.source(digest).exists():
            raise Invalid(f"source: no uploaded source with digest {digest!r}", [("source", "was not uploaded")])

    async def _emit(self, conn: asyncpg.Connection, msg: Message) -> None:
        await outbox.enqueue(conn, msg, CHANNEL)

    async def _set_state(self, conn: asyncpg.Connection, model: asyncpg.Record, state: str, reason: str = "") -> None:
        if model["state"] == state and model["reason"] == reason:
            return
        await conn.execute(
            "UPDATE models SET state = $2, reason = $3, updated_at = now() WHERE id = $1", model["id"], state, reason
        )
        await self._emit(conn, ModelStateChanged(model_id=model["id"], name=model["name"], state=state, reason=reason))

    async def create_model(self, spec: CreateModel, actor: str) -> str:
        entrypoint = _entrypoint(spec)
        self._check_source(spec.source)
        model_id, version_id = events.new_id(), events.new_id()
        workers = spec.workers or self.settings.default_workers
        async with self.pool.acquire() as conn, conn.transaction():
            try:
                await conn.execute(
                    "INSERT INTO models (id, name, owner, state, access, instances, workers, request_timeout, target)"
                    " VALUES ($1, $2, $3, 'building', $4, $5, $6, $7, 1)",
                    model_id,
                    spec.name,
                    actor,
                    spec.access,
                    spec.instances,
                    workers,
                    spec.request_timeout,
                )
            except asyncpg.UniqueViolationError:
                raise Conflict(
                    f"name: a model API named {spec.name!r} exists; deploy a new version to it or pick another name",
                    [("name", "is taken")],
                ) from None
            await self._add_version(conn, model_id, 1, version_id, spec.source, entrypoint, actor)
        await self._publish_route(model_id)
        return model_id

    async def create_version(self, ref: str, spec: CreateVersion, actor: str) -> int:
        entrypoint = _entrypoint(spec)
        self._check_source(spec.source)
        async with self.pool.acquire() as conn, conn.transaction():
            model = await resolve(conn, ref, lock=True)
            if model["state"] in ("failed", "terminated"):
                raise Conflict(f"model API {model['name']!r} is {model['state']}: only terminate is accepted")
            number = await conn.fetchval(
                "SELECT coalesce(max(number), 0) + 1 FROM versions WHERE model_id = $1", model["id"]
            )
            await conn.execute("UPDATE models SET target = $2, updated_at = now() WHERE id = $1", model["id"], number)
            await self._add_version(conn, model["id"], number, events.new_id(), spec.source, entrypoint, actor)
            if model["latest"] is None:
                await self._set_state(conn, model, "building")
        return int(number)

    async def _add_version(
        self,
        conn: asyncpg.Connection,
        model_id: str,
        number: int,
        version_id: str,
        source: str,
        entrypoint: Entrypoint,
        actor: str,
    ) -> None:
        await conn.execute(
            "INSERT INTO versions (model_id, number, id, source, entrypoint, state, created_by)"
            " VALUES ($1, $2, $3, $4, $5, 'queued', $6)",
            model_id,
            number,
            version_id,
            source,
            msgspec.json.encode(entrypoint).decode(),
            actor,
        )
        await self._emit(
            conn, StartBuild(model_id=model_id, version=number, source=source, entrypoint=entrypoint, actor=actor)
        )

    async def _publish_route(self, model_id: str) -> None:
        async with self.pool.acquire() as conn:
            await routing.publish(self.bus, conn, model_id)

    # ---- folding events -------------------------------------------------------------------------

    async def handle(self, event: AnyEvent) -> None:
        model_id = getattr(event, "model_id", None)
        if model_id is None or isinstance(event, ModelStateChanged):
            return
        async with self.pool.acquire() as conn, conn.transaction():
            if not await outbox.first_time(conn, event.id):
                return
            model = await conn.fetchrow("SELECT * FROM models WHERE id = $1 FOR UPDATE", model_id)
            if model is None:
                return
            await self._apply(conn, model, event)
        await self._publish_route(model_id)

    async def _apply(self, conn: asyncpg.Connection, model: asyncpg.Record, event: AnyEvent) -> None:
        mid = model["id"]
        match event:
            case BuildStarted(version=v):
                await conn.execute("UPDATE versions SET state = 'building' WHERE model_id = $1 AND number = $2", mid, v)
            case BuildSucceeded(version=v, image=image, packages=packages):
                await conn.execute(
                    "UPDATE versions SET state = 'built', image = $3, packages = $4"
                    " WHERE model_id = $1 AND number = $2",
                    mid,
                    v,
                    image,
                    msgspec.json.encode(packages).decode(),
                )
                if model["target"] == v and model["state"] not in ("stopping", "stopped", "failed", "terminated"):
                    await self._place(conn, model, v, event)
            case BuildFailed(version=v, reason=reason):
                await self._version_failed(conn, model, v, f"build of version {v} failed: {reason}")
            case ModelPlaced(version=v):
                await conn.execute(
                    "UPDATE versions SET state = 'starting' WHERE model_id = $1 AND number = $2 AND state = 'built'",
                    mid,
                    v,
                )
            case InstanceStarted(version=v, instance_id=iid, address=address):
                await conn.execute(
                    "INSERT INTO instances (instance_id, model_id, version, state, address)"
                    " VALUES ($1, $2, $3, 'starting', $4) ON CONFLICT (instance_id) DO UPDATE"
                    " SET state = 'starting', address = $4, reason = '', updated_at = now()",
                    iid,
                    mid,
                    v,
                    address,
                )
            case InstanceReady(version=v, instance_id=iid):
                await conn.execute(
                    "UPDATE instances SET state = 'ready', reason = '', updated_at = now() WHERE instance_id = $1", iid
                )
                await self._version_ready(conn, model, v)
            case InstanceUnhealthy(instance_id=iid, reason=reason):
                await conn.execute(
                    "UPDATE instances SET state = 'unhealthy', reason = $2, updated_at = now() WHERE instance_id = $1",
                    iid,
                    reason,
                )
            case InstanceStopped(version=v, instance_id=iid, reason=reason):
                await conn.execute(
                    "UPDATE instances SET state = 'stopped', reason = $2, updated_at = now() WHERE instance_id = $1",
                    iid,
                    reason,
                )
                version_state = await conn.fetchval(
                    "SELECT state FROM versions WHERE model_id = $1 AND number = $2", mid, v
                )
                if reason.startswith("exited") and version_state in ("built", "starting"):
                    await self._version_failed(conn, model, v, f"version {v} did not start: {reason}")
                    await self._emit(
                        conn, StopModel(id=event.derived_id("stop"), model_id=mid, version=v, reason=reason)
                    )
            case ModelStopped(version=None):
                if model["state"] == "stopping":
                    await self._set_state(conn, model, "stopped")

    async def _place(self, conn: asyncpg.Connection, model: asyncpg.Record, version: int, cause: Message) -> None:
        row = await conn.fetchrow("SELECT * FROM versions WHERE model_id = $1 AND number = $2", model["id"], version)
        await self._emit(
            conn,
            PlaceModel(
                id=cause.derived_id("place"),
                model_id=model["id"],
                version=version,
                version_id=row["id"],
                image=row["image"],
                entrypoint=msgspec.json.decode(row["entrypoint"], type=Entrypoint),
                instances=model["instances"],
                workers=model["workers"],
                gpu_type=model["gpu_type"],
                gpu_count=model["gpu_count"],
                request_timeout=model["request_timeout"],
            ),
        )
        if model["latest"] is None:
            await self._set_state(conn, model, "starting")

    async def _version_ready(self, conn: asyncpg.Connection, model: asyncpg.Record, version: int) -> None:
        """The first ready instance of the target version takes `latest`; the version it replaces stops."""
        if model["target"] != version:
            return
        old = model["latest"]
        if old != version:
            await conn.execute("UPDATE models SET latest = $2, updated_at = now() WHERE id = $1", model["id"], version)
            await conn.execute(
                "UPDATE versions SET state = 'serving' WHERE model_id = $1 AND number = $2", model["id"], version
            )
            if old is not None:
                await conn.execute(
                    "UPDATE versions SET state = 'retired' WHERE model_id = $1 AND number = $2", model["id"], old
                )
                await self._emit(
                    conn,
                    StopModel(
                        id=events.new_id(), model_id=model["id"], version=old, reason=f"replaced by version {version}"
                    ),
                )
        if model["state"] in ("starting", "building", "running"):
            await self._set_state(conn, model, "running")

    async def _version_failed(self, conn: asyncpg.Connection, model: asyncpg.Record, version: int, reason: str) -> None:
        await conn.execute(
            "UPDATE versions SET state = 'failed', reason = $3 WHERE model_id = $1 AND number = $2",
            model["id"],
            version,
            reason,
        )
        if model["target"] != version:
            return
        if model["latest"] is None:
            await self._set_state(conn, model, "failed", reason)
        else:
            # The serving version keeps serving; the failure is shown on the model API.
            await conn.execute(
                "UPDATE models SET target = latest, reason = $2, updated_at = now() WHERE id = $1", model["id"], reason
            )
