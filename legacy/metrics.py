"""Prometheus metrics of the legacy server, in a registry of its own.

Labels come only from small fixed sets (message types, error codes, fault names), and every
child is created up front: the hot path does a dict lookup and an `inc()`, and dashboards see
zeros instead of missing series.
"""

from __future__ import annotations

from collections.abc import Callable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from legacy.faults import FAULTS
from legacy.session import INVALID_LABEL, MESSAGE_TYPES

ERROR_CODES = (
    "BAD_MESSAGE",
    "UNKNOWN_TYPE",
    "UNAUTHENTICATED",
    "FORBIDDEN",
    "NOT_FOUND",
    "CONFLICT",
    "INVALID_STATE",
    "RATE_LIMITED",
    "INTERNAL",
)
CLOSE_REASONS = ("idle", "connect_timeout", "rate_abuse", "fault")


class Metrics:
    """The legacy server's metric families and their pre-created children."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        r = self.registry
        self.connections = Gauge(
            "stateshift_legacy_connections", "Open WebSocket connections.", registry=r
        )
        self.games = Gauge("stateshift_legacy_games", "Games held in memory.", registry=r)
        messages = Counter(
            "stateshift_legacy_messages",
            "Client messages handled, by path kind (game, admin), type and result (ok or error).",
            ["path", "type", "result"],
            registry=r,
        )
        errors = Counter(
            "stateshift_legacy_errors",
            "ERROR answers sent, by path kind (game, admin) and code.",
            ["path", "code"],
            registry=r,
        )
        faults = Counter(
            "stateshift_legacy_faults_injected",
            "Times an injected fault changed what the server did, by fault.",
            ["fault"],
            registry=r,
        )
        closes = Counter(
            "stateshift_legacy_server_closes",
            "Connections the server closed on its own, by reason.",
            ["reason"],
            registry=r,
        )
        self.changes = Counter(
            "stateshift_legacy_changes",
            "Accepted changes made durable in the log.",
            registry=r,
        )
        self.batch = Histogram(
            "stateshift_legacy_commit_batch_records",
            "Log records synced by one fsync (group commit).",
            buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256, 512),
            registry=r,
        )
        self.sync_seconds = Histogram(
            "stateshift_legacy_commit_seconds",
            "Time to write and sync one batch of log records.",
            registry=r,
        )
        labels = (*MESSAGE_TYPES, INVALID_LABEL)
        paths = ("game", "admin")
        self._ok = {(p, label): messages.labels(p, label, "ok") for p in paths for label in labels}
        self._failed = {
            (p, label): messages.labels(p, label, "error") for p in paths for label in labels
        }
        self._errors = {(p, code): errors.labels(p, code) for p in paths for code in ERROR_CODES}
        self._faults = {name: faults.labels(name) for name in FAULTS}
        self._closes = {reason: closes.labels(reason) for reason in CLOSE_REASONS}

    def message(self, path: str, label: str, code: str | None) -> None:
        """Count one handled message on a `path` kind, game or admin (and its ERROR code, if
        refused)."""
        if code is None:
            self._ok[path, label].inc()
        else:
            self._failed[path, label].inc()
            self._errors[path, code].inc()

    def fault(self, name: str) -> None:
        """Count one injection of fault `name`."""
        self._faults[name].inc()

    def closed(self, reason: str) -> None:
        """Count one connection closed by the server (`CLOSE_REASONS`)."""
        self._closes[reason].inc()

    def track_games(self, count: Callable[[], int]) -> None:
        """Read the games gauge from `count` at scrape time."""
        self.games.set_function(count)
