"""Request and response bodies of the management API. The schema is the type: these Structs
validate input, encode output and generate the OpenAPI document."""

from __future__ import annotations

import re
from typing import Annotated, Literal

import msgspec

from pier.spec import Entrypoint, Route

Name = Annotated[str, msgspec.Meta(pattern=r"^[a-z0-9][a-z0-9-]{0,62}$", description="lower-case letters, digits, -")]
Access = Literal["restricted", "unrestricted"]
NAME_RE = re.compile(r"^[a-z0-9][a-z0-9-]{0,62}$")


class CodeSpec(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """Where a version's code comes from and what it serves."""

    source: str
    file: str
    function: str
    routes: list[Route] = msgspec.field(default_factory=list)
    health_function: str | None = None


class CreateModel(CodeSpec, kw_only=True, forbid_unknown_fields=True):
    name: Name
    instances: Annotated[int, msgspec.Meta(ge=1, le=32)] = 1
    workers: Annotated[int, msgspec.Meta(ge=1, le=64)] | None = None
    request_timeout: Annotated[float, msgspec.Meta(gt=0, le=3600)] = 60.0
    access: Access = "unrestricted"


class CreateVersion(CodeSpec, kw_only=True, forbid_unknown_fields=True):
    pass


class SourceOut(msgspec.Struct, kw_only=True):
    digest: str
    size: int


class InstanceOut(msgspec.Struct, kw_only=True):
    instance_id: str
    version: int
    state: str
    address: str
    reason: str


class VersionOut(msgspec.Struct, kw_only=True):
    number: int
    id: str
    source: str
    state: str
    reason: str
    image: str | None
    packages: list[str]
    entrypoint: Entrypoint
    created_by: str
    created_at: str


class ModelOut(msgspec.Struct, kw_only=True):
    id: str
    name: str
    owner: str
    state: str
    reason: str
    access: Access
    instances: int
    workers: int
    request_timeout: float
    latest: int | None
    target: int | None
    url: str
    created_at: str
    updated_at: str
    versions: list[VersionOut] = msgspec.field(default_factory=list)
    running_instances: list[InstanceOut] = msgspec.field(default_factory=list)
