"""The new server's Prometheus metrics, in a registry of its own (tests read it directly).

Labels come from small fixed sets only: message types of the protocol (or `invalid`), error
codes, close codes, path kinds. Never game or player ids.
"""

from __future__ import annotations

from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, disable_created_metrics

from server.rules import MESSAGE_TYPES

#: every wire error code of PROTOCOL.md
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

#: the path kinds of PROTOCOL.md: a game's path, or the admin path
PATH_KINDS = ("game", "admin")

# `*_created` series double every family for no use here (dashboards use rates).
disable_created_metrics()  # type: ignore[no-untyped-call]  # untyped in prometheus_client


class ServerMetrics:
    """Every family `stateshift serve` exports on `/metrics`."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.connections = Gauge(
            "stateshift_server_connections",
            "WebSocket connections open, by path kind.",
            ["path"],
            registry=r,
        )
        self.messages = Counter(
            "stateshift_server_messages_total",
            "Client messages handled, by path kind (game, admin), type and result (ok or the"
            " error code).",
            ["path", "type", "result"],
            registry=r,
        )
        self.errors = Counter(
            "stateshift_server_errors_total",
            "ERROR frames sent, by path kind (game, admin) and code.",
            ["path", "code"],
            registry=r,
        )
        self.closes = Counter(
            "stateshift_server_closes_total",
            "Connections the server closed, by close code.",
            ["code"],
            registry=r,
        )
        self.commit_batch = Histogram(
            "stateshift_server_commit_batch_size",
            "Changes committed per group commit (one transaction).",
            buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256, 512),
            registry=r,
        )
        self.commit_seconds = Histogram(
            "stateshift_server_commit_seconds",
            "Time to make one group commit durable.",
            buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0),
            registry=r,
        )
        self.broadcasts = Counter(
            "stateshift_server_broadcast_frames_total",
            "STATE broadcast frames written to connections.",
            registry=r,
        )
        self.games_loaded = Gauge(
            "stateshift_server_games_loaded",
            "Games held in memory.",
            registry=r,
        )
        self._message_children: dict[tuple[str, str, str], Any] = {}
        self._error_children: dict[tuple[str, str], Any] = {}
        # Pre-create the fixed label sets so that dashboards see zeros, not gaps.
        for kind in PATH_KINDS:
            self.connections.labels(kind)
            for message_type in (*MESSAGE_TYPES, "invalid"):
                self.messages.labels(kind, message_type, "ok")
            for code in ERROR_CODES:
                self.errors.labels(kind, code)
        for close in (
            "1000",
            "1007",
            "1009",
            "1011",
            "1012",
            "4401",
            "4403",
            "4404",
            "4408",
            "4429",
        ):
            self.closes.labels(close)

    def message(self, path: str, message_type: str, result: str, count: int = 1) -> None:
        """Count handled messages on a `path` kind (game, admin); a type outside the
        protocol's set counts as `invalid`."""
        key = (path, message_type, result)
        child = self._message_children.get(key)
        if child is None:
            label = message_type if message_type in MESSAGE_TYPES else "invalid"
            child = self.messages.labels(path, label, result)
            if len(self._message_children) < 512:  # a bounded cache of bound children
                self._message_children[key] = child
        child.inc(count)

    def error(self, path: str, code: str) -> None:
        """Count an ERROR frame sent on a `path` kind (game, admin)."""
        key = (path, code)
        child = self._error_children.get(key)
        if child is None:
            child = self.errors.labels(path, code)
            if len(self._error_children) < 64:  # codes and paths are fixed sets
                self._error_children[key] = child
        child.inc()
