"""Reading model APIs, versions and instances from PostgreSQL."""

from __future__ import annotations

import asyncpg
import msgspec

from pier import volumes
from pier.spec import Entrypoint
from services.api.errors import NotFound
from services.api.schemas import InstanceOut, ModelOut, VersionOut


async def resolve(conn: asyncpg.Connection, ref: str, *, lock: bool = False) -> asyncpg.Record:
    """A model API by id or name; NotFound names what was asked for."""
    suffix = " FOR UPDATE" if lock else ""
    # A terminated model API is gone for its users, and its name may be someone else's now.
    row = await conn.fetchrow(
        f"SELECT * FROM models WHERE (id = $1 OR name = $1) AND state <> 'terminated'{suffix}", ref
    )
    if row is None:
        raise not_found(ref)
    return row


def not_found(ref: str) -> NotFound:
    return NotFound(f"no model API with id or name {ref!r}")


def _version(row: asyncpg.Record) -> VersionOut:
    return VersionOut(
        number=row["number"],
        id=row["id"],
        source=row["source"],
        state=row["state"],
        reason=row["reason"],
        image=row["image"],
        packages=msgspec.json.decode(row["packages"]),
        entrypoint=msgspec.json.decode(row["entrypoint"], type=Entrypoint),
        created_by=row["created_by"],
        created_at=row["created_at"].isoformat(),
        source_name=row["source_name"],
        git=row["git_url"],
        ref=row["git_ref"],
        commit=row["commit"],
        environment=row["environment"],
        python_version=row["python_version"],
    )


async def model_out(conn: asyncpg.Connection, row: asyncpg.Record, gateway_url: str) -> ModelOut:
    versions = await conn.fetch("SELECT * FROM versions WHERE model_id = $1 ORDER BY number DESC", row["id"])
    instances = await conn.fetch(
        "SELECT * FROM instances WHERE model_id = $1 AND state <> 'stopped' ORDER BY instance_id", row["id"]
    )
    labels = await conn.fetch("SELECT label, version FROM labels WHERE model_id = $1 ORDER BY label", row["id"])
    return ModelOut(
        id=row["id"],
        name=row["name"],
        owner=row["owner"],
        state=row["state"],
        reason=row["reason"],
        access=row["access"],
        routing_mode=row["routing_mode"],
        visibility=row["visibility"],
        instances=row["instances"],
        gpu_type=row["gpu_type"],
        gpu_count=row["gpu_count"],
        quota=row["quota"],
        cpu=row["cpu"],
        memory=row["memory"],
        disk_size=row["disk_size"],
        volumes=volumes.from_json(row["volumes"]),
        queue_position=row["queue_position"] if row["state"] == "waiting" else None,
        workers=row["workers"],
        request_timeout=row["request_timeout"],
        latest=row["latest"],
        target=row["target"],
        labels={r["label"]: r["version"] for r in labels},
        url=f"{gateway_url}/models/{row['id']}/latest/model",
        created_at=row["created_at"].isoformat(),
        updated_at=row["updated_at"].isoformat(),
        versions=[_version(v) for v in versions],
        running_instances=[
            InstanceOut(
                instance_id=i["instance_id"],
                version=i["version"],
                state=i["state"],
                address=i["address"],
                reason=i["reason"],
                isolated=i["isolated"],
            )
            for i in instances
        ],
    )
