"""Runtime drivers: how an instance becomes a running process (local) or pods (kubernetes)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from pier.config import Settings
from services.scheduler.runtimes.base import Exit, Handle, InstanceSpec, Runtime, StartError
from services.scheduler.runtimes.local import LocalRuntime, stop_all

__all__ = ["Exit", "Handle", "InstanceSpec", "LocalRuntime", "Runtime", "StartError", "open_runtime", "stop_all"]


@asynccontextmanager
async def open_runtime(settings: Settings) -> AsyncIterator[Runtime]:
    """The driver PIER_RUNTIME names, ready to use (the kubernetes one has its watch running)."""
    if settings.runtime == "kubernetes":
        # Imported here: the local platform never needs the Kubernetes client loaded.
        from services.scheduler.runtimes.kubernetes import KubernetesRuntime

        async with KubernetesRuntime(settings) as runtime:
            yield runtime
    else:
        yield LocalRuntime(settings)
