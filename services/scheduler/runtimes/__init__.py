"""Runtime drivers: how an instance becomes a running process (local) or pod (kubernetes, later)."""

from services.scheduler.runtimes.local import Exit, Handle, InstanceSpec, LocalRuntime, stop_all

__all__ = ["Exit", "Handle", "InstanceSpec", "LocalRuntime", "stop_all"]
