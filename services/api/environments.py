"""Compute environments: named bases (a Python version and packages) an admin defines, which a
model API may pick with `environment`; the user's requirements.txt is layered on top at build time.

A version records the environment's name, and its StartBuild carries the definition as it was
then, so redefining an environment reaches a model API only through a new version.
"""

from __future__ import annotations

import re
from typing import Annotated

import asyncpg
import msgspec
from aiohttp import web
from packaging.requirements import InvalidRequirement, Requirement

from pier.events import BaseEnvironment
from services.api import auth
from services.api.errors import Invalid
from services.api.http import Context, json_response, read_body
from services.api.schemas import Name

PYTHON_RE = re.compile(r"^3\.\d{1,2}(\.\d{1,2})?$")
PythonVersion = Annotated[str, msgspec.Meta(pattern=PYTHON_RE.pattern, description="e.g. 3.11 or 3.11.9")]


class CreateEnvironment(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    name: Name
    python_version: PythonVersion | None = None
    packages: list[str] = msgspec.field(default_factory=list)
    description: str = ""


class EnvironmentOut(msgspec.Struct, kw_only=True):
    name: str
    python_version: str | None
    packages: list[str]
    description: str
    created_by: str
    created_at: str


async def base_for(conn: asyncpg.Connection, name: str | None, python_version: str | None) -> BaseEnvironment | None:
    """The base a deploy asked for (a named environment, a Python version, both or neither)."""
    if python_version is not None and not PYTHON_RE.match(python_version):
        raise Invalid(
            f"python_version: {python_version!r} is not a Python version like 3.11", [("python_version", "e.g. 3.11")]
        )
    if name is None:
        return BaseEnvironment(python=python_version) if python_version else None
    row = await conn.fetchrow("SELECT * FROM environments WHERE name = $1", name)
    if row is None:
        raise Invalid(
            f"environment: no compute environment named {name!r}; see `pier environments`",
            [("environment", "does not exist")],
        )
    return BaseEnvironment(
        name=name,
        python=python_version or row["python_version"],
        packages=msgspec.json.decode(row["packages"], type=list[str]),
    )


def _out(row: asyncpg.Record) -> EnvironmentOut:
    return EnvironmentOut(
        name=row["name"],
        python_version=row["python_version"],
        packages=msgspec.json.decode(row["packages"], type=list[str]),
        description=row["description"],
        created_by=row["created_by"],
        created_at=row["created_at"].isoformat(),
    )


class Environments:
    def __init__(self, ctx: Context) -> None:
        self.pool = ctx.pool

    def routes(self) -> list[web.RouteDef]:
        return [web.get("/v1/environments", self.list), web.post("/v1/environments", self.create)]

    async def list(self, _: web.Request) -> web.Response:
        async with self.pool.acquire() as conn:
            rows = await conn.fetch("SELECT * FROM environments ORDER BY name")
        return json_response([_out(r) for r in rows])

    async def create(self, request: web.Request) -> web.Response:
        """Define or redefine an environment (admins only: it is what everyone's builds start from)."""
        spec = await read_body(request, CreateEnvironment)
        user = request[auth.USER]
        for i, package in enumerate(spec.packages):
            try:
                Requirement(package)
            except InvalidRequirement as exc:
                raise Invalid(f"packages[{i}]: {exc}", [(f"packages[{i}]", "is not a requirement")]) from None
        async with self.pool.acquire() as conn:
            row = await conn.fetchrow(
                "INSERT INTO environments (name, python_version, packages, description, created_by)"
                " VALUES ($1, $2, $3, $4, $5) ON CONFLICT (name) DO UPDATE"
                " SET python_version = $2, packages = $3, description = $4, created_by = $5 RETURNING *",
                spec.name,
                spec.python_version,
                msgspec.json.encode(spec.packages).decode(),
                spec.description,
                user,
            )
        return json_response(_out(row), status=201)


def routes(ctx: Context) -> list[web.RouteDef]:
    return Environments(ctx).routes()
