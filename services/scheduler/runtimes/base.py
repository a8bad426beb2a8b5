"""What the controller needs of a runtime driver: the `Runtime` protocol and the values it trades in.

A driver turns an `InstanceSpec` into a run (`start`), ends it (`stop`), finds a run that outlived a
scheduler restart (`find`, for adoption), says when a run ended on its own (`poll`, asked by the exit
watcher), and measures what it wrote (`disk_usage`). `local` runs OS processes on this host;
`kubernetes` runs pods of a Deployment per model API version.
"""

from __future__ import annotations

import signal
from typing import Protocol

import msgspec

from pier.events import HealthPolicy
from pier.spec import Entrypoint
from pier.volumes import Volume
from services.scheduler.inventory import Inventory


class InstanceSpec(msgspec.Struct, kw_only=True, frozen=True):
    """Everything needed to start one instance; the same spec starts it again after a restart."""

    instance_id: str
    model_id: str
    version: int
    version_id: str
    image: str
    entrypoint: Entrypoint
    workers: int = 1
    request_timeout: float = 60.0
    # Devices chosen by placement, handed over as CUDA_VISIBLE_DEVICES; none means no GPU at all.
    gpu_devices: tuple[str, ...] = ()
    gpu_type: str | None = None
    # The resource quota (0: no limit) and the work dir's disk limit, enforced by the controller.
    quota: str = ""
    cpu: float = 0.0
    memory: int = 0
    disk_size: int = 0
    # The model API's health checks (the kubernetes driver makes them its pods' probes).
    health: HealthPolicy = msgspec.field(default_factory=HealthPolicy)
    # Host folders mounted at their mount paths (checked against PIER_VOLUME_ROOTS by the api).
    volumes: tuple[Volume, ...] = ()


class Handle(msgspec.Struct, kw_only=True, frozen=True):
    """One run of an instance: the process (or pod set) and where it listens."""

    pid: int
    start_time: int
    port: int
    # The run's own uid (and gid) when it is isolated; None when it runs as the platform's user.
    uid: int | None = None
    # What the harness wants in the X-Pier-Instance-Secret header of every call.
    secret: str = ""
    # Where the gateway and the monitor reach it: loopback for a local process, a Service's name on Kubernetes.
    host: str = "127.0.0.1"

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"


class Exit(msgspec.Struct, kw_only=True, frozen=True):
    """How a run ended. `status` is None when the process was not our child (adopted after a
    scheduler restart): only a parent can learn a process's exit status."""

    status: int | None
    # What the driver knows beyond the status (a pod's reason), shown after it.
    detail: str = ""

    def describe(self) -> str:
        if self.status is None:
            text = "exited with status unknown"
        elif self.status < 0:
            try:
                name = signal.Signals(-self.status).name
            except ValueError:
                name = f"signal {-self.status}"
            text = f"exited with status {self.status} ({name})"
        else:
            text = f"exited with status {self.status}"
        return f"{text} ({self.detail})" if self.detail else text


class StartError(Exception):
    """An instance could not be started (missing image, unusable interpreter, ...)."""


class Runtime(Protocol):
    """A runtime driver, as the controller uses it. `find`, `poll` and `disk_usage` are cheap (the
    exit watcher asks every half second) and may block only briefly (disk_usage runs in a thread)."""

    async def inventory(self) -> Inventory:
        """The GPUs instances may be placed on."""
        ...

    async def start(self, spec: InstanceSpec) -> Handle:
        """Start a run; returns once it exists (readiness is the monitor's business)."""
        ...

    async def stop(self, instance_id: str) -> bool:
        """Stop the instance's run, if any; True when a live one was stopped. Safe to call again."""
        ...

    def find(self, instance_id: str) -> Handle | None:
        """The live run of an instance, or None when there is none (adoption after a restart)."""
        ...

    def poll(self, instance_id: str, handle: Handle) -> Exit | None:
        """None while the run lives; how it ended once it has."""
        ...

    async def last_words(self, instance_id: str, handle: Handle) -> str:
        """The last line an ended run wrote, for the reason shown to the user."""
        ...

    def note(self, instance_id: str, line: str) -> None:
        """A line from the platform where the user reads the instance's log."""
        ...

    def disk_usage(self, instance_id: str) -> int:
        """Bytes the run wrote (what disk_size limits); 0 where the platform under it enforces the limit."""
        ...

    async def purge(self, instance_id: str) -> None:
        """Remove everything of a stopped instance (terminate)."""
        ...

    def volumes_refused(self) -> str:
        """Why this driver cannot mount volumes into instances here, or "" when it can (the scheduler
        publishes it, and the api refuses volumes at create while it is not "")."""
        ...
