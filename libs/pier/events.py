"""Every command, event and shared record on the bus, declared once.

Subjects are derived from each message's tag (`pier.cmd.<tag>`, `pier.events.<tag>`), and bucket
and stream names live here too, so no subject is ever typed as a literal elsewhere.
"""

from __future__ import annotations

import hashlib
import secrets
import sys
import time
import types
import typing
import uuid
from typing import Any, ClassVar, Literal

import msgspec

from pier.spec import Entrypoint
from pier.volumes import Volume

# Streams and buckets.
CMD_STREAM = "PIER_CMD"
EVENTS_STREAM = "PIER_EVENTS"
LOGS_STREAM = "PIER_LOGS"
# Management changes (who changed what on which model API), kept PIER_AUDIT_MAX_AGE_DAYS.
AUDIT_STREAM = "PIER_AUDIT"
ROUTES_BUCKET = "pier_routes"
INSTANCES_BUCKET = "pier_instances"
TOKENS_BUCKET = "pier_tokens"
# Users' API keys (key: public prefix), for collaborators calling restricted model APIs; written by the api.
KEYS_BUCKET = "pier_keys"
# The scheduler's GPU inventory and queue, as the api shows them (key: GPUS_KEY), written by the scheduler.
GPUS_BUCKET = "pier_gpus"
GPUS_KEY = "inventory"
# Request/reply: "would this request start now or wait?" (a GpuAsk in, a queue Plan out).
PLAN_SUBJECT = "pier.scheduler.plan"
# Each instance's recent restarts, written by the monitor (back-off and `failed` after repeated crashes).
RESTARTS_BUCKET = "pier_restarts"
# Live monitor replicas (key: replica id, expiring): they share the instances to probe.
MONITORS_BUCKET = "pier_monitors"

CMD_PREFIX = "pier.cmd"
EVENTS_PREFIX = "pier.events"
LOGS_PREFIX = "pier.logs"
AUDIT_PREFIX = "pier.audit"

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


class GitSource(msgspec.Struct, kw_only=True):
    """A git repository to fetch at build time. `credential` is the name of a registered
    credential, never the secret itself: commands and events are an audit trail."""

    url: str
    ref: str | None = None  # branch, tag or commit; None: the remote's default branch
    credential: str | None = None


class BaseEnvironment(msgspec.Struct, kw_only=True):
    """What a version's environment starts from: a Python version and packages under the user's requirements."""

    name: str = ""  # the compute environment's name; "" when only `python` was asked for
    python: str | None = None  # e.g. "3.11"; None: the platform's own Python
    packages: list[str] = msgspec.field(default_factory=list)


class StartBuild(Command, tag="build"):
    model_id: str
    version: int
    source: str  # digest of an uploaded source tarball; "" when the code comes from `git`
    entrypoint: Entrypoint
    git: GitSource | None = None
    environment: BaseEnvironment | None = None


class RunSchedule(Command, tag="schedule.run"):
    """Run a schedule's command in a fresh copy of `source` with the environment of `image`."""

    model_id: str
    schedule_id: str
    run_id: str
    command: str
    source: str
    image: str
    timeout: float


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
    # The resource quota per instance (0: unlimited) and the work dir's disk limit in bytes (0: none).
    quota: str = ""
    cpu: float = 0.0
    memory: int = 0
    disk_size: int = 0
    # The model API's health checks: the kubernetes driver turns them into its pods' probes.
    health: HealthPolicy = msgspec.field(default_factory=lambda: HealthPolicy())  # defined below
    # Host folders mounted into every instance (pier.volumes), checked by the api at create.
    volumes: list[Volume] = msgspec.field(default_factory=list)


class StopModel(Command, tag="stop"):
    """Stop every instance of a model API, or of one version when `version` is set. A waiting
    request leaves the queue. `purge` (terminate) also removes the instances' directories."""

    model_id: str
    version: int | None = None
    reason: str = "stopped"
    purge: bool = False


class RestartInstance(Command, tag="restart"):
    instance_id: str
    reason: str
    # The model API's request timeout now (a settings change); None keeps the one the instance runs with.
    request_timeout: float | None = None


# ---- events -----------------------------------------------------------------------------------


class BuildStarted(Event, tag="build.started"):
    model_id: str
    version: int


class BuildSucceeded(Event, tag="build.succeeded"):
    model_id: str
    version: int
    image: str
    packages: list[str] = msgspec.field(default_factory=list)
    source: str = ""  # the digest of the tree built (for git: the fetched commit's tree)
    commit: str | None = None  # the resolved git commit, when the code came from git
    env_hash: str = ""


class BuildFailed(Event, tag="build.failed"):
    model_id: str
    version: int
    reason: str


class ScheduleRunSucceeded(Event, tag="schedule.succeeded"):
    """The command exited 0; `source` holds the files as it left them."""

    model_id: str
    schedule_id: str
    run_id: str
    source: str
    log: list[str] = msgspec.field(default_factory=list)


class ScheduleRunFailed(Event, tag="schedule.failed"):
    model_id: str
    schedule_id: str
    run_id: str
    reason: str
    log: list[str] = msgspec.field(default_factory=list)


class InstanceStarted(Event, tag="instance.started"):
    model_id: str
    version: int
    instance_id: str
    address: str
    node: str = "local"
    gpu_devices: list[str] = msgspec.field(default_factory=list)
    isolated: bool | None = None  # runs as a user of its own; None from a platform that did not say


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


class ModelWaiting(Event, tag="model.waiting"):
    """A version waits for GPUs: `position` is its 1-based place in the line for `gpu_type`."""

    model_id: str
    version: int
    gpu_type: str
    position: int
    reason: str = ""


class PlacementRejected(Event, tag="model.rejected"):
    """A version asks for more than the inventory could ever hold."""

    model_id: str
    version: int
    reason: str


class UsageRecorded(Event, tag="usage.recorded"):
    """One run of an instance ended: what it used while running (waiting is never billed)."""

    model_id: str
    version: int
    instance_id: str
    started_at: float
    ended_at: float
    gpu_count: int
    instance_seconds: float
    gpu_seconds: float


class InstanceRestarting(Event, tag="instance.restarting"):
    """The monitor restarts an instance after `delay` seconds (back-off); `attempt` counts restarts in the window."""

    model_id: str
    version: int
    instance_id: str
    reason: str
    delay: float
    attempt: int


class ModelFailed(Event, tag="model.failed"):
    """An instance crashed or failed its health checks too often: the model API becomes `failed`."""

    model_id: str
    version: int
    instance_id: str
    reason: str


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
    | InstanceRestarting
    | ModelFailed
    | ScheduleRunSucceeded
    | ScheduleRunFailed
    | ModelWaiting
    | PlacementRejected
    | UsageRecorded
)

# ---- key-value records ------------------------------------------------------------------------


class GpuType(msgspec.Struct, kw_only=True):
    total: int
    free: int
    requested: int  # GPUs asked for by waiting model APIs
    waiting: int  # model APIs waiting for this type
    simulated: bool
    nodes: dict[str, int] = msgspec.field(default_factory=dict)  # node -> GPUs of this type


class GpuInventory(msgspec.Struct, kw_only=True):
    """Bucket `pier_gpus`, key `inventory`: the scheduler's view, republished at every change."""

    simulated: bool
    types: dict[str, GpuType] = msgspec.field(default_factory=dict)
    # Why the scheduler's runtime cannot mount volumes ("" when it can): the api refuses them at create.
    volumes_refused: str = "the scheduler did not say whether its runtime can mount volumes"
    at: float = msgspec.field(default_factory=time.time)


class GpuAsk(msgspec.Struct, kw_only=True):
    gpu_type: str | None = None
    gpu_count: int = 0
    instances: int = 1


class InstanceRecord(msgspec.Struct, kw_only=True):
    """An instance as the gateway and monitor see it (bucket `pier_instances`, key: instance id)."""

    instance_id: str
    model_id: str
    version: int
    address: str  # host:port of the harness
    workers: int = 1
    secret: str = ""  # sent as X-Pier-Instance-Secret on every call: the harness answers nothing else
    state: Literal["starting", "ready", "unhealthy"] = "starting"
    started_at: float = msgspec.field(default_factory=time.time)


class VersionRoute(msgspec.Struct, kw_only=True):
    number: int
    id: str
    entrypoint: Entrypoint


class HealthPolicy(msgspec.Struct, kw_only=True, frozen=True, omit_defaults=True):
    """A model API's health checks and restarts, as Kubernetes probes and CrashLoopBackOff work.
    Published in its RouteRecord so every monitor replica applies it; the defaults are documented in docs/health.md."""

    initial_delay: float = 0.0  # seconds after an instance starts before its first probe
    period: float = 10.0  # seconds between probes
    timeout: float = 5.0  # a probe slower than this has failed
    # Failures in a row that make a ready instance unhealthy. period * failure_threshold must exceed the
    # request timeout, so an instance busy with one long call is not restarted under it.
    failure_threshold: int = 7
    restart_backoff: float = 10.0  # the wait before the second restart in a window, doubling after each
    restart_backoff_max: float = 300.0
    restart_window: float = 600.0  # restarts older than this are forgotten (10 min healthy resets back-off)
    max_restarts: int = 5  # one more restart in the window and the model API becomes `failed`


class RouteRecord(msgspec.Struct, kw_only=True):
    """How the gateway reaches a model API (bucket `pier_routes`, key: model id)."""

    model_id: str
    name: str
    access: Literal["restricted", "unrestricted"] = "unrestricted"
    latest: int | None = None
    labels: dict[str, int] = msgspec.field(default_factory=dict)
    versions: dict[str, VersionRoute] = msgspec.field(default_factory=dict)
    request_timeout: float = 60.0
    health: HealthPolicy = msgspec.field(default_factory=HealthPolicy)
    # basic: only `latest` serves; advanced: `latest` and the promoted labels (e.g. `prod`) serve.
    routing_mode: Literal["basic", "advanced"] = "basic"
    # Users with a role on the model API (owner, collaborators, their organizations' members): their
    # own API keys (bucket `pier_keys`) may call it when it is restricted.
    callers: frozenset[str] = frozenset()
    # Calls beyond the instances' capacity wait in a bounded queue; 0 means the gateway's default.
    queue_length: int = 0
    queue_timeout: float = 0.0


class TokenRecord(msgspec.Struct, kw_only=True):
    """An access token as the gateway sees it (bucket `pier_tokens`, key: the token's public prefix).

    Only the SHA-256 of the secret travels: the secret itself is shown once, to its creator."""

    prefix: str
    model_id: str
    hash: str
    revoked: bool = False


class KeyRecord(msgspec.Struct, kw_only=True):
    """A user's API key as the gateway sees it (bucket `pier_keys`, key: the key's public prefix):
    present only while the key exists and its user is enabled. Only the SHA-256 travels."""

    prefix: str
    user: str
    hash: str


# The gateway reports which tokens were used (core NATS, best effort); the api records `last_used`.
TOKENS_USED_SUBJECT = "pier.tokens.used"
# An access token reads `pier_<12 hex: public prefix>_<secret>`: the prefix finds the record,
# the hash of the whole token proves it.
_TOKEN_HEAD = "pier_"
_PREFIX_LEN = 12


def new_token() -> tuple[str, str]:
    """A fresh access token and its public prefix."""
    prefix = secrets.token_hex(_PREFIX_LEN // 2)
    return f"{_TOKEN_HEAD}{prefix}_{secrets.token_urlsafe(32)}", prefix


def token_prefix(token: str) -> str | None:
    """The public prefix of something shaped like an access token, else None."""
    end = len(_TOKEN_HEAD) + _PREFIX_LEN
    if len(token) > end + 1 and token.startswith(_TOKEN_HEAD) and token[end] == "_":
        return token[len(_TOKEN_HEAD) : end]
    return None


def token_hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


class LogLine(msgspec.Struct, kw_only=True, omit_defaults=True):
    at: float
    kind: LogKind
    line: str
    version: int | None = None
    instance_id: str | None = None


# The most lines one log message may carry: the api numbers a message's lines
# (stream sequence x LOG_BATCH_MAX + position), so the numbers stay in stream order.
LOG_BATCH_MAX = 1 << 16


class LogBatch(msgspec.Struct, kw_only=True, omit_defaults=True):
    """Consecutive lines of one instance's log in one message: the log shipper sends one per up to
    `log_batch_lines` lines or `log_batch_wait` seconds, so a call costs the bus no message of its own.

    `offset` is the byte offset of the first line in `instance.log` (with the instance id, the
    message's Nats-Msg-Id) and `end` the offset just past the last one: a shipper that finds its
    batch already published (a crash before it noted the offset) resumes from the original's `end`."""

    at: float
    kind: LogKind
    lines: list[str]
    version: int | None = None
    instance_id: str | None = None
    offset: int = 0
    end: int = 0


def logs_subject(model_id: str, kind: LogKind) -> str:
    return f"{LOGS_PREFIX}.{model_id}.{kind}"


# ---- audit ------------------------------------------------------------------------------------


class AuditModel(msgspec.Struct, kw_only=True):
    id: str
    name: str


class AuditEvent(msgspec.Struct, kw_only=True):
    """One management change, on `pier.audit.<model id, or _ when none>.<action>` and in
    `GET /v1/events`. Never a secret nor a hash: a token is its id and name.

    `before` and `after` hold only the fields of the model API that changed (its public view,
    plus its labels and health-check policy); `fields` holds what the change was about where that
    view cannot show it (a token's id and name, a version's number, a label, a path's ids).
    `recovered` is true when the api stopped between the change and its record and the event was
    written afterwards from the state found then: if `before` equals `after`, the change may not
    have happened."""

    id: int  # increasing: the cursor (`before`, `Last-Event-ID`)
    at: float  # seconds since the epoch
    actor: str  # the user name, or `admin`
    action: str  # e.g. model.create, token.revoke: docs/audit.md lists them all
    model: AuditModel | None  # None for changes not about one model API (environments, sources)
    before: dict[str, Any] = msgspec.field(default_factory=dict)
    after: dict[str, Any] = msgspec.field(default_factory=dict)
    fields: dict[str, Any] = msgspec.field(default_factory=dict)
    recovered: bool = False


def audit_subject(model_id: str | None, action: str) -> str:
    return f"{AUDIT_PREFIX}.{model_id or '_'}.{action}"


_event_decoder = msgspec.json.Decoder(AnyEvent)


def decode_event(data: bytes) -> AnyEvent:
    return _event_decoder.decode(data)


def encode(msg: Any) -> bytes:
    return msgspec.json.encode(msg)


# ---- the schema, as documentation ---------------------------------------------------------------

DOC_BEGIN = "<!-- BEGIN GENERATED by `python -m pier.events --markdown`: edit libs/pier/events.py instead -->"
DOC_END = "<!-- END GENERATED -->"


def _type_name(kind: Any) -> str:
    if kind is Any:
        return "any"
    if kind is type(None):
        return "null"
    origin = typing.get_origin(kind)
    args = typing.get_args(kind)
    if origin is typing.Annotated:
        return _type_name(args[0])
    if origin is Literal:
        return " \\| ".join(f"`{a!r}`".replace("'", '"') for a in args)
    if origin in (typing.Union, types.UnionType):
        return " \\| ".join(_type_name(a) for a in args)
    if origin is list:
        return f"list[{_type_name(args[0])}]"
    if origin is dict:
        return f"dict[{_type_name(args[0])}, {_type_name(args[1])}]"
    return str(getattr(kind, "__name__", kind))


def _default(field: msgspec.structs.FieldInfo) -> str:
    if field.required:
        return "required"
    if field.default_factory is not msgspec.NODEFAULT:
        made = field.default_factory()
        # A time or an id is made anew for each message; an empty list or a policy is the same every time.
        fixed = isinstance(made, list | dict | msgspec.Struct)
        return f"`{msgspec.json.encode(made).decode()}`" if fixed else "generated"
    return f"`{msgspec.json.encode(field.default).decode()}`"


def _struct_doc(cls: type[msgspec.Struct], subject: str, skip: frozenset[str] = frozenset()) -> list[str]:
    lines = [f"### {cls.__name__}", ""]
    if subject:
        lines += [f"Subject: `{subject}`", ""]
    doc = cls.__doc__ if cls.__doc__ and "__doc__" in vars(cls) else ""
    if doc:
        lines += [" ".join(doc.split()), ""]
    lines += ["| field | type | default |", "|---|---|---|"]
    if isinstance(cls.__struct_config__.tag, str):
        lines.append(f"| type | `{cls.__struct_config__.tag!r}` | the tag |".replace("'", '"'))
    for field in msgspec.structs.fields(cls):
        if field.name not in skip:
            lines.append(f"| {field.encode_name} | {_type_name(field.type)} | {_default(field)} |")
    return [*lines, ""]


def markdown() -> str:
    """The schema section of docs/events.md, generated from the Structs above."""
    base = frozenset(f.name for f in msgspec.structs.fields(Message))
    commands = [c for c in _all_subclasses(Command) if isinstance(c.__struct_config__.tag, str)]
    out = [
        DOC_BEGIN,
        "",
        "## Audit events",
        "",
        f"Stream {AUDIT_STREAM}, kept PIER_AUDIT_MAX_AGE_DAYS.",
        "",
        *_struct_doc(AuditEvent, f"{AUDIT_PREFIX}.<model id or _>.<action>"),
        *_struct_doc(AuditModel, ""),
        "## Commands and events",
        "",
        "Every command and event also has these fields (and `type`, its tag):",
        "",
        "| field | type | default |",
        "|---|---|---|",
        *(f"| {f.name} | {_type_name(f.type)} | {_default(f)} |" for f in msgspec.structs.fields(Message)),
        "",
        f"Commands travel on stream {CMD_STREAM}, events on {EVENTS_STREAM}.",
        "",
    ]
    for cls in [*commands, *typing.get_args(AnyEvent)]:
        out += _struct_doc(cls, cls.subject(), base)
    out += ["## Records", "", "What the key-value buckets and log streams hold.", ""]
    for record in (
        RouteRecord,
        VersionRoute,
        HealthPolicy,
        TokenRecord,
        InstanceRecord,
        GpuInventory,
        GpuType,
        LogLine,
        LogBatch,
        GitSource,
        BaseEnvironment,
    ):
        out += _struct_doc(record, "")
    return "\n".join([*out, DOC_END]) + "\n"


def _all_subclasses(cls: type[Message]) -> list[type[Message]]:
    found: list[type[Message]] = []
    sub: type[Message]
    for sub in cls.__subclasses__():
        found += [sub, *_all_subclasses(sub)]
    return found


def splice(document: str, section: str) -> str:
    """`document` with its generated section replaced by `section` (appended when it has none)."""
    head, begin, rest = document.partition(DOC_BEGIN)
    if not begin:
        return document.rstrip("\n") + "\n\n" + section
    _, end, tail = rest.partition(DOC_END)
    return head + section + tail.lstrip("\n") if end else head + section


if __name__ == "__main__":
    # `python -m pier.events --markdown` prints the section; `--write PATH` puts it in that file.
    if sys.argv[1:2] == ["--markdown"]:
        sys.stdout.write(markdown())
    elif sys.argv[1:2] == ["--write"] and len(sys.argv) == 3:
        from pathlib import Path

        path = Path(sys.argv[2])
        path.write_text(splice(path.read_text() if path.exists() else "", markdown()))
    else:
        sys.exit("usage: python -m pier.events --markdown | --write docs/events.md")
