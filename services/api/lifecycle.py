"""The model API lifecycle: turning user intent into commands, and other services' events into state.

Every change commits together with the messages it causes (transactional outbox), and every event
is applied at most once (inbox), so a crash anywhere repeats work at worst, never loses it.

States: building -> [waiting (queued for GPUs, not billed)] -> starting -> running -> stopping ->
stopped -> (restart) starting ...; failed (only terminate is accepted); terminated (name free again;
see services/api/control.py). A new version of a running model API builds and starts beside the
serving one, which keeps `latest` until the new one is ready (routing mode basic), then stops.
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
    ModelFailed,
    ModelPlaced,
    ModelStateChanged,
    ModelStopped,
    ModelWaiting,
    PlacementRejected,
    PlaceModel,
    ScheduleRunFailed,
    ScheduleRunSucceeded,
    StartBuild,
    StopModel,
    UsageRecorded,
)
from pier.spec import Entrypoint, SpecError, check_entrypoint
from services.api import gpus, labels, routing, schedules, sources, volumes
from services.api import settings as model_settings
from services.api.channel import CHANNEL
from services.api.errors import Conflict, Invalid
from services.api.schemas import CodeSpec, CreateModel, CreateVersion
from services.api.sources import CodeOrigin
from services.api.store import resolve

__all__ = ["CHANNEL", "Lifecycle"]  # CHANNEL re-exported for the modules that take it from here
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

    async def _origin(self, spec: CodeSpec) -> CodeOrigin:
        async with self.pool.acquire() as conn:
            return await sources.resolve(conn, self.store, spec, self.settings)

    async def emit(self, conn: asyncpg.Connection, msg: Message) -> None:
        await outbox.enqueue(conn, msg, CHANNEL)

    async def set_state(self, conn: asyncpg.Connection, model: asyncpg.Record, state: str, reason: str = "") -> None:
        if model["state"] == state and model["reason"] == reason:
            return
        await conn.execute(
            "UPDATE models SET state = $2, reason = $3, updated_at = now() WHERE id = $1", model["id"], state, reason
        )
        await self.emit(conn, ModelStateChanged(model_id=model["id"], name=model["name"], state=state, reason=reason))

    async def create_model(self, spec: CreateModel, actor: str) -> str:
        entrypoint = _entrypoint(spec)
        origin = await self._origin(spec)
        model_id, version_id = events.new_id(), events.new_id()
        workers = spec.workers or self.settings.default_workers

        resources = await gpus.check(
            self.bus, self.settings, spec.gpu_type, spec.gpu_count, spec.instances, spec.quota, spec.disk_size
        )
        await volumes.check(self.bus, self.settings, spec.volumes)
        async with self.pool.acquire() as conn, conn.transaction():
            try:
                await conn.execute(
                    "INSERT INTO models (id, name, owner, state, access, instances, workers, request_timeout, target,"
                    " routing_mode, visibility) VALUES ($1, $2, $3, 'building', $4, $5, $6, $7, 1, $8, $9)",
                    model_id,
                    spec.name,
                    actor,
                    spec.access,
                    spec.instances,
                    workers,
                    spec.request_timeout,
                    spec.routing_mode,
                    spec.visibility,
                )
            except asyncpg.UniqueViolationError:
                raise Conflict(
                    f"name: a model API named {spec.name!r} exists; deploy a new version to it or pick another name",
                    [("name", "is taken")],
                ) from None
            await gpus.store_resources(conn, model_id, resources)
            await volumes.store(conn, model_id, spec.volumes)
            await self._add_version(conn, model_id, 1, version_id, origin, entrypoint, actor)
            await model_settings.store_initial(conn, model_id, spec)
        await self.publish_route(model_id)
        return model_id

    async def create_version(self, ref: str, spec: CreateVersion, actor: str) -> int:
        entrypoint = _entrypoint(spec)
        origin = await self._origin(spec)
        async with self.pool.acquire() as conn, conn.transaction():
            model = await resolve(conn, ref, lock=True)
            if model["state"] in ("failed", "terminated"):
                raise Conflict(f"model API {model['name']!r} is {model['state']}: only terminate is accepted")
            number = await self.add_version(conn, model, origin, entrypoint, actor)
            if model["latest"] is None:
                await self.set_state(conn, model, "building")
        return number

    async def add_version(
        self,
        conn: asyncpg.Connection,
        model: asyncpg.Record,
        origin: CodeOrigin,
        entrypoint: Entrypoint,
        actor: str,
        version_id: str | None = None,
    ) -> int:
        """A new version of `model` from `origin`'s code, made the target and queued to build, in the
        caller's transaction (which should hold the model row locked); returns its number.
        `version_id` lets a redelivered cause make the same version id."""
        number = int(
            await conn.fetchval("SELECT coalesce(max(number), 0) + 1 FROM versions WHERE model_id = $1", model["id"])
        )
        await conn.execute("UPDATE models SET target = $2, updated_at = now() WHERE id = $1", model["id"], number)
        await self._add_version(conn, model["id"], number, version_id or events.new_id(), origin, entrypoint, actor)
        return number

    async def _add_version(
        self,
        conn: asyncpg.Connection,
        model_id: str,
        number: int,
        version_id: str,
        origin: CodeOrigin,
        entrypoint: Entrypoint,
        actor: str,
    ) -> None:
        git, env = origin.git, origin.environment
        await conn.execute(
            "INSERT INTO versions (model_id, number, id, source, entrypoint, state, created_by, source_name,"
            " git_url, git_ref, git_credential, environment, python_version)"
            " VALUES ($1, $2, $3, $4, $5, 'queued', $6, $7, $8, $9, $10, $11, $12)",
            model_id,
            number,
            version_id,
            origin.source,
            msgspec.json.encode(entrypoint).decode(),
            actor,
            origin.source_name,
            git.url if git else None,
            git.ref if git else None,
            git.credential if git else None,
            (env.name or None) if env else None,
            env.python if env else None,
        )
        await self.emit(
            conn,
            StartBuild(
                model_id=model_id,
                version=number,
                source=origin.source,
                entrypoint=entrypoint,
                actor=actor,
                git=git,
                environment=env,
            ),
        )

    async def publish_route(self, model_id: str) -> None:
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
            # Published before the commit: once a reader sees the model API running, the gateway's
            # route bucket already says which version serves (a client may call at once).
            await routing.publish(self.bus, conn, model_id)

    async def _apply(self, conn: asyncpg.Connection, model: asyncpg.Record, event: AnyEvent) -> None:
        mid = model["id"]
        match event:
            case BuildStarted(version=v):
                await conn.execute("UPDATE versions SET state = 'building' WHERE model_id = $1 AND number = $2", mid, v)
            case BuildSucceeded(version=v, image=image, packages=packages):
                # A git version learns its source digest and commit only once the builder fetched it.
                await conn.execute(
                    "UPDATE versions SET state = 'built', image = $3, packages = $4,"
                    " source = CASE WHEN source = '' THEN $5 ELSE source END, commit = $6, env_hash = $7"
                    " WHERE model_id = $1 AND number = $2",
                    mid,
                    v,
                    image,
                    msgspec.json.encode(packages).decode(),
                    event.source,
                    event.commit,
                    event.env_hash or None,
                )
                if model["target"] == v and model["state"] not in ("stopping", "stopped", "failed", "terminated"):
                    await self.place(conn, model, v, event)
            case BuildFailed(version=v, reason=reason):
                await self._version_failed(conn, model, v, f"build of version {v} failed: {reason}")
            case ModelPlaced(version=v):
                await conn.execute(
                    "UPDATE versions SET state = 'starting' WHERE model_id = $1 AND number = $2 AND state = 'built'",
                    mid,
                    v,
                )
                if model["state"] == "waiting":
                    await conn.execute("UPDATE models SET queue_position = NULL WHERE id = $1", mid)
                    await self.set_state(conn, model, "starting")
            case ModelWaiting(version=v, position=position, reason=reason):
                # Only the version being started waits visibly; a serving one keeps the model API running.
                if model["target"] == v and model["state"] in ("building", "starting", "waiting"):
                    await conn.execute("UPDATE models SET queue_position = $2 WHERE id = $1", mid, position)
                    await self.set_state(conn, model, "waiting", reason)
            case PlacementRejected(version=v, reason=reason):
                await self._version_failed(conn, model, v, f"version {v} cannot be placed: {reason}")
            case UsageRecorded():
                await conn.execute(
                    "INSERT INTO usage (event_id, model_id, version, instance_id, started_at, ended_at, gpu_count,"
                    " instance_seconds, gpu_seconds) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
                    event.id,
                    mid,
                    event.version,
                    event.instance_id,
                    event.started_at,
                    event.ended_at,
                    event.gpu_count,
                    event.instance_seconds,
                    event.gpu_seconds,
                )
                await conn.execute(
                    "DELETE FROM usage_open WHERE instance_id = $1 AND started_at <= $2",
                    event.instance_id,
                    event.ended_at,
                )
            case InstanceStarted(version=v, instance_id=iid, address=address):
                await conn.execute(
                    "INSERT INTO instances (instance_id, model_id, version, state, address, isolated)"
                    " VALUES ($1, $2, $3, 'starting', $4, $5) ON CONFLICT (instance_id) DO UPDATE"
                    " SET state = 'starting', address = $4, isolated = $5, reason = '', updated_at = now()",
                    iid,
                    mid,
                    v,
                    address,
                    event.isolated,
                )
                # Metered from now until its UsageRecorded (GET /v1/models/{ref}/usage counts it meanwhile).
                await conn.execute(
                    "INSERT INTO usage_open (instance_id, model_id, gpu_count, started_at) VALUES ($1, $2, $3, $4)"
                    " ON CONFLICT (instance_id) DO UPDATE SET started_at = greatest(usage_open.started_at, $4),"
                    " gpu_count = $3",
                    iid,
                    mid,
                    len(event.gpu_devices),
                    event.at,
                )
            case InstanceReady(version=v, instance_id=iid):
                await conn.execute(
                    "UPDATE instances SET state = 'ready', reason = '', updated_at = now() WHERE instance_id = $1", iid
                )
                await self._version_ready(conn, model, v)
                await model_settings.advance(conn, mid, iid, self.emit)
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
                    await self.emit(
                        conn, StopModel(id=event.derived_id("stop"), model_id=mid, version=v, reason=reason)
                    )
                if not reason.startswith("restarting"):
                    # A settings rollout moves on when the instance it waits for is gone.
                    await model_settings.advance(conn, mid, iid, self.emit)
            case ModelFailed(instance_id=iid, reason=reason):
                # Restarting more would only crash again: stop every instance and say why.
                if model["state"] not in ("failed", "stopped", "terminated"):
                    await self.set_state(conn, model, "failed", f"instance {iid} {reason}")
                    await self.emit(conn, StopModel(id=event.derived_id("stop"), model_id=mid, reason=reason))
            case ScheduleRunSucceeded() | ScheduleRunFailed():
                await schedules.run_finished(self, conn, model, event)
            case ModelStopped(version=None):
                if model["state"] == "stopping":
                    await conn.execute("UPDATE models SET stopped_at = now() WHERE id = $1", mid)
                    await self.set_state(conn, model, "stopped")

    async def place(self, conn: asyncpg.Connection, model: asyncpg.Record, version: int, cause: Message) -> None:
        row = await conn.fetchrow("SELECT * FROM versions WHERE model_id = $1 AND number = $2", model["id"], version)
        await self.emit(
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
                quota=model["quota"] or "",
                cpu=model["cpu"],
                memory=model["memory"],
                disk_size=model["disk_size"],
                health=model_settings.stored_policy(model),
                volumes=volumes.stored(model),
            ),
        )
        if model["latest"] is None:
            await self.set_state(conn, model, "starting")

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
            if old is not None and model["routing_mode"] == "advanced":
                # In routing mode advanced a labelled version (e.g. prod) keeps serving.
                # (Imported here: labels imports the api's http module, which imports this one.)

                updated = await conn.fetchrow("SELECT * FROM models WHERE id = $1", model["id"])
                await labels.retire(conn, updated, old, f"replaced by version {version}")
            elif old is not None:
                await conn.execute(
                    "UPDATE versions SET state = 'retired' WHERE model_id = $1 AND number = $2", model["id"], old
                )
                await self.emit(
                    conn,
                    StopModel(
                        id=events.new_id(), model_id=model["id"], version=old, reason=f"replaced by version {version}"
                    ),
                )
        if model["state"] in ("starting", "building", "running", "waiting"):
            await self.set_state(conn, model, "running")

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
            await self.set_state(conn, model, "failed", reason)
        else:
            # The serving version keeps serving; the failure is shown on the model API.
            await conn.execute(
                "UPDATE models SET target = latest, reason = $2, updated_at = now() WHERE id = $1", model["id"], reason
            )
