"""Declare the dashboards, recording rules and alerts; write them as Grafana JSON and a
Prometheus rule file.

One source of truth: the PromQL of a panel, a rule and an alert lives here, next to the
thresholds it shares with the readiness gates (`switchover/gates.py` defaults). The committed
files are generated (`python -m dashboards.build`; `--check` only compares) and the tests
check that they equal what this module generates, that every query returns data from a real
Prometheus scraping the real components, and that every metric name exists.

Metric names come from `docs/metrics.md` only. Template variables: `$datasource`, `$proxy`
(proxies' instances), `$server` (new servers), `$legacy` (old servers);
`$__rate_interval` is Grafana's own.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

HERE: Final = Path(__file__).resolve().parent
GRAFANA_DIR: Final = HERE / "grafana"
RULES_PATH: Final = HERE / "alerts.yml"
RUNBOOK_BASE: Final = "https://github.com/stateshift/stateshift/blob/main/runbooks/"

DS: Final = {"type": "prometheus", "uid": "${datasource}"}
P: Final = 'instance=~"$proxy"'  # every proxy query is filtered by the $proxy variable
RATE: Final = "$__rate_interval"

# Readiness defaults (switchover/gates.py `Thresholds`): the panels draw them as lines.
READY_MIN_COMPARISONS: Final = 200
READY_MAX_MISMATCH_RATIO: Final = 0.001
READY_MAX_LATENCY_RATIO: Final = 2.0
READY_WINDOW: Final = "5m"

# Alert thresholds.
ALERT_MISMATCH_RATIO: Final = 0.01
ALERT_MIN_COMPARISON_RATE: Final = 0.5  # per second: below it the ratio is noise
ALERT_ERROR_RATIO_EXCESS: Final = 0.01
#: primary connection failures a second (over 1 minute) that page: a dead primary refuses
#: every client's reconnection; one connection lost now and then does not reach it
ALERT_PRIMARY_FAILURES_PER_SECOND: Final = 0.05
ALERT_PRIMARY_P99_SECONDS: Final = 0.25
#: seconds spent comparing per second: the share of the proxy's one core (its event loop)
#: that the comparator takes from relaying. It is a few per cent at full load with the
#: shipped rules (BENCHMARKS.md: ~3 µs per pair against ~80 µs per message relayed).
ALERT_COMPARE_CORE_SHARE: Final = 0.25

COMPARED: Final = 'result=~"match|mismatch|unpaired"'
BAD: Final = 'result=~"mismatch|unpaired"'


# ---------------------------------------------------------------------------- rules


@dataclass(frozen=True)
class Record:
    """A recording rule."""

    record: str
    expr: str


@dataclass(frozen=True)
class Alert:
    """An alerting rule; `runbook` is a file in `runbooks/` (with an optional #anchor)."""

    alert: str
    expr: str
    severity: str
    summary: str
    description: str
    runbook: str
    for_: str = "0m"

    @property
    def runbook_file(self) -> str:
        return self.runbook.partition("#")[0]


RECORDS: Final = (
    Record(
        "stateshift:comparisons:rate5m",
        f"sum by (instance) (rate(stateshift_comparisons_total{{{COMPARED}}}[5m]))",
    ),
    Record(
        "stateshift:mismatch_ratio:rate5m",
        f"sum by (instance) (rate(stateshift_comparisons_total{{{BAD}}}[5m]))\n"
        "/\nstateshift:comparisons:rate5m",
    ),
    Record(
        "stateshift:upstream_latency_seconds:p99_5m",
        "histogram_quantile(0.99,\n"
        "  sum by (instance, role, le) (rate(stateshift_upstream_latency_seconds_bucket[5m]))\n"
        ")",
    ),
    Record(
        "stateshift:server_error_ratio:rate5m",
        # by fleet, as every fleet-wide figure: a fleet's servers are scraped with its label
        'sum by (fleet) (rate(stateshift_server_errors_total{path="game"}[5m]))\n'
        '/\nsum by (fleet) (rate(stateshift_server_messages_total{path="game"}[5m]))',
    ),
    Record(
        "stateshift:legacy_error_ratio:rate5m",
        'sum by (fleet) (rate(stateshift_legacy_errors_total{path="game"}[5m]))\n'
        '/\nsum by (fleet) (rate(stateshift_legacy_messages_total{path="game"}[5m]))',
    ),
)

ALERTS: Final = (
    Alert(
        "StateshiftMismatchRatioHigh",
        f"stateshift:mismatch_ratio:rate5m > {ALERT_MISMATCH_RATIO}\n"
        f"and stateshift:comparisons:rate5m > {ALERT_MIN_COMPARISON_RATE}",
        "warning",
        "Mismatch ratio {{ $value | humanizePercentage }} on proxy {{ $labels.instance }}",
        "More than 1% of the comparisons (mismatch + unpaired) of the last 5 minutes differ "
        "between primary and shadow. The switchover readiness bar is 0.1%.",
        "investigating-a-mismatch.md",
        "10m",
    ),
    Alert(
        "StateshiftGameDiverged",
        "sum by (instance) (increase(stateshift_findings_total[5m])) > 0",
        "warning",
        "New diverged games on proxy {{ $labels.instance }}",
        'About {{ $value | printf "%.0f" }} games diverged for the first time in the last 5 '
        "minutes (each is one finding, kept as a sample: `stateshift compare show`).",
        "diverged-game.md",
    ),
    Alert(
        "StateshiftShadowDown",
        'sum by (instance) (stateshift_proxy_upstream_connections{role="shadow"}) == 0\n'
        "and on (instance) sum by (instance) (stateshift_proxy_client_connections) > 0\n"
        "and on (instance) sum by (instance) (stateshift_proxy_mirroring) == 1",
        "warning",
        "Shadow down on proxy {{ $labels.instance }}: clients connected, none mirrored",
        "The proxy mirrors, has clients, and holds no shadow connection: nothing is being "
        "compared (before a flip) or the old server no longer follows (after a flip: a "
        "rollback would not be lossless).",
        "shadow-down-or-dropping.md",
        "2m",
    ),
    Alert(
        "StateshiftShadowDropping",
        "sum by (instance) (increase(stateshift_proxy_shadow_drops_total[10m])) > 0",
        "warning",
        "Proxy {{ $labels.instance }} is giving up shadow streams",
        "Shadow streams of client connections were dropped in the last 10 minutes (overflow, "
        "refused, down, crash, closed, stall, garbage or gap); their games are not comparable "
        "until resynced, and the readiness gate `shadow_drops` fails.",
        "shadow-down-or-dropping.md",
    ),
    # Not on the comparator's lag, the tap's backlog or its drops: the relay hands the tap to
    # the comparator at the end of every event-loop turn that produced records, and the
    # comparator judges them there and then, so it is never behind. Its lag gauge is the
    # time since the last mirrored frame (idle time), the backlog is empty whenever it can be
    # scraped, and a drop needs 65,536 frames read in one turn. What an expensive comparator
    # does is take the relay's time: that is what this alert measures.
    Alert(
        "StateshiftComparatorExpensive",
        "sum by (instance) (rate(stateshift_compare_busy_seconds_total[5m]))"
        f" > {ALERT_COMPARE_CORE_SHARE}",
        "warning",
        "Comparator on proxy {{ $labels.instance }} takes {{ $value | humanizePercentage }} "
        "of its core",
        "Comparing has taken over 25% of this proxy's core (its one event loop) for 10 minutes. "
        "The comparator runs in the relay's turns, so this time is taken from relaying: every "
        "client's frames wait behind it. Usually a rule that sends every pair to DeepDiff (an "
        "exclude_regex_paths on a field that differs in every frame), or a storm of mismatches.",
        "proxy-restart-or-overload.md#comparator-too-expensive",
        "10m",
    ),
    Alert(
        "StateshiftPrimaryErrorsAfterFlip",
        # by fleet (see StateshiftProxiesDisagreeOnRoute): one fleet's flip and its new
        # server's errors page for that fleet, not mixed with another fleet's figures. No
        # old server's ratio (finalized): the new one's own, less 0 (`* 0` keeps its labels).
        # Servers scraped without the label (fleet="") are judged against any fleet's route,
        # as before the label: each route condition also has a label-less element
        # (`or max(...)`), else labelled proxies and unlabelled servers never matched and the
        # error ratio could not page at all.
        "(\n"
        "  (\n"
        "    stateshift:server_error_ratio:rate5m\n"
        "    - on (fleet) (\n"
        "      stateshift:legacy_error_ratio:rate5m >= 0\n"
        "      or on (fleet) stateshift:server_error_ratio:rate5m * 0\n"
        "    )\n"
        f"  ) > {ALERT_ERROR_RATIO_EXCESS}\n"
        "  and on (fleet) (\n"
        "    max by (fleet) (stateshift_route_ramp_percent) > 0\n"
        "    or max(stateshift_route_ramp_percent) > 0\n"
        "  )\n"
        "  or\n"
        # not `rejected`: a 4xx to one client's handshake is that client's answer; `crash`:
        # a primary lost under its clients (1006, 1011)
        "  sum by (fleet) (increase(stateshift_proxy_upstream_connect_failures_total"
        '{role="primary", reason=~"down|refused|crash"}[5m])) > 0\n'
        ")\n"
        "and on (fleet) (\n"
        "  max by (fleet) (changes(stateshift_route_ramp_percent[1h])) > 0\n"
        "  or max(changes(stateshift_route_ramp_percent[1h])) > 0\n"
        ")",
        "critical",
        "Primary errors up after a route change",
        "The route changed in the last hour and since then the new server answers with ERROR "
        "more often than the old one on the same traffic (by more than 1 point), or the "
        "proxies fail to reach the primary or lose it under its clients. Clients see these "
        "errors.",
        "rollback.md",
        "2m",
    ),
    Alert(
        "StateshiftPrimaryUnreachable",
        # apart from the route change above (which waits 2 minutes over 5-minute windows):
        # clients refused (502) or dropped now, whichever server is the primary
        "sum by (instance, upstream) (rate(stateshift_proxy_upstream_connect_failures_total"
        '{role="primary", reason=~"down|refused|crash"}[1m]))\n'
        f"> {ALERT_PRIMARY_FAILURES_PER_SECOND}",
        "critical",
        "Proxy {{ $labels.instance }} cannot reach its primary ({{ $labels.upstream }})",
        "The proxy fails to connect to its primary, or loses it under its clients, over "
        '{{ $value | printf "%.2f" }} times a second: its clients are refused (502) or dropped, '
        "and its /healthz answers 503. After a flip or a ramp, with the new server as the "
        "failing primary: roll back (the old server has every change). Else the old server "
        "is down: restore it.",
        "rollback.md",
        "30s",
    ),
    Alert(
        "StateshiftProxiesDisagreeOnRoute",
        # by fleet: one Prometheus may scrape several fleets, each with its own route (the
        # scrape config's `fleet` target label; without it, every proxy is one fleet)
        "max by (fleet) (stateshift_route_ramp_percent)\n"
        "  != min by (fleet) (stateshift_route_ramp_percent)\n"
        "or max by (fleet) (stateshift_proxy_mirroring)\n"
        "  != min by (fleet) (stateshift_proxy_mirroring)",
        "critical",
        "Proxies disagree on the route or on mirroring",
        "Some proxies send a game to another primary than others (or mirror while others do "
        "not): a client's game may be served by two primaries. A fleet flip changes all "
        "proxies within seconds; this lasted over a minute.",
        "running-the-switchover.md#proxies-disagree-on-the-route",
        "1m",
    ),
    Alert(
        "StateshiftProxyOverloaded",
        # not the tap's backlog: the comparator empties the tap in the turn that fills it
        'stateshift:upstream_latency_seconds:p99_5m{role="primary"}'
        f" > {ALERT_PRIMARY_P99_SECONDS}",
        "warning",
        "Proxy {{ $labels.instance }} is slow",
        "The primary's answers take over 250 ms at p99 through this proxy.",
        "proxy-restart-or-overload.md",
        "10m",
    ),
    Alert(
        "StateshiftProxyRestarted",
        # spliced sessions (after finalize, --no-mirror) count connections, not frames
        "sum by (instance) (\n"
        '  resets(stateshift_proxy_frames_total{direction="client"}[10m])\n'
        "  or resets(stateshift_proxy_spliced_connections_total[10m])\n"
        ") > 0",
        "info",
        "Proxy {{ $labels.instance }} restarted",
        "Its counters went back to zero: its clients were disconnected and reconnect. The "
        "route survives a restart (persisted in --state); check it.",
        "proxy-restart-or-overload.md#after-a-restart",
    ),
)


def _quote(text: str) -> str:
    """A YAML double-quoted scalar (JSON strings are valid YAML)."""
    return json.dumps(text, ensure_ascii=False)


def _block(text: str, indent: int) -> str:
    """A YAML literal block scalar of `text`, indented."""
    pad = " " * indent
    return "|-\n" + "\n".join(pad + line for line in text.splitlines())


def rules_yaml() -> str:
    """The Prometheus rule file: recording rules, then alerts."""
    out = [
        "# Generated by dashboards/build.py: edit that file, then run",
        "# `python -m dashboards.build`.",
        "groups:",
        "  - name: stateshift-recording",
        "    rules:",
    ]
    for rec in RECORDS:
        out.append(f"      - record: {rec.record}")
        out.append(f"        expr: {_block(rec.expr, 10)}")
    out += ["  - name: stateshift-alerts", "    rules:"]
    for alert in ALERTS:
        out.append(f"      - alert: {alert.alert}")
        out.append(f"        expr: {_block(alert.expr, 10)}")
        out.append(f"        for: {alert.for_}")
        out.append("        labels:")
        out.append(f"          severity: {alert.severity}")
        out.append("        annotations:")
        out.append(f"          summary: {_quote(alert.summary)}")
        out.append(f"          description: {_quote(alert.description)}")
        out.append(f"          runbook_url: {_quote(RUNBOOK_BASE + alert.runbook)}")
    return "\n".join(out) + "\n"


# ----------------------------------------------------------------------- dashboards


@dataclass(frozen=True)
class Target:
    """One PromQL query of a panel."""

    expr: str
    legend: str = ""
    instant: bool = False


@dataclass
class Panel:
    """A panel; `kind` is Grafana's panel type."""

    title: str
    targets: list[Target]
    description: str = ""
    kind: str = "timeseries"
    unit: str = "short"
    width: int = 12
    height: int = 8
    thresholds: list[float] = field(default_factory=list)
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Row:
    """A row header."""

    title: str


@dataclass(frozen=True)
class Annotation:
    """A Prometheus-backed annotation (an event drawn on every time series panel)."""

    name: str
    expr: str
    title: str
    color: str


@dataclass
class Dashboard:
    uid: str
    title: str
    description: str
    items: list[Panel | Row]
    annotations: list[Annotation] = field(default_factory=list)


def _variable(name: str, label: str, metric: str) -> dict[str, Any]:
    return {
        "name": name,
        "label": label,
        "type": "query",
        "datasource": DS,
        "query": {"query": f"label_values({metric}, instance)", "refId": f"{name}-values"},
        "definition": f"label_values({metric}, instance)",
        "refresh": 2,
        "multi": True,
        "includeAll": True,
        "allValue": ".+",
        "current": {"selected": True, "text": ["All"], "value": ["$__all"]},
        "sort": 1,
        "hide": 0,
    }


TEMPLATING: Final = [
    {
        "name": "datasource",
        "label": "Prometheus",
        "type": "datasource",
        "query": "prometheus",
        "current": {"selected": True, "text": "Prometheus", "value": "stateshift-prometheus"},
        "hide": 0,
    },
    _variable("proxy", "Proxy", "stateshift_proxy_mirroring"),
    _variable("server", "New server", "stateshift_server_games_loaded"),
    _variable("legacy", "Old server", "stateshift_legacy_games"),
]


def _thresholds(values: list[float]) -> dict[str, Any]:
    steps: list[dict[str, Any]] = [{"color": "green", "value": None}]
    colors = ("orange", "red")
    for n, value in enumerate(values):
        steps.append({"color": colors[min(n, 1)], "value": value})
    return {"mode": "absolute", "steps": steps}


def _panel_json(panel: Panel, panel_id: int, x: int, y: int) -> dict[str, Any]:
    custom: dict[str, Any] = {}
    if panel.kind == "timeseries":
        custom = {"drawStyle": "line", "lineWidth": 1, "fillOpacity": 10, "showPoints": "never"}
        if panel.thresholds:
            custom["thresholdsStyle"] = {"mode": "line"}
    targets = []
    for n, target in enumerate(panel.targets):
        item: dict[str, Any] = {
            "datasource": DS,
            "refId": chr(ord("A") + n),
            "expr": target.expr,
            "legendFormat": target.legend or "__auto",
            "range": not target.instant,
            "instant": target.instant,
        }
        if target.instant:
            item["format"] = "table"
        targets.append(item)
    out: dict[str, Any] = {
        "id": panel_id,
        "type": panel.kind,
        "title": panel.title,
        "description": panel.description,
        "datasource": DS,
        "gridPos": {"h": panel.height, "w": panel.width, "x": x, "y": y},
        "fieldConfig": {
            "defaults": {
                "unit": panel.unit,
                "custom": custom,
                "thresholds": _thresholds(panel.thresholds),
            },
            "overrides": [],
        },
        "options": {"legend": {"displayMode": "list", "placement": "bottom", "showLegend": True}},
        "targets": targets,
    }
    if panel.kind == "table":
        out["options"] = {"showHeader": True}
        out["transformations"] = [
            {"id": "organize", "options": {"excludeByName": {"Time": True}}},
        ]
    if panel.kind == "stat":
        out["options"] = {
            "reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": False},
            "colorMode": "value",
            "graphMode": "none",
            "textMode": "value_and_name",
        }
    out.update(panel.extra)
    return out


def dashboard_json(board: Dashboard) -> dict[str, Any]:
    """Grafana's JSON model of a dashboard (panels laid out left to right, row by row)."""
    panels: list[dict[str, Any]] = []
    x = y = 0
    line_height = 0
    for panel_id, item in enumerate(board.items, start=1):
        if isinstance(item, Row):
            y += line_height
            x, line_height = 0, 0
            panels.append(
                {
                    "id": panel_id,
                    "type": "row",
                    "title": item.title,
                    "collapsed": False,
                    "gridPos": {"h": 1, "w": 24, "x": 0, "y": y},
                    "panels": [],
                }
            )
            y += 1
            continue
        if x + item.width > 24:
            y += line_height
            x, line_height = 0, 0
        panels.append(_panel_json(item, panel_id, x, y))
        x += item.width
        line_height = max(line_height, item.height)
    annotations: list[dict[str, Any]] = [
        {
            "builtIn": 1,
            "datasource": {"type": "grafana", "uid": "-- Grafana --"},
            "enable": True,
            "hide": True,
            "iconColor": "rgba(0, 211, 255, 1)",
            "name": "Annotations & Alerts",
            "type": "dashboard",
        }
    ]
    for note in board.annotations:
        annotations.append(
            {
                "datasource": DS,
                "enable": True,
                "expr": note.expr,
                "iconColor": note.color,
                "name": note.name,
                "step": "15s",
                "titleFormat": note.title,
                "tagKeys": "instance",
                "useValueForTime": False,
            }
        )
    return {
        "uid": board.uid,
        "title": board.title,
        "description": board.description,
        "tags": ["stateshift"],
        "timezone": "browser",
        "editable": False,
        "graphTooltip": 1,
        "refresh": "30s",
        "schemaVersion": 39,
        "version": 1,
        "time": {"from": "now-3h", "to": "now"},
        "templating": {"list": TEMPLATING},
        "annotations": {"list": annotations},
        "links": [],
        "panels": panels,
    }


def _quantiles(metric: str, selector: str, by: str, legend: str) -> list[Target]:
    """p50 and p99 of a histogram, split `by` labels."""
    return [
        Target(
            f"histogram_quantile({q}, sum by ({by}, le) (rate({metric}_bucket{{{selector}}}"
            f"[{RATE}])))",
            f"p{int(q * 100)} {legend}".strip(),
        )
        for q in (0.5, 0.99)
    ]


PARALLEL_RUN: Final = Dashboard(
    "stateshift-parallel-run",
    "stateshift: parallel run overview",
    "Old and new servers side by side behind the mirroring proxies: traffic, what the "
    "comparator finds, the shadow's health, latency, and the comparator's own cost.",
    [
        Row("Traffic"),
        Panel(
            "Traffic by upstream",
            [
                Target(
                    "sum by (role, upstream) (rate(stateshift_proxy_frames_total"
                    f'{{{P}, direction="client"}}[{RATE}]))',
                    "to {{role}} ({{upstream}})",
                ),
                Target(
                    "sum by (role, upstream) (rate(stateshift_proxy_frames_total"
                    f'{{{P}, direction="upstream"}}[{RATE}]))',
                    "from {{role}} ({{upstream}})",
                ),
            ],
            "Frames per second relayed to and answered by each upstream, by role.",
            unit="ops",
        ),
        Panel(
            "Connections",
            [
                Target(
                    f"sum by (instance) (stateshift_proxy_client_connections{{{P}}})",
                    "clients {{instance}}",
                ),
                Target(
                    f"sum by (role, upstream) (stateshift_proxy_upstream_connections{{{P}}})",
                    "{{role}} ({{upstream}})",
                ),
            ],
            "Client connections on the proxies and upstream connections by role: every "
            "mirrored client should have a shadow connection.",
        ),
        Row("Comparison"),
        Panel(
            "Mismatch ratio (5m)",
            [Target(f"stateshift:mismatch_ratio:rate5m{{{P}}}", "{{instance}}")],
            "(mismatch + unpaired) / (match + mismatch + unpaired) over 5 minutes. Lines: "
            "readiness bar 0.1%, alert 1%.",
            unit="percentunit",
            thresholds=[READY_MAX_MISMATCH_RATIO, ALERT_MISMATCH_RATIO],
        ),
        Panel(
            "Comparisons by result",
            [
                Target(
                    f"sum by (result) (rate(stateshift_comparisons_total{{{P}}}[{RATE}]))",
                    "{{result}}",
                )
            ],
            "Per second. `diverged` counts comparisons of games already diverged (drift, not "
            "new findings).",
            unit="ops",
        ),
        Panel(
            "Top mismatch paths (since the proxies started)",
            [
                Target(
                    f"topk(10, sum by (kind, path) (stateshift_mismatches_total{{{P}}}))",
                    instant=True,
                )
            ],
            "Normalised diff paths of mismatching comparisons (`root` for unpaired). A path's "
            "series appears with its first mismatch, which `increase()` cannot see: hence "
            "totals. `stateshift compare show` lists the findings behind them.",
            kind="table",
        ),
        Panel(
            "Diverged games",
            [
                Target(f"sum(stateshift_games_diverged{{{P}}})", "diverged now"),
                Target(f"sum(stateshift_games_not_comparable{{{P}}})", "not comparable now"),
                Target(
                    f"sum by (kind) (increase(stateshift_findings_total{{{P}}}[{RATE}]))",
                    "new findings ({{kind}})",
                ),
            ],
            "Games currently diverged (first divergence found, not yet resynced), games the "
            "proxy could not mirror faithfully, and new findings.",
        ),
        Panel(
            "Unpaired by kind",
            [
                Target(
                    "sum by (kind) (rate(stateshift_comparisons_total"
                    f'{{{P}, result="unpaired"}}[{RATE}]))',
                    "{{kind}}",
                )
            ],
            "Answers or broadcasts one side sent and the other did not, within the pair timeout.",
            unit="ops",
            width=8,
        ),
        Panel(
            "Skipped comparisons",
            [
                Target(
                    f"sum by (reason) (rate(stateshift_comparisons_skipped_total{{{P}}}[{RATE}]))",
                    "{{reason}}",
                )
            ],
            "Pairs not compared: version skew, game not comparable, resync in progress.",
            unit="ops",
            width=8,
        ),
        Panel(
            "Resyncs",
            [
                Target(f"sum(increase(stateshift_resyncs_total{{{P}}}[{RATE}]))", "resyncs"),
                Target(
                    f"sum(increase(stateshift_resync_failures_total{{{P}}}[{RATE}]))",
                    "failed",
                ),
            ],
            "Games whose shadow copy was replaced from the primary (`--resync`).",
            width=8,
        ),
        Row("Shadow"),
        Panel(
            "Shadow drops by reason",
            [
                Target(
                    "sum by (reason) (increase(stateshift_proxy_shadow_drops_total"
                    f"{{{P}}}[{RATE}]))",
                    "{{reason}}",
                ),
            ],
            "Connections whose shadow stream was given up. Any drop fails the readiness gate.",
            width=8,
            thresholds=[1],
        ),
        Panel(
            "Shadow frames dropped by reason",
            [
                Target(
                    "sum by (reason) (increase(stateshift_proxy_shadow_dropped_frames_total"
                    f"{{{P}}}[{RATE}]))",
                    "{{reason}}",
                ),
                Target(
                    "sum by (reason) (increase(stateshift_proxy_games_not_comparable_total"
                    f"{{{P}}}[{RATE}]))",
                    "games not comparable: {{reason}}",
                ),
            ],
            "Client frames never mirrored, and games marked not comparable, by reason.",
            width=8,
        ),
        Panel(
            "Upstream connect failures",
            [
                Target(
                    "sum by (role, upstream, reason) (increase("
                    f"stateshift_proxy_upstream_connect_failures_total{{{P}}}[{RATE}]))",
                    "{{role}} ({{upstream}}): {{reason}}",
                )
            ],
            "Failed or lost upstream connections, by role, upstream and reason.",
            width=8,
        ),
        Panel(
            "Shadow buffers",
            [
                Target(
                    f"sum by (instance) (stateshift_proxy_shadow_buffer_frames{{{P}}})",
                    "{{instance}}",
                )
            ],
            "Client frames waiting for the shadow (all connections). A connection past its "
            "--shadow-buffer loses its shadow stream (reason overflow).",
            width=24,
            height=6,
        ),
        Row("Latency"),
        Panel(
            "Primary vs shadow latency",
            _quantiles("stateshift_upstream_latency_seconds", P, "role", "{{role}}"),
            "From a client frame reaching an upstream to that upstream's answer. Measured on "
            "mirrored sessions only: empty while mirroring is off (after finalize, or "
            "--no-mirror), where the proxy splices sessions without reading them; the new "
            "server's commit latency (Servers row) remains.",
            unit="s",
        ),
        Panel(
            "Shadow p99 / primary p99 (5m)",
            [
                Target(
                    'max by (instance) (stateshift:upstream_latency_seconds:p99_5m{role="shadow",'
                    f" {P}}})\n/\n"
                    'max by (instance) (stateshift:upstream_latency_seconds:p99_5m{role="primary",'
                    f" {P}}})",
                    "{{instance}}",
                )
            ],
            "The readiness gate `shadow_latency` (bar: 2x).",
            thresholds=[READY_MAX_LATENCY_RATIO],
        ),
        Row("Comparator"),
        Panel(
            "Comparator share of the core",
            [
                Target(
                    f"sum by (instance) (rate(stateshift_compare_busy_seconds_total{{{P}}}"
                    f"[{RATE}]))",
                    "{{instance}}",
                ),
            ],
            "Seconds the comparator held the event loop per second (pairing, comparing, "
            "recording findings, expiry): the share of the proxy's one core taken from relaying. "
            "Line: the StateshiftComparatorExpensive alert (25%).",
            unit="percentunit",
            width=6,
            thresholds=[ALERT_COMPARE_CORE_SHARE],
        ),
        Panel(
            "Comparator cost",
            _quantiles("stateshift_compare_seconds", P, "instance", "{{instance}}"),
            "Time to compare one pair: microseconds when the cheap equality decides, much more "
            "when DeepDiff runs (a mismatch, or a regex rule on a field that always differs).",
            unit="s",
            width=6,
        ),
        Panel(
            "Comparator lag",
            [
                Target(f"max by (instance) (stateshift_compare_lag_seconds{{{P}}})", "lag"),
            ],
            "Seconds since the newest record the comparator took. It takes every record in the "
            "event-loop turn that produced it, so this is the time since the last mirrored "
            "upstream frame (idle time), never a backlog.",
            unit="s",
            width=6,
        ),
        Panel(
            "Comparator backlog",
            [
                Target(
                    f"sum by (instance) (stateshift_compare_pending_pairs{{{P}}})",
                    "waiting for a partner {{instance}}",
                ),
                Target(
                    f"sum by (instance) (stateshift_proxy_tap_backlog{{{P}}})",
                    "tap backlog {{instance}}",
                ),
                Target(
                    f"sum by (instance) (increase(stateshift_proxy_tap_dropped_total{{{P}}}"
                    f"[{RATE}]))",
                    "tap dropped {{instance}}",
                ),
                Target(
                    f"sum by (instance) (increase(stateshift_compare_dropped_total{{{P}}}"
                    f"[{RATE}]))",
                    "pairer dropped {{instance}}",
                ),
            ],
            "Frames waiting for their partner (a slow shadow: unpaired after the pair timeout). "
            "The tap is emptied in the turn that fills it: its backlog is ~0 when scraped, and it "
            "drops records only when one turn reads over 65,536 upstream frames (a stalled loop). "
            "Past 100,000 waiting frames the pairer drops the oldest, uncompared.",
            width=6,
        ),
        Row("Servers"),
        Panel(
            "Messages handled by result",
            [
                Target(
                    "sum by (result) (rate(stateshift_server_messages_total"
                    f'{{instance=~"$server", path="game"}}[{RATE}]))',
                    "new: {{result}}",
                ),
                Target(
                    "sum by (result) (rate(stateshift_legacy_messages_total"
                    f'{{instance=~"$legacy", path="game"}}[{RATE}]))',
                    "old: {{result}}",
                ),
            ],
            "Client messages each server handled on games' paths (both get the same traffic while"
            " mirroring; the admin path's sweeps and backfills are left out).",
            unit="ops",
            width=8,
        ),
        Panel(
            "Errors by code",
            [
                Target(
                    "sum by (path, code) (rate(stateshift_server_errors_total"
                    f'{{instance=~"$server"}}[{RATE}]))',
                    "new {{path}}: {{code}}",
                ),
                Target(
                    "sum by (path, code) (rate(stateshift_legacy_errors_total"
                    f'{{instance=~"$legacy"}}[{RATE}]))',
                    "old {{path}}: {{code}}",
                ),
            ],
            "ERROR frames sent, by path kind and code. Clients see the `game` ones; `admin`"
            " errors are stateshift's own reads (a sweep's NOT_FOUND, a backfill's RATE_LIMITED).",
            unit="ops",
            width=8,
        ),
        Panel(
            "Commit latency p99",
            [
                Target(
                    "histogram_quantile(0.99, sum by (le) (rate("
                    f'stateshift_server_commit_seconds_bucket{{instance=~"$server"}}[{RATE}])))',
                    "new",
                ),
                Target(
                    "histogram_quantile(0.99, sum by (le) (rate("
                    f'stateshift_legacy_commit_seconds_bucket{{instance=~"$legacy"}}[{RATE}])))',
                    "old",
                ),
            ],
            "Time to make one group commit durable.",
            unit="s",
            width=8,
        ),
    ],
)

SWITCHOVER: Final = Dashboard(
    "stateshift-switchover",
    "stateshift: switchover",
    "The route on every proxy, the ramp, the readiness gates over time, and what clients "
    "and the primary do through each flip. Annotations mark route and mirroring changes "
    "and proxy restarts.",
    [
        Row("Route"),
        Panel(
            "Current primary per proxy",
            [
                Target(
                    f"max by (instance, upstream) (stateshift_route_primary{{{P}}}) == 1",
                    "{{instance}}: {{upstream}}",
                    instant=True,
                )
            ],
            "The upstream that is primary on each proxy (for all games, or most under a ramp).",
            kind="table",
            width=8,
        ),
        Panel(
            "Ramp share (new server primary)",
            [Target(f"max by (instance) (stateshift_route_ramp_percent{{{P}}})", "{{instance}}")],
            "Percent of games whose primary is the new server (100 after a flip). All proxies "
            "must show the same line.",
            unit="percent",
            width=8,
        ),
        Panel(
            "Mirroring",
            [Target(f"max by (instance) (stateshift_proxy_mirroring{{{P}}})", "{{instance}}")],
            "1 while traffic is mirrored to the shadow; 0 after finalize (no rollback then).",
            width=8,
        ),
        Row("Readiness gates (5m window, default thresholds)"),
        Panel(
            "Comparisons in window",
            [
                Target(
                    f"sum(increase(stateshift_comparisons_total{{{P}, {COMPARED}}}"
                    f"[{READY_WINDOW}]))",
                    "comparisons",
                )
            ],
            "Gate `comparisons`: at least 200 (fewer is inconclusive, never a pass).",
            width=8,
            thresholds=[READY_MIN_COMPARISONS],
        ),
        Panel(
            "Mismatch ratio in window",
            [
                Target(
                    f"sum(rate(stateshift_comparisons_total{{{P}, {BAD}}}[{READY_WINDOW}]))\n/\n"
                    f"sum(rate(stateshift_comparisons_total{{{P}, {COMPARED}}}"
                    f"[{READY_WINDOW}]))",
                    "fleet",
                )
            ],
            "Gate `mismatch_ratio`: at most 0.1%.",
            unit="percentunit",
            width=8,
            thresholds=[READY_MAX_MISMATCH_RATIO],
        ),
        Panel(
            "Diverged games and shadow drops",
            [
                Target(f"sum(stateshift_games_diverged{{{P}}})", "diverged"),
                Target(
                    f"sum(increase(stateshift_proxy_shadow_drops_total{{{P}}}[{READY_WINDOW}]))",
                    "shadow drops in window",
                ),
            ],
            "Gates `diverged` and `shadow_drops`: both must be 0.",
            width=8,
            thresholds=[1],
        ),
        Panel(
            "Shadow connected for every mirrored client",
            [
                Target(f"sum(stateshift_proxy_client_connections{{{P}}})", "clients"),
                Target(
                    f'sum(stateshift_proxy_upstream_connections{{{P}, role="shadow"}})',
                    "shadow connections",
                ),
            ],
            "Gate `shadow_connected`: the two lines must meet while mirroring.",
            width=12,
        ),
        Panel(
            "Shadow p99 / primary p99",
            [
                Target(
                    'max(stateshift:upstream_latency_seconds:p99_5m{role="shadow",'
                    f" {P}}})\n/\n"
                    'max(stateshift:upstream_latency_seconds:p99_5m{role="primary",'
                    f" {P}}})",
                    "worst proxy",
                )
            ],
            "Gate `shadow_latency`: at most 2x.",
            width=12,
            thresholds=[READY_MAX_LATENCY_RATIO],
        ),
        Row("Through each flip"),
        Panel(
            "Client connections",
            [
                Target(
                    f"sum by (instance) (stateshift_proxy_client_connections{{{P}}})",
                    "proxy {{instance}}",
                ),
                Target(
                    'sum(stateshift_server_connections{instance=~"$server", path="game"})',
                    "new server",
                ),
                Target('sum(stateshift_legacy_connections{instance=~"$legacy"})', "old server"),
            ],
            "A flip swaps the upstreams under the client sockets: the proxy line must not dip.",
        ),
        Panel(
            "Proxy connections by state",
            [
                Target(
                    f"sum by (state) (stateshift_proxy_connections{{{P}}})",
                    "{{state}}",
                )
            ],
            "Client connections on the proxies: mirrored, held (frames held during a flip's "
            "pause: back to 0 within seconds), relayed (not mirrored), spliced (after "
            "finalize), handshaking.",
        ),
        Panel(
            "Answers by primary upstream",
            [
                Target(
                    "sum by (upstream) (rate(stateshift_proxy_frames_total"
                    f'{{{P}, direction="upstream", role="primary"}}[{RATE}]))',
                    "{{upstream}}",
                )
            ],
            "Who answers the clients: the lines cross at a flip or a rollback.",
            unit="ops",
        ),
        Panel(
            "Error ratio: new vs old",
            [
                Target("stateshift:server_error_ratio:rate5m", "new server {{fleet}}"),
                Target("stateshift:legacy_error_ratio:rate5m", "old server {{fleet}}"),
            ],
            "ERROR frames per message over 5 minutes; both see the same traffic while "
            "mirroring. Alert: new above old by 1 point after a route change.",
            unit="percentunit",
            width=8,
        ),
        Panel(
            "Upstream connect failures",
            [
                Target(
                    "sum by (role, upstream) (increase("
                    f"stateshift_proxy_upstream_connect_failures_total{{{P}}}[{RATE}]))",
                    "{{role}} ({{upstream}})",
                )
            ],
            "Failed or lost upstream connections; primary failures are client-visible.",
            width=8,
        ),
        Panel(
            "Primary latency",
            _quantiles(
                "stateshift_upstream_latency_seconds",
                f'{P}, role="primary"',
                "upstream",
                "{{upstream}}",
            ),
            "The primary's answer latency, by upstream: it should not jump at a flip. Empty "
            "once mirroring is off (finalize): spliced sessions are not measured.",
            unit="s",
            width=8,
        ),
    ],
    [
        Annotation(
            "Route change",
            f"changes(stateshift_route_ramp_percent{{{P}}}[1m]) > 0",
            "route changed on {{instance}}",
            "orange",
        ),
        Annotation(
            "Switchover event",
            f"sum by (instance, kind, result) "
            f"(increase(stateshift_switchover_events_total{{{P}}}[1m])) > 0",
            "{{kind}} {{result}} on {{instance}}",
            "blue",
        ),
        Annotation(
            "Mirroring change",
            f"changes(stateshift_proxy_mirroring{{{P}}}[1m]) > 0",
            "mirroring changed on {{instance}}",
            "purple",
        ),
        Annotation(
            "Proxy restart",
            f'resets(stateshift_proxy_frames_total{{{P}, direction="client"}}[1m]) > 0\n'
            f"or resets(stateshift_proxy_spliced_connections_total{{{P}}}[1m]) > 0",
            "proxy {{instance}} restarted",
            "red",
        ),
    ],
)

DASHBOARDS: Final = {"parallel-run.json": PARALLEL_RUN, "switchover.json": SWITCHOVER}


# ---------------------------------------------------------------------------- files


def generated() -> dict[Path, str]:
    """Every generated file and its content."""
    files = {
        GRAFANA_DIR / name: json.dumps(dashboard_json(board), indent=2) + "\n"
        for name, board in DASHBOARDS.items()
    }
    files[RULES_PATH] = rules_yaml()
    return files


def stale() -> list[Path]:
    """Generated files whose committed content differs (or that are missing)."""
    return [
        path for path, text in generated().items() if not path.exists() or path.read_text() != text
    ]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--check", action="store_true", help="only report stale files")
    args = parser.parse_args(argv)
    if args.check:
        paths = stale()
        for path in paths:
            print(f"stale: {path.relative_to(HERE.parent)}", file=sys.stderr)
        return 1 if paths else 0
    for path, text in generated().items():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        print(f"wrote {path.relative_to(HERE.parent)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
