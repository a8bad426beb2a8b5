"""The answers of `/v1`, typed: each is the API's JSON body as it came (a dict), so printing one
(`pier ... --json`) prints what the API said, and a field the API adds later is there too.

Names follow the API's schemas (`GET /v1/openapi.json`); only the fields the API documents are
declared here."""

from __future__ import annotations

from typing import Any, TypedDict


class Instance(TypedDict):
    instance_id: str
    version: int
    state: str
    address: str
    reason: str
    isolated: bool | None


class Version(TypedDict):
    number: int
    id: str
    source: str
    state: str
    reason: str
    image: str | None
    packages: list[str]
    entrypoint: dict[str, Any]
    created_by: str
    created_at: str
    source_name: str | None
    git: str | None
    ref: str | None
    commit: str | None
    environment: str | None
    python_version: str | None


class Volume(TypedDict):
    name: str
    mount_path: str
    host_path: str
    read_only: bool


class Model(TypedDict):
    id: str
    name: str
    owner: str
    state: str
    reason: str
    access: str
    routing_mode: str
    visibility: str
    instances: int
    gpu_type: str | None
    gpu_count: int
    quota: str | None
    cpu: float
    memory: int
    disk_size: int
    volumes: list[Volume]
    queue_position: int | None
    workers: int
    request_timeout: float
    latest: int | None
    target: int | None
    url: str
    created_at: str
    updated_at: str
    versions: list[Version]
    running_instances: list[Instance]


class Settings(TypedDict):
    request_timeout: float
    visibility: str
    health: dict[str, float]  # initial_delay, period, timeout, failure_threshold, max_restarts, restart_window
    restarting: list[str]


class Label(TypedDict):
    label: str
    version: int
    promoted_by: str
    promoted_at: str


class LogLine(TypedDict):
    seq: int
    at: float
    kind: str
    line: str
    version: int | None
    instance_id: str | None


class LogPage(TypedDict):
    lines: list[LogLine]
    next_before: int | None


class Usage(TypedDict):
    model_id: str
    instance_seconds: float
    gpu_seconds: float
    running_instances: int


class Token(TypedDict):
    id: str
    name: str
    creator: str
    created: str
    last_used: str | None
    revoked: bool


class TokenCreated(Token):
    token: str  # the secret: in this answer only


class Run(TypedDict):
    id: str
    schedule_id: str
    slot: str | None
    state: str
    reason: str
    log: list[str]
    version: int | None
    created_at: str
    finished_at: str | None


class Schedule(TypedDict):
    id: str
    model_id: str
    cron: str
    command: str
    timeout: float
    created_by: str
    created_at: str
    next_run: str
    runs: list[Run]


class Collaborator(TypedDict):
    principal: str  # a user name, or org:NAME
    role: str
    added_by: str
    added: str


class AuditModel(TypedDict):
    id: str
    name: str


class Event(TypedDict):
    id: int
    at: float
    actor: str
    action: str
    model: AuditModel | None
    before: dict[str, Any]
    after: dict[str, Any]
    fields: dict[str, Any]
    recovered: bool


class EventPage(TypedDict):
    events: list[Event]
    next_before: int | None


class Source(TypedDict):
    digest: str
    size: int


class NamedSource(TypedDict):
    name: str
    digest: str
    size: int
    created_by: str
    updated_at: str


class Credential(TypedDict):
    name: str


class Environment(TypedDict):
    name: str
    python_version: str | None
    packages: list[str]
    description: str
    created_by: str
    created_at: str


class GpuType(TypedDict):
    total: int
    free: int
    requested: int  # GPUs asked for by waiting model APIs
    waiting: int  # model APIs waiting for this type
    simulated: bool
    nodes: dict[str, int]


class Gpus(TypedDict):
    simulated: bool
    types: dict[str, GpuType]
    at: float


class Plan(TypedDict):
    decision: str  # start, wait or never
    reason: str
    position: int | None
    ahead: int
    simulated: bool
    gpu_type: str | None
    gpu_count: int
    instances: int
    quota: str | None


class User(TypedDict):
    name: str
    email: str
    admin: bool
    disabled: bool
    created: str


class Me(User):
    orgs: list[str]


class Key(TypedDict):
    id: str
    name: str
    created: str
    last_used: str | None


class KeyCreated(Key):
    key: str  # the secret: in this answer only


class UserCreated(User):
    key: KeyCreated  # the user's first API key


class Org(TypedDict):
    name: str
    members: list[str]
    created: str


class Session(TypedDict):
    user: str
    csrf_token: str
    expires: str


class Answer(TypedDict):
    """A model API's answer: `result`, and `request_id`, `release` and the rest of the envelope."""

    result: Any
    request_id: str
