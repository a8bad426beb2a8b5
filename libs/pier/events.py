"""Every command, event and shared record on the bus, declared once.

Subjects are derived from each message's tag (`pier.cmd.<tag>`, `pier.events.<tag>`), and bucket
and stream names live here too, so no subject is ever typed as a literal elsewhere.
"""

from __future__ import annotations

import time
import uuid
from typing import Any, ClassVar, Literal

import msgspec

from pier.spec import Entrypoint

# Streams and buckets.
CMD_STREAM = "PIER_CMD"
EVENTS_STREAM = "PIER_EVENTS"
LOGS_STREAM = "PIER_LOGS"
ROUTES_BUCKET = "pier_routes"
INSTANCES_BUCKET = "pier_instances"
TOKENS_BUCKET = "pier_tokens"

CMD_PREFIX = "pier.cmd"
EVENTS_PREFIX = "pier.events"
LOGS_PREFIX = "pier.logs"

LogKind = Literal["build", "instance", "deployment"]


def new_id() -> str:
    return uuid.uuid4().hex


class Message(msgspec.Struct, kw_only=True, tag_field="type"):
    """Base of every command and event: an id (the idempotency key), a time and who caused it."""

    prefix: ClassVar[str] = ""
    id: str = msgspec.field(default_factory=new_id)
    at: float = msgspec.field(default_factory=time.time)
    actor: str = "system"

    @classmethod
    def tag(cls) -> str:
        return str(cls.__struct_config__.tag)

    @classmethod
    def subject(cls) -> str:
        return f"{cls.prefix}.{cls.tag()}"

    def derived_id(self, what: str) -> str:
        """A deterministic id for a message this one causes, so a redelivered cause
        produces the same follow-up message and JetStream's de-duplication drops the copy."""
        return uuid.uuid5(uuid.UUID(self.id), what).hex


class Command(Message):
    prefix: ClassVar[str] = CMD_PREFIX


class Event(Message):
    prefix: ClassVar[str] = EVENTS_PREFIX


# ---- commands ---------------------------------------------------------------------------------


class StartBuild(Command, tag="build"):
    model_id: str
    version: int
    source: str  # digest of an uploaded source tarball
    entrypoint: Entrypoint


class PlaceModel(Command, tag="place"):
    """Start `instances` instances of one version from its image."""

    model_id: str
    version: int
    version_id: str
    image: str
    entrypoint: Entrypoint
    instances: int = 1
    workers: int = 1
    gpu_type: str | None = None
    gpu_count: int = 0
    request_timeout: float = 60.0


class StopModel(Command, tag="stop"):
    """Stop every instance of a model API, or of one version when `version` is set."""

    model_id: str
    version: int | None = None
    reason: str = "stopped"


class RestartInstance(Command, tag="restart"):
    instance_id: str
    reason: str


# ---- events -----------------------------------------------------------------------------------


class BuildStarted(Event, tag="build.started"):
    model_id: str
    version: int


class BuildSucceeded(Event, tag="build.succeeded"):
    model_id: str
    version: int
    image: str
    packages: list[str] = msgspec.field(default_factory=list)


class BuildFailed(Event, tag="build.failed"):
    model_id: str
    version: int
    reason: str


class InstanceStarted(Event, tag="instance.started"):
    model_id: str
    version: int
    instance_id: str
    address: str


class InstanceReady(Event, tag="instance.ready"):
    model_id: str
    version: int
    instance_id: str


class InstanceUnhealthy(Event, tag="instance.unhealthy"):
    model_id: str
    version: int
    instance_id: str
    reason: str


class InstanceStopped(Event, tag="instance.stopped"):
    model_id: str
    version: int
    instance_id: str
    reason: str


class ModelPlaced(Event, tag="model.placed"):
    model_id: str
    version: int
    instances: list[str]


class ModelStopped(Event, tag="model.stopped"):
    model_id: str
    version: int | None = None


class ModelStateChanged(Event, tag="model.state"):
    """The api's view of a model API changed: what dashboards and `pier deploy` follow."""

    model_id: str
    name: str
    state: str
    reason: str = ""


AnyEvent = (
    BuildStarted
    | BuildSucceeded
    | BuildFailed
    | InstanceStarted
    | InstanceReady
    | InstanceUnhealthy
    | InstanceStopped
    | ModelPlaced
    | ModelStopped
    | ModelStateChanged
)
AnyCommand = StartBuild | PlaceModel | StopModel | RestartInstance

# ---- key-value records ------------------------------------------------------------------------


class InstanceRecord(msgspec.Struct, kw_only=True):
    """An instance as the gateway and monitor see it (bucket `pier_instances`, key: instance id)."""

    instance_id: str
    model_id: str
    version: int
    address: str  # host:port of the harness
    workers: int = 1
    state: Literal["starting", "ready", "unhealthy"] = "starting"
    started_at: float = msgspec.field(default_factory=time.time)


class VersionRoute(msgspec.Struct, kw_only=True):
    number: int
    id: str
    entrypoint: Entrypoint


class RouteRecord(msgspec.Struct, kw_only=True):
    """How the gateway reaches a model API (bucket `pier_routes`, key: model id)."""

    model_id: str
    name: str
    access: Literal["restricted", "unrestricted"] = "unrestricted"
    latest: int | None = None
    labels: dict[str, int] = msgspec.field(default_factory=dict)
    versions: dict[str, VersionRoute] = msgspec.field(default_factory=dict)
    request_timeout: float = 60.0


class LogLine(msgspec.Struct, kw_only=True, omit_defaults=True):
    at: float
    kind: LogKind
    line: str
    version: int | None = None
    instance_id: str | None = None


def logs_subject(model_id: str, kind: LogKind) -> str:
    return f"{LOGS_PREFIX}.{model_id}.{kind}"


_event_decoder = msgspec.json.Decoder(AnyEvent)
_command_decoder = msgspec.json.Decoder(AnyCommand)


def decode_event(data: bytes) -> AnyEvent:
    return _event_decoder.decode(data)


def decode_command(data: bytes) -> AnyCommand:
    return _command_decoder.decode(data)


def encode(msg: Any) -> bytes:
    return msgspec.json.encode(msg)
