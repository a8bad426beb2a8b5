"""Settings from PIER_* environment variables, declared once."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal

import msgspec

# The most gateway processes PIER_GATEWAY_PROCESSES=0 runs: past a few, a machine's cores are better
# left to the instances behind them.
AUTO_GATEWAYS = 4


class Settings(msgspec.Struct, kw_only=True, frozen=True):
    home: Path = Path(".pier")
    nats_url: str = "nats://127.0.0.1:4222"
    database_url: str = "postgresql://postgres@127.0.0.1:54329/pier"
    api_host: str = "127.0.0.1"
    api_port: int = 8080
    gateway_host: str = "127.0.0.1"
    gateway_port: int = 8000
    log_level: str = "info"
    # The admin API token (or PIER_ADMIN_TOKEN_FILE, below); the api stores only its hash.
    admin_token: str = ""
    # Simulated GPUs where NVML finds none, e.g. "a100:4,rtx3090:2".
    gpus: str = ""
    # Named resource quotas an admin defines, per instance: "small=cpu:1,memory:1g;large=cpu:4,memory:16g".
    # A model API created without `quota` gets the one named "default" when there is one, else no limit.
    quotas: str = ""
    # Stopped model APIs are purged (as by terminate) after this many days.
    purge_after_days: float = 14.0
    default_workers: int = 1
    build_concurrency: int = 2
    build_timeout: float = 1800.0
    build_import_timeout: float = 120.0
    max_body_bytes: int = 32 * 1024 * 1024
    # Gateway shedding: calls beyond a version's capacity (instances x workers) wait in a queue of
    # this many per version; a full queue, or a wait longer than the timeout, answers 503 + Retry-After.
    gateway_queue_length: int = 100
    gateway_queue_timeout: float = 10.0
    max_source_bytes: int = 1024 * 1024 * 1024
    # URL schemes `--git` accepts, comma-separated; tests add file (and http) for local repositories.
    git_schemes: str = "https,ssh"
    # How long a consumer may hold a message before it is redelivered (crash recovery time).
    ack_wait: float = 10.0
    logs_max_age_days: float = 14.0
    events_max_age_days: float = 60.0
    # Credentials: files holding the password for the user named in PIER_NATS_URL / PIER_DATABASE_URL
    # (`make up` writes them 0600 under PIER_HOME/secrets), so no password sits in a process's
    # environment. Empty: the password, if any, is the one in the URL.
    nats_password_file: str = ""
    database_password_file: str = ""
    # Inputs and secrets: how much a caller may send, and where git may connect.
    api_max_body_bytes: int = 1024 * 1024  # every api route but /v1/sources (max_source_bytes)
    max_source_entries: int = 20_000
    max_source_header_bytes: int = 64 * 1024  # PAX / GNU long-name headers in front of one entry
    git_allow_networks: str = ""  # private ranges git may reach anyway, e.g. "10.0.0.0/8,127.0.0.0/8"
    gateway_metrics_host: str = "127.0.0.1"  # the gateway's /metrics, away from its public address
    gateway_metrics_port: int = 8001
    # Limits of the data plane's HTTP code (pier.http.limits.Limits, same names and defaults): the
    # gateway's server and its client to instances; harnesses read the same PIER_HTTP_* variables.
    http_max_request_line: int = 8 * 1024
    http_max_header_bytes: int = 64 * 1024
    http_max_headers: int = 100
    http_header_timeout: float = 10.0
    http_body_timeout: float = 30.0
    http_keepalive_timeout: float = 75.0
    http_max_connections: int = 1000
    http_max_pipeline: int = 64
    http_max_response_head: int = 64 * 1024
    http_connect_timeout: float = 5.0
    # Log batching: the scheduler ships instance logs in one message per up to this many lines or
    # this many seconds, whichever comes first (docs/logs.md).
    log_batch_lines: int = 4000
    log_batch_wait: float = 0.5
    # Secrets out of process environments: a file holding the admin token, read by the api at start
    # (`make up` writes PIER_HOME/secrets/admin.token, 0600); when set, PIER_ADMIN_TOKEN is not used.
    admin_token_file: str = ""
    # Instance output: the request log's buffer (lines) and the bytes a second of stdout and stderr
    # an instance keeps; the rest is cut, counted in the instance log (0: no bound).
    request_log_buffer: int = 10000
    instance_output_rate: int = 1 << 20
    # The audit trail (services/api/audit.py): events older than this go from PostgreSQL and PIER_AUDIT.
    audit_max_age_days: float = 90.0
    # Dashboard sign-in (docs/access.md): how long a session lasts (seconds), and how many failed
    # sign-ins per name and per client address within the window (seconds) are answered before 429.
    session_max_age: float = 12 * 3600.0
    sign_in_failures: int = 5
    sign_in_window: float = 300.0
    # `make up` with PIER_REPLICAS=N runs N of each service (docs/replicas.md): the api and gateway
    # replicas share their ports (SO_REUSEPORT), gateway replica k serves /metrics on the metrics
    # port + k - 1, and one scheduler leads while the others stand by.
    replicas: int = 1
    # Gateway processes `make up` runs on the gateway's port (SO_REUSEPORT): 0 is one per CPU this
    # process may use, at most 4 (one process uses one core; docs/performance.md), and never fewer
    # than `replicas`. Resolved by gateway_processes() below.
    gateway_processes: int = 0
    # The runtime driver (docs/kubernetes.md): `local` runs instances as processes on this host;
    # `kubernetes` runs each model API version as a Deployment and a Service in kube_namespace, through
    # the API server at kube_api (empty: in-cluster config, else ~/.kube/config), with pods of
    # kube_image, and GPU nodes found by the node label kube_gpu_label (its value is the GPU type).
    runtime: Literal["local", "kubernetes"] = "local"
    kube_api: str = ""
    kube_namespace: str = "pier"
    kube_image: str = "pier-runtime:latest"
    kube_gpu_label: str = "nvidia.com/gpu.product"
    # The volume claim holding PIER_HOME (the artifact store): pods' init containers fetch images from it.
    kube_artifacts_claim: str = "pier-home"
    # Traces: exported over OTLP/HTTP to this collector (e.g. http://127.0.0.1:4318) when set;
    # PIER_OTEL_EXPORTER=console prints them instead (docs/production.md).
    otlp_endpoint: str = ""
    # Volumes (docs/scheduling.md): the host folders (comma-separated absolute paths) under which a
    # model API's volumes may lie; empty: every volume is refused.
    volume_roots: str = ""
    otel_exporter: str = ""

    @property
    def artifacts(self) -> Path:
        return self.home / "artifacts"

    @property
    def api_url(self) -> str:
        return f"http://{self.api_host}:{self.api_port}"

    @property
    def gateway_url(self) -> str:
        return f"http://{self.gateway_host}:{self.gateway_port}"


class Quota(msgspec.Struct, kw_only=True, frozen=True):
    name: str
    cpu: float = 0.0  # CPUs per instance; 0: no limit
    memory: int = 0  # bytes per instance; 0: no limit


_SIZE_UNITS = {"": 1, "b": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}


def parse_size(text: str) -> int:
    """`512m`, `10g`, `1.5G`, `1048576` -> bytes. ValueError on anything else."""
    raw = text.strip().lower().removesuffix("ib").removesuffix("b")
    unit = raw[-1:] if raw[-1:] in _SIZE_UNITS else ""
    number = float(raw[: len(raw) - len(unit)]) if raw[: len(raw) - len(unit)] else -1.0
    if number <= 0:
        raise ValueError(f"{text!r} is not a size such as 512m or 10g")
    return int(number * _SIZE_UNITS[unit])


def parse_quotas(spec: str) -> dict[str, Quota]:
    """PIER_QUOTAS -> quotas by name; a malformed part is a ValueError naming it."""
    out: dict[str, Quota] = {}
    for part in (p.strip() for p in spec.split(";") if p.strip()):
        name, sep, body = part.partition("=")
        if not sep or not name.strip():
            raise ValueError(f"PIER_QUOTAS: {part!r} is not NAME=cpu:N,memory:SIZE")
        cpu, memory = 0.0, 0
        for item in (i.strip() for i in body.split(",") if i.strip()):
            key, _, value = item.partition(":")
            if key == "cpu":
                cpu = float(value)
            elif key == "memory":
                memory = parse_size(value)
            else:
                raise ValueError(f"PIER_QUOTAS: {item!r}: only cpu and memory can be limited")
        out[name.strip()] = Quota(name=name.strip(), cpu=cpu, memory=memory)
    return out


def _decode(kind: type, value: Any) -> Any:
    if kind is Path and isinstance(value, str | os.PathLike):
        return Path(value)
    raise NotImplementedError(f"cannot read {kind}")


def load(env: dict[str, str] | None = None, **overrides: Any) -> Settings:
    """Read PIER_<FIELD> variables; a bad value is an error naming the variable."""
    source = os.environ if env is None else env
    raw: dict[str, Any] = {}
    for field in msgspec.structs.fields(Settings):
        value = source.get(f"PIER_{field.name.upper()}")
        if value is not None:
            raw[field.name] = value
    raw.update(overrides)
    try:
        settings = msgspec.convert(raw, Settings, strict=False, dec_hook=_decode)
    except msgspec.ValidationError as exc:
        raise SystemExit(f"invalid setting: {exc} (from PIER_* environment variables)") from None
    return msgspec.structs.replace(settings, home=settings.home.absolute())


def gateway_processes(settings: Settings) -> int:
    """How many gateway processes run: PIER_GATEWAY_PROCESSES, else one per usable CPU up to
    AUTO_GATEWAYS; at least PIER_REPLICAS."""
    wanted = settings.gateway_processes or min(len(os.sched_getaffinity(0)), AUTO_GATEWAYS)
    return max(wanted, settings.replicas)


def to_env(settings: Settings) -> dict[str, str]:
    """The PIER_* variables that reproduce these settings in a child process."""
    return {f"PIER_{name.upper()}": str(value) for name, value in msgspec.structs.asdict(settings).items()}
