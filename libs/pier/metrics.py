"""A small Prometheus registry every service can use: counters, gauges and histograms with labels,
rendered in the text exposition format (version 0.0.4).

Kept dependency-free and cheap on hot paths: an observation is a dict update under the GIL.

    registry = Registry()
    calls = registry.counter("pier_gateway_requests_total", "Calls answered", ("model", "version", "status"))
    calls.inc("demo", "1", "200")
    text = registry.render()
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Callable, Iterable, Sequence

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _labels(names: Sequence[str], values: Sequence[str], extra: str = "") -> str:
    parts = [f'{n}="{_escape(v)}"' for n, v in zip(names, values, strict=True)]
    if extra:
        parts.append(extra)
    return "{" + ",".join(parts) + "}" if parts else ""


def _number(value: float) -> str:
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    return repr(float(value)) if not float(value).is_integer() else str(int(value))


class _Metric:
    kind = ""

    def __init__(self, name: str, help: str, labels: Sequence[str]) -> None:
        self.name, self.help, self.label_names = name, help, tuple(labels)

    def header(self) -> list[str]:
        return [f"# HELP {self.name} {self.help}", f"# TYPE {self.name} {self.kind}"]

    def samples(self) -> list[str]:
        raise NotImplementedError


class Counter(_Metric):
    kind = "counter"

    def __init__(self, name: str, help: str, labels: Sequence[str] = ()) -> None:
        super().__init__(name, help, labels)
        self.values: dict[tuple[str, ...], float] = {}

    def inc(self, *labels: str, by: float = 1.0) -> None:
        self.values[labels] = self.values.get(labels, 0.0) + by

    def samples(self) -> list[str]:
        return [f"{self.name}{_labels(self.label_names, k)} {_number(v)}" for k, v in sorted(self.values.items())]


class Gauge(_Metric):
    """A value set directly, or read at render time from `source` (e.g. a queue's length)."""

    kind = "gauge"

    def __init__(
        self,
        name: str,
        help: str,
        labels: Sequence[str] = (),
        source: Callable[[], Iterable[tuple[tuple[str, ...], float]]] | None = None,
    ) -> None:
        super().__init__(name, help, labels)
        self.values: dict[tuple[str, ...], float] = {}
        self.source = source

    def set(self, value: float, *labels: str) -> None:
        self.values[labels] = value

    def inc(self, *labels: str, by: float = 1.0) -> None:
        self.values[labels] = self.values.get(labels, 0.0) + by

    def samples(self) -> list[str]:
        values = dict(self.values)
        if self.source is not None:
            values.update(self.source())
        return [f"{self.name}{_labels(self.label_names, k)} {_number(v)}" for k, v in sorted(values.items())]


class Histogram(_Metric):
    kind = "histogram"

    def __init__(
        self, name: str, help: str, labels: Sequence[str] = (), buckets: Sequence[float] = LATENCY_BUCKETS
    ) -> None:
        super().__init__(name, help, labels)
        self.bounds = tuple(sorted(buckets))
        # Per label set: a count per bucket (not cumulative; summed at render), the sum, the count.
        self.series: dict[tuple[str, ...], tuple[list[int], list[float]]] = {}

    def observe(self, value: float, *labels: str) -> None:
        series = self.series.get(labels)
        if series is None:
            series = self.series[labels] = ([0] * (len(self.bounds) + 1), [0.0])
        series[0][bisect.bisect_left(self.bounds, value)] += 1
        series[1][0] += value

    def samples(self) -> list[str]:
        lines: list[str] = []
        for key, (counts, total) in sorted(self.series.items()):
            running = 0
            for bound, count in zip((*self.bounds, math.inf), counts, strict=True):
                running += count
                le = 'le="' + _number(bound) + '"'
                lines.append(f"{self.name}_bucket{_labels(self.label_names, key, le)} {running}")
            lines.append(f"{self.name}_sum{_labels(self.label_names, key)} {_number(total[0])}")
            lines.append(f"{self.name}_count{_labels(self.label_names, key)} {running}")
        return lines


class Registry:
    def __init__(self) -> None:
        self.metrics: dict[str, _Metric] = {}

    def _add(self, metric: _Metric) -> _Metric:
        if metric.name in self.metrics:
            raise ValueError(f"metric {metric.name} is registered twice")
        self.metrics[metric.name] = metric
        return metric

    def counter(self, name: str, help: str, labels: Sequence[str] = ()) -> Counter:
        metric = Counter(name, help, labels)
        self._add(metric)
        return metric

    def gauge(
        self,
        name: str,
        help: str,
        labels: Sequence[str] = (),
        source: Callable[[], Iterable[tuple[tuple[str, ...], float]]] | None = None,
    ) -> Gauge:
        metric = Gauge(name, help, labels, source)
        self._add(metric)
        return metric

    def histogram(
        self, name: str, help: str, labels: Sequence[str] = (), buckets: Sequence[float] = LATENCY_BUCKETS
    ) -> Histogram:
        metric = Histogram(name, help, labels, buckets)
        self._add(metric)
        return metric

    def render(self) -> str:
        lines: list[str] = []
        for metric in self.metrics.values():
            lines.extend(metric.header())
            lines.extend(metric.samples())
        return "\n".join(lines) + "\n"


def with_label(text: str, name: str, value: str) -> str:
    """`text` (exposition format) with `name="value"` added to every sample, so that the answers of
    several replicas of a service stay distinct series on one page (summed by the query, as
    Prometheus sums targets)."""
    label = f'{name}="{_escape(value)}"'
    out = []
    for line in text.splitlines():
        if line and not line.startswith("#"):
            cut = min((i for i in (line.find("{"), line.find(" ")) if i >= 0), default=len(line))
            if line[cut : cut + 1] == "{":
                line = f"{line[: cut + 1]}{label},{line[cut + 1 :]}"
            else:
                line = f"{line[:cut]}{{{label}}}{line[cut:]}"
        out.append(line)
    return "\n".join(out) + "\n"


def merge(texts: Iterable[str]) -> str:
    """One page from several: each family's HELP and TYPE once, its samples from every text after
    them; a series (name and labels) two texts both have is kept once, from the first."""
    families: dict[str, list[str]] = {}
    seen: set[str] = set()
    current: list[str] | None = None
    for text in texts:
        for line in text.splitlines():
            if line.startswith("# HELP "):
                family = line.split(" ", 3)[2]
                known = family in families
                current = families.setdefault(family, [])
                if not known:
                    current.append(line)
            elif line.startswith("# TYPE "):
                if current is not None and len(current) == 1:
                    current.append(line)
            elif line and current is not None:
                series = line.rsplit(" ", 1)[0]
                if series not in seen:
                    seen.add(series)
                    current.append(line)
    return "\n".join(line for lines in families.values() for line in lines) + "\n"


# Each service process keeps one registry; `pier.service` answers `pier.metrics.<service>` with it,
# each replica labelling its samples `replica="<host>-<pid>"`.
REGISTRY = Registry()
METRICS_SUBJECT = "pier.metrics.{service}"
REPLICA_LABEL = "replica"
