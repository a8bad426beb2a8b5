"""Which instance takes a request: the ready instance of the version with the fewest requests in flight.

Where 503 load shedding will be decided, too: today a version with no ready instance is the
only reason to refuse.
"""

from __future__ import annotations

from collections.abc import Container, Iterator
from contextlib import contextmanager

from pier.events import InstanceRecord
from services.gateway.table import Table


class Balancer:
    def __init__(self, table: Table) -> None:
        self.table = table
        self.in_flight: dict[str, int] = {}
        self._turn = 0

    def choose(self, model_id: str, version: int, exclude: Container[str] = ()) -> InstanceRecord | None:
        """The least busy ready instance, or None when there is none (outside `exclude`)."""
        best: list[InstanceRecord] = []
        fewest = 0
        for instance in self.table.ready(model_id, version):
            if instance.instance_id in exclude:
                continue
            n = self.in_flight.get(instance.instance_id, 0)
            if not best or n < fewest:
                best, fewest = [instance], n
            elif n == fewest:
                best.append(instance)
        if not best:
            return None
        # Ties rotate: sequential callers (all instances idle) still spread over every instance.
        self._turn += 1
        return best[self._turn % len(best)]

    @contextmanager
    def track(self, instance_id: str) -> Iterator[None]:
        """Count a request as in flight on `instance_id` while the block runs."""
        self.in_flight[instance_id] = self.in_flight.get(instance_id, 0) + 1
        try:
            yield
        finally:
            left = self.in_flight[instance_id] - 1
            if left:
                self.in_flight[instance_id] = left
            else:
                # Dropped at zero so instances that come and go leave nothing behind.
                del self.in_flight[instance_id]
