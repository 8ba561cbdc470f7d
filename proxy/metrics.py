"""The proxy's Prometheus metrics (its own registry, served on the admin port).

Labels from fixed sets only: upstream (old|new), role (primary|shadow), direction, reason.
The families updated for every frame (frames, answer latency) are `stateshift.hotmetrics`
ones: plain numbers read at scrape time.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Final, Protocol

from prometheus_client import CollectorRegistry, Counter, Gauge
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from proxy.route import UPSTREAMS
from stateshift.hotmetrics import HotCounter, HotHistogram

CONNECT_FAILURES = ("down", "refused", "rejected", "crash", "closed")
SWITCH_KINDS = (
    "check",
    "flip",
    "rollback",
    "auto-rollback",
    "ramp",
    "prepare",
    "commit",
    "abort",
    "finalize",
    "other",
)
SWITCH_RESULTS = (
    "ok",
    "pass",
    "fail",
    "inconclusive",
    "failed",
    "aborted",
    "reverted",
    "forced",
    "other",
)
DROP_REASONS = ("overflow", "refused", "down", "crash", "closed", "stall", "garbage", "gap")
#: fine enough that a p99 read from buckets can judge a 2x latency bound
LATENCY_BUCKETS = (
    0.00025,
    0.0005,
    0.00075,
    0.001,
    0.0015,
    0.002,
    0.003,
    0.004,
    0.005,
    0.0075,
    0.01,
    0.015,
    0.02,
    0.03,
    0.05,
    0.075,
    0.1,
    0.15,
    0.25,
    0.5,
    1.0,
    2.5,
)


#: `stateshift_proxy_connections`' states (every one exported, 0 included)
CONNECTION_STATES: Final = ("handshaking", "mirrored", "held", "relayed", "spliced")


class _Snapshot(Collector):
    """Gauges computed at scrape time from the live proxy (no bookkeeping per frame)."""

    def __init__(self, read: Callable[[], dict[str, float]]) -> None:
        self.read = read

    def collect(self) -> Iterator[GaugeMetricFamily]:
        values = self.read()
        yield GaugeMetricFamily(
            "stateshift_proxy_shadow_buffer_frames",
            "Client frames waiting in shadow-bound buffers (all connections).",
            value=values.get("buffered", 0.0),
        )
        yield GaugeMetricFamily(
            "stateshift_proxy_tap_backlog",
            "Records waiting in the tap for the comparator.",
            value=values.get("tap_backlog", 0.0),
        )
        states = GaugeMetricFamily(
            "stateshift_proxy_connections",
            "Client connections by state: handshaking (the primary being opened), mirrored, "
            "held (frames held: a flip's pause), relayed (frames, not mirrored), spliced.",
            labels=["state"],
        )
        for state in CONNECTION_STATES:
            states.add_metric([state], values.get(f"conn:{state}", 0.0))
        yield states
        # Roles move with flips: counted from the live sessions at scrape time.
        upstreams = GaugeMetricFamily(
            "stateshift_proxy_upstream_connections",
            "Upstream connections open, by upstream and role.",
            labels=["upstream", "role"],
        )
        for upstream in UPSTREAMS:
            for role in ("primary", "shadow"):
                count = values.get(f"up:{upstream}:{role}", 0.0)
                upstreams.add_metric([upstream, role], count)
        yield upstreams


class Spliced(Protocol):
    """A live spliced connection, as the tally sees it (`proxy.splice.Splice`)."""

    @property
    def client_bytes(self) -> int: ...

    @property
    def upstream_bytes(self) -> int: ...


class SpliceTally(Collector):
    """Spliced (not mirrored) connections: counted at scrape time from plain integers that
    the splice keeps, so that relaying a chunk of bytes costs no metric call."""

    def __init__(self) -> None:
        self.live: set[Spliced] = set()
        self.total = 0
        #: bytes of spliced connections that have ended, by direction
        self.ended_client_bytes = 0
        self.ended_upstream_bytes = 0

    def opened(self, spliced: Spliced) -> None:
        self.live.add(spliced)
        self.total += 1

    def closed(self, spliced: Spliced) -> None:
        if spliced in self.live:
            self.live.discard(spliced)
            self.ended_client_bytes += spliced.client_bytes
            self.ended_upstream_bytes += spliced.upstream_bytes

    def collect(self) -> Iterator[Metric]:
        client = self.ended_client_bytes + sum(s.client_bytes for s in self.live)
        upstream = self.ended_upstream_bytes + sum(s.upstream_bytes for s in self.live)
        relayed = CounterMetricFamily(
            "stateshift_proxy_spliced_bytes",
            "Bytes relayed on spliced (not mirrored, not parsed) connections: direction client "
            "(client to upstream) or upstream (upstream to client).",
            labels=["direction"],
        )
        relayed.add_metric(["client"], client)
        relayed.add_metric(["upstream"], upstream)
        yield relayed
        yield CounterMetricFamily(
            "stateshift_proxy_spliced_connections",
            "Client connections relayed as bytes (not mirrored) since start.",
            value=self.total,
        )
        yield GaugeMetricFamily(
            "stateshift_proxy_spliced_open",
            "Spliced client connections open now (also counted in client_connections).",
            value=len(self.live),
        )


class ProxyMetrics:
    """Every family the proxy exports."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.client_connections = Gauge(
            "stateshift_proxy_client_connections",
            "Client connections open on the proxy.",
            registry=r,
        )
        self.frames = HotCounter(
            "stateshift_proxy_frames_total",
            "Frames relayed: direction client (client to upstream) or upstream (to the proxy).",
            ["direction", "upstream", "role"],
            registry=r,
        )
        self.connect_failures = Counter(
            "stateshift_proxy_upstream_connect_failures_total",
            "Failed upstream connection attempts, by upstream, role and reason.",
            ["upstream", "role", "reason"],
            registry=r,
        )
        self.shadow_drops = Counter(
            "stateshift_proxy_shadow_drops_total",
            "Shadow losses (a connection's shadow stream given up), by reason.",
            ["reason"],
            registry=r,
        )
        self.shadow_dropped_frames = Counter(
            "stateshift_proxy_shadow_dropped_frames_total",
            "Client frames never mirrored because the shadow was lost, by reason.",
            ["reason"],
            registry=r,
        )
        self.not_comparable = Counter(
            "stateshift_proxy_games_not_comparable_total",
            "Times a game was marked not comparable, by reason.",
            ["reason"],
            registry=r,
        )
        self.latency = HotHistogram(
            "stateshift_upstream_latency_seconds",
            "Time from a client frame reaching an upstream to that upstream's answer.",
            ["role", "upstream"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.route_primary = Gauge(
            "stateshift_route_primary",
            "1 for the upstream that is primary (for all games, or most under a ramp).",
            ["upstream"],
            registry=r,
        )
        self.route_ramp = Gauge(
            "stateshift_route_ramp_percent",
            "Percent of games whose primary is the new server (100 after a flip to new).",
            registry=r,
        )
        self.mirroring = Gauge(
            "stateshift_proxy_mirroring",
            "1 while client traffic is mirrored to the shadow.",
            registry=r,
        )
        self.client_drops = Counter(
            "stateshift_proxy_client_drops_total",
            "Client connections the proxy dropped itself, by reason (slow: it did not read).",
            ["reason"],
            registry=r,
        )
        self.client_drops.labels("slow")
        self.tap_dropped = Counter(
            "stateshift_proxy_tap_dropped_total",
            "Tap records dropped: over the tap's capacity offered in one event-loop turn "
            "(a stalled loop).",
            registry=r,
        )
        self.spliced = SpliceTally()
        r.register(self.spliced)
        for upstream in UPSTREAMS:
            self.route_primary.labels(upstream)
            for role in ("primary", "shadow"):
                self.latency.labels(role, upstream)
                for direction in ("client", "upstream"):
                    self.frames.labels(direction, upstream, role)
        for reason in DROP_REASONS:
            self.shadow_drops.labels(reason)
            self.shadow_dropped_frames.labels(reason)
            self.not_comparable.labels(reason)
        self.not_comparable.labels("import")  # an admin IMPORT_STATE through the proxy
        # Every series exists from the start: Prometheus cannot see a counter's first
        # increment (an alert on the first primary connect failure after a flip needs it).
        for upstream in UPSTREAMS:
            for role in ("primary", "shadow"):
                for reason in CONNECT_FAILURES:
                    self.connect_failures.labels(upstream, role, reason)
        self.switch_events = Counter(
            "stateshift_switchover_events_total",
            "Switchover events recorded in the history, by kind and result.",
            ["kind", "result"],
            registry=r,
        )
        for kind in SWITCH_KINDS:
            for result in SWITCH_RESULTS:
                self.switch_events.labels(kind, result)

    def switch_event(self, kind: str, result: str) -> None:
        """Count one history event (labels outside the fixed sets become `other`)."""
        self.switch_events.labels(
            kind if kind in SWITCH_KINDS else "other",
            result if result in SWITCH_RESULTS else "other",
        ).inc()

    def watch(self, read: Callable[[], dict[str, float]]) -> None:
        """Export gauges read from the live proxy at scrape time."""
        self.registry.register(_Snapshot(read))
