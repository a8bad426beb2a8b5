"""Request and response bodies of the management API. The schema is the type: these Structs
validate input, encode output and generate the OpenAPI document."""

from __future__ import annotations

import re
from typing import Annotated, Literal

import msgspec

from pier.spec import Entrypoint, Route
from pier.volumes import MAX_VOLUMES, Volume

Name = Annotated[str, msgspec.Meta(pattern=r"^[a-z0-9][a-z0-9-]{0,62}$", description="lower-case letters, digits, -")]
# Both end up in file paths: checked here, before any path is built (and again where it is).
Digest = Annotated[str, msgspec.Meta(pattern=r"^[0-9a-f]{64}$", description="a sha256: 64 lower-case hex digits")]
Access = Literal["restricted", "unrestricted"]
RoutingMode = Literal["basic", "advanced"]
# Public: every signed-in user may see it (as a viewer); private: its collaborators only.
Visibility = Literal["public", "private"]
NAME_RE = re.compile(r"^[a-z0-9][a-z0-9-]{0,62}$")


class CodeSpec(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """Where a version's code comes from and what it serves. The code is exactly one of: an upload
    (`source`, its digest), a named source (`source_name`), or a git repository (`git`, `ref`)."""

    source: Digest | None = None
    source_name: str | None = None
    git: str | None = None
    ref: str | None = None  # branch, tag or commit; default: the remote's default branch
    git_credential: Name | None = None  # the name of a registered credential
    environment: str | None = None  # a compute environment (`GET /v1/environments`)
    python_version: str | None = None  # e.g. "3.11"
    # The Domino `/model` endpoint's entry; left out when `routes` are all it serves.
    file: str | None = None
    function: str | None = None
    routes: list[Route] = msgspec.field(default_factory=list)
    health_function: str | None = None


class CreateModel(CodeSpec, kw_only=True, forbid_unknown_fields=True):
    name: Name
    instances: Annotated[int, msgspec.Meta(ge=1, le=32)] = 2
    # What it runs on, fixed once created (docs/scheduling.md): GPUs per instance of one type,
    # a named resource quota (PIER_QUOTAS) and the size of each instance's working directory.
    gpu_type: str | None = None
    gpu_count: Annotated[int, msgspec.Meta(ge=0, le=4)] = 0
    quota: str | None = None
    disk_size: Annotated[str, msgspec.Meta(description="e.g. 512m, 10g")] | None = None
    workers: Annotated[int, msgspec.Meta(ge=1, le=64)] | None = None
    request_timeout: Annotated[float, msgspec.Meta(gt=0, le=3600)] = 60.0
    # The health-check policy (docs/health.md); left out: the defaults of pier.events.HealthPolicy.
    initial_delay: Annotated[float, msgspec.Meta(ge=0, le=86400)] | None = None
    period: Annotated[float, msgspec.Meta(gt=0, le=86400)] | None = None
    timeout: Annotated[float, msgspec.Meta(gt=0, le=86400)] | None = None
    failure_threshold: Annotated[int, msgspec.Meta(ge=1, le=1000)] | None = None
    restart_backoff: Annotated[float, msgspec.Meta(ge=0, le=86400)] | None = None
    restart_backoff_max: Annotated[float, msgspec.Meta(ge=0, le=86400)] | None = None
    restart_window: Annotated[float, msgspec.Meta(gt=0, le=86400)] | None = None
    max_restarts: Annotated[int, msgspec.Meta(ge=0, le=1000)] | None = None
    # Restricted: a call needs one of the model API's access tokens (`pier tokens create`).
    access: Access = "restricted"
    routing_mode: RoutingMode = "basic"
    visibility: Visibility = "private"
    # Host folders every instance sees at a path of its own (docs/scheduling.md, "Volumes"); fixed once created.
    volumes: Annotated[list[Volume], msgspec.Meta(max_length=MAX_VOLUMES)] = msgspec.field(default_factory=list)


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
    # Runs as an OS user of its own (true), as the platform's user (false), or not said (null).
    isolated: bool | None = None


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
    source_name: str | None = None
    git: str | None = None
    ref: str | None = None
    commit: str | None = None
    environment: str | None = None
    python_version: str | None = None


class ModelOut(msgspec.Struct, kw_only=True):
    id: str
    name: str
    owner: str
    state: str
    reason: str
    access: Access
    routing_mode: RoutingMode
    visibility: Visibility
    instances: int
    gpu_type: str | None = None
    gpu_count: int = 0
    quota: str | None = None
    cpu: float = 0.0
    memory: int = 0
    disk_size: int = 0
    volumes: list[Volume] = msgspec.field(default_factory=list)
    # While `waiting`: the 1-based place in line for its GPU type.
    queue_position: int | None = None
    workers: int
    request_timeout: float
    latest: int | None
    target: int | None
    # label -> version (e.g. {"prod": 3}): what `/labels/<label>/` serves in routing mode advanced.
    labels: dict[str, int] = msgspec.field(default_factory=dict)
    url: str
    created_at: str
    updated_at: str
    versions: list[VersionOut] = msgspec.field(default_factory=list)
    running_instances: list[InstanceOut] = msgspec.field(default_factory=list)
    # GET /v1/models/{ref} only: the caller's role on it (viewer, editor, owner, admin), so a client
    # offers only what the role may do.
    role: str | None = None
