"""Settings from PIER_* environment variables, declared once."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import msgspec


class Settings(msgspec.Struct, kw_only=True, frozen=True):
    home: Path = Path(".pier")
    nats_url: str = "nats://127.0.0.1:4222"
    database_url: str = "postgresql://postgres@127.0.0.1:54329/pier"
    api_host: str = "127.0.0.1"
    api_port: int = 8080
    gateway_host: str = "127.0.0.1"
    gateway_port: int = 8000
    log_level: str = "info"
    # The admin API token; the supervisor passes it to the api, which stores only its hash.
    admin_token: str = ""
    # Simulated GPUs where NVML finds none, e.g. "a100:4,rtx3090:2".
    gpus: str = ""
    default_workers: int = 1
    default_instances: int = 1
    build_concurrency: int = 2
    build_timeout: float = 1800.0
    build_import_timeout: float = 120.0
    max_body_bytes: int = 32 * 1024 * 1024
    max_source_bytes: int = 1024 * 1024 * 1024
    # How long a consumer may hold a message before it is redelivered (crash recovery time).
    ack_wait: float = 10.0
    logs_max_age_days: float = 14.0
    events_max_age_days: float = 60.0
    otel_exporter: str = ""

    @property
    def artifacts(self) -> Path:
        return self.home / "artifacts"

    @property
    def run_dir(self) -> Path:
        return self.home / "run"

    @property
    def api_url(self) -> str:
        return f"http://{self.api_host}:{self.api_port}"

    @property
    def gateway_url(self) -> str:
        return f"http://{self.gateway_host}:{self.gateway_port}"


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


def to_env(settings: Settings) -> dict[str, str]:
    """The PIER_* variables that reproduce these settings in a child process."""
    return {f"PIER_{name.upper()}": str(value) for name, value in msgspec.structs.asdict(settings).items()}
