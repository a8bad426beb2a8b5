"""The kubernetes driver's Deployment cache: a watch event that is older than what the driver itself
just wrote (the watch lags behind the driver's own requests) must not undo it, or the exit watcher
would report a run that is alive as gone."""

from __future__ import annotations

import json
from typing import Any

from pier import config
from services.scheduler.runtimes.base import Handle
from services.scheduler.runtimes.kubernetes import INSTANCES_ANNOTATION, KubernetesRuntime

NAME = "m-0123-v1"
HANDLE = Handle(pid=0, start_time=0, port=8080)


def deployment(rv: int, uid: str, members: list[str]) -> dict[str, Any]:
    meta = {"name": NAME, "uid": uid, "resourceVersion": str(rv)}
    return {"metadata": {**meta, "annotations": {INSTANCES_ANNOTATION: json.dumps(members)}}}


def test_a_late_event_does_not_undo_the_drivers_own_write() -> None:
    runtime = KubernetesRuntime(config.load(env={}))
    runtime._seen("ADDED", deployment(1, "u1", ["a"]))
    # The driver scaled it up itself (rv 2) before the watch delivered rv 1's event again.
    runtime._deployments[NAME] = deployment(2, "u1", ["a", "b"])
    runtime._seen("MODIFIED", deployment(1, "u1", ["a"]))
    assert runtime.poll("b", HANDLE) is None
    runtime._seen("MODIFIED", deployment(3, "u1", ["a", "b"]))
    assert runtime.poll("a", HANDLE) is None and runtime.poll("b", HANDLE) is None


def test_the_deletion_of_an_earlier_deployment_of_the_name_does_not_end_the_new_ones_runs() -> None:
    runtime = KubernetesRuntime(config.load(env={}))
    # Deleted (rv 4) and made anew (rv 5) by the driver before the watch reported the deletion.
    runtime._deployments[NAME] = deployment(5, "u2", ["c"])
    runtime._seen("DELETED", deployment(4, "u1", ["a"]))
    assert runtime.poll("c", HANDLE) is None
    runtime._seen("DELETED", deployment(6, "u2", ["c"]))
    gone = runtime.poll("c", HANDLE)
    assert gone is not None and "gone" in gone.describe()
