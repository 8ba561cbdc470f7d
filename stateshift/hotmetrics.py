"""Counters and histograms for per-frame paths: plain numbers, read at scrape time.

prometheus_client's `Counter.inc` and `Histogram.observe` take a lock and go through a few
calls per update (a histogram: one per bucket found, plus the sum): a few microseconds, paid
several times for every frame a relay forwards. The families below keep each labelled child
as plain Python numbers, updated by the event loop's thread only, and turn them into metric
families when the registry is collected (in that same thread: the admin plane serves
`/metrics` from the event loop). The exposition is the same as prometheus_client's own
(names, `_total`, `_bucket{le}`, `_sum`, `_count`), without `_created` series.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Callable, Iterator, Sequence

from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString

#: a bucket bound as prometheus_client writes it in `le` (the same text as its own histograms)
_le: Callable[[float], str] = floatToGoString


class CounterChild:
    """One labelled series of a `HotCounter`."""

    __slots__ = ("value",)

    def __init__(self) -> None:
        self.value: float = 0.0

    def inc(self, amount: float = 1) -> None:
        if amount < 0:
            raise ValueError("counters only go up")
        self.value += amount


class HistogramChild:
    """One labelled series of a `HotHistogram`: a count per bucket (not cumulative) and a
    sum."""

    __slots__ = ("bounds", "counts", "sum")

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self.bounds = bounds
        #: one per finite bound, and the last for +Inf
        self.counts = [0] * (len(bounds) + 1)
        self.sum = 0.0

    def observe(self, value: float) -> None:
        self.counts[bisect_left(self.bounds, value)] += 1
        self.sum += value


class _Family(Collector):
    def __init__(
        self,
        name: str,
        documentation: str,
        labelnames: Sequence[str],
        registry: CollectorRegistry | None,
    ) -> None:
        self.name = name
        self.documentation = documentation
        self.labelnames = tuple(labelnames)
        if registry is not None:
            registry.register(self)

    def _key(self, values: tuple[str, ...]) -> tuple[str, ...]:
        if len(values) != len(self.labelnames):
            raise ValueError(f"{self.name} takes labels {self.labelnames}, not {values}")
        return tuple(str(v) for v in values)

    def describe(self) -> Iterator[Metric]:
        # lets the registry refuse a second family of the same name, as it does for its own
        yield from self._empty()

    def _empty(self) -> Iterator[Metric]:
        raise NotImplementedError


class HotCounter(_Family):
    """A labelled counter (`name` without `_total`; the samples get it)."""

    def __init__(
        self,
        name: str,
        documentation: str,
        labelnames: Sequence[str] = (),
        registry: CollectorRegistry | None = None,
    ) -> None:
        super().__init__(name, documentation, labelnames, registry)
        self._children: dict[tuple[str, ...], CounterChild] = {}

    def labels(self, *values: str) -> CounterChild:
        """The series for these label values (created at zero on first use)."""
        key = self._key(values)
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = CounterChild()
        return child

    def _empty(self) -> Iterator[Metric]:
        yield CounterMetricFamily(self.name, self.documentation, labels=self.labelnames)

    def collect(self) -> Iterator[Metric]:
        family = CounterMetricFamily(self.name, self.documentation, labels=self.labelnames)
        for key, child in list(self._children.items()):
            family.add_metric(key, child.value)
        yield family


class HotHistogram(_Family):
    """A labelled histogram with fixed buckets."""

    def __init__(
        self,
        name: str,
        documentation: str,
        labelnames: Sequence[str] = (),
        buckets: Sequence[float] = (),
        registry: CollectorRegistry | None = None,
    ) -> None:
        super().__init__(name, documentation, labelnames, registry)
        bounds = tuple(float(b) for b in buckets if b != float("inf"))
        if not bounds or list(bounds) != sorted(set(bounds)):
            raise ValueError(f"{name}: buckets must be increasing and not empty")
        self.bounds = bounds
        self._children: dict[tuple[str, ...], HistogramChild] = {}
        #: the one series of a histogram without labels (exported from the start)
        self._only = self.labels() if not self.labelnames else None

    def labels(self, *values: str) -> HistogramChild:
        """The series for these label values (created empty on first use)."""
        key = self._key(values)
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = HistogramChild(self.bounds)
        return child

    def observe(self, value: float) -> None:
        """Observe on the series of a histogram without labels."""
        if self._only is None:
            raise ValueError(f"{self.name} has labels: observe on .labels(...)")
        self._only.observe(value)

    def _empty(self) -> Iterator[Metric]:
        yield HistogramMetricFamily(self.name, self.documentation, labels=self.labelnames)

    def collect(self) -> Iterator[Metric]:
        family = HistogramMetricFamily(self.name, self.documentation, labels=self.labelnames)
        les = [_le(b) for b in self.bounds] + ["+Inf"]
        for key, child in list(self._children.items()):
            running = 0
            cumulative = []
            for le, count in zip(les, list(child.counts), strict=True):
                running += count
                cumulative.append((le, float(running)))
            family.add_metric(list(key), cumulative, child.sum)
        yield family
