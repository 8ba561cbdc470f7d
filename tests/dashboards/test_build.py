"""The dashboards and rules as files: generated from `dashboards.build` (one source of truth),
well-formed for Grafana's provisioning, every alert with a severity, a summary and an
existing runbook, and every metric name one the components declare (and `docs/metrics.md`
documents)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry, generate_latest

from compare.comparator import CompareMetrics
from dashboards import build
from legacy.metrics import Metrics as LegacyMetrics
from proxy.metrics import ProxyMetrics
from server.metrics import ServerMetrics
from tests.dashboards import promql
from tests.support import ROOT

RUNBOOKS = ROOT / "runbooks"
#: families (and recording rules) of the proxy and its comparator
PROXY_FAMILIES = (
    "stateshift_proxy_",
    "stateshift_compar",
    "stateshift_route_",
    "stateshift_games_",
    "stateshift_upstream_",
    "stateshift_mismatches",
    "stateshift_findings",
    "stateshift_resync",
    "stateshift:comparisons",
    "stateshift:mismatch_ratio",
    "stateshift:upstream_",
)


def test_committed_files_are_the_generated_ones():
    """Run `python -m dashboards.build` after editing dashboards/build.py."""
    assert build.stale() == []


def test_dashboards_have_the_panels_on_call_needs():
    boards = promql.dashboards()
    titles = {name: {p["title"] for p in board["panels"]} for name, board in boards.items()}
    assert {
        "Traffic by upstream",
        "Mismatch ratio (5m)",
        "Top mismatch paths (since the proxies started)",
        "Diverged games",
        "Unpaired by kind",
        "Shadow drops by reason",
        "Primary vs shadow latency",
        "Comparator lag",
        "Comparator cost",
    } <= titles["parallel-run.json"]
    assert {
        "Current primary per proxy",
        "Ramp share (new server primary)",
        "Comparisons in window",
        "Mismatch ratio in window",
        "Client connections",
    } <= titles["switchover.json"]
    notes = boards["switchover.json"]["annotations"]["list"]
    assert any(note["name"] == "Route change" for note in notes)


@pytest.mark.parametrize("name", sorted(build.DASHBOARDS))
def test_dashboard_is_provisionable_json(name: str):
    board = promql.dashboards()[name]
    assert board["uid"]
    assert board["title"]
    assert board["schemaVersion"] >= 36
    variables = {v["name"]: v for v in board["templating"]["list"]}
    assert {"datasource", "proxy", "server", "legacy"} <= set(variables)
    ids = [panel["id"] for panel in board["panels"]]
    assert len(ids) == len(set(ids))
    for panel in board["panels"]:
        grid = panel["gridPos"]
        assert grid["x"] + grid["w"] <= 24, panel["title"]
        if panel["type"] == "row":
            continue
        assert panel["targets"], panel["title"]
        for target in panel["targets"]:
            assert target["datasource"] == {"type": "prometheus", "uid": "${datasource}"}
            assert target["expr"].strip()
        for target in panel["targets"]:
            names = promql.metric_names(target["expr"])
            if any(name.startswith(PROXY_FAMILIES) for name in names):
                assert 'instance=~"$proxy"' in target["expr"], (
                    f"{panel['title']}: a proxy query follows the $proxy variable"
                )


def test_provisioning_points_at_the_datasource_the_dashboards_use():
    datasources = (build.HERE / "provisioning" / "datasources.yml").read_text()
    default = build.TEMPLATING[0]["current"]["value"]
    assert f"uid: {default}" in datasources
    assert "type: prometheus" in datasources
    providers = (build.HERE / "provisioning" / "dashboards.yml").read_text()
    assert "type: file" in providers
    assert "path:" in providers


def _anchors(markdown: str) -> set[str]:
    """GitHub's heading anchors."""
    out = set()
    for heading in re.findall(r"^#+ (.+)$", markdown, re.MULTILINE):
        slug = re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")
        out.add(slug)
    return out


@pytest.mark.parametrize("alert", build.ALERTS, ids=lambda a: a.alert)
def test_alert_has_severity_summary_and_an_existing_runbook(alert: build.Alert):
    assert alert.severity in ("critical", "warning", "info")
    assert alert.summary
    assert alert.description
    path = RUNBOOKS / alert.runbook_file
    assert path.is_file(), f"{alert.alert}: runbook {path} is missing"
    anchor = alert.runbook.partition("#")[2]
    if anchor:
        assert anchor in _anchors(path.read_text()), f"{alert.alert}: no heading #{anchor}"
    rules = build.RULES_PATH.read_text()
    assert f'runbook_url: "{build.RUNBOOK_BASE}{alert.runbook}"' in rules


def declared_series() -> set[str]:
    """Series names the components' metric classes declare (without running them)."""
    proxy = ProxyMetrics()
    proxy.watch(dict)
    CompareMetrics(proxy.registry)
    names = set()
    for registry in (proxy.registry, ServerMetrics().registry, LegacyMetrics().registry):
        assert isinstance(registry, CollectorRegistry)
        names |= promql.exported_series(generate_latest(registry).decode())
    return names


def documented_series() -> set[str]:
    """Series names `docs/metrics.md` lists (legacy families are documented by their code)."""
    text = (ROOT / "docs" / "metrics.md").read_text()
    names: set[str] = set()
    for name, kind in re.findall(r"^\| `(stateshift_\w+)` \| (\w+) \|", text, re.MULTILINE):
        if kind == "histogram":
            names.update(f"{name}{suffix}" for suffix in ("_bucket", "_sum", "_count"))
        else:
            names.add(name)
    return names


def test_every_metric_name_is_declared_by_a_component():
    assert promql.unknown_names(declared_series()) == {}


def test_every_metric_name_is_documented():
    legacy = {n for n in declared_series() if n.startswith("stateshift_legacy_")}
    assert promql.unknown_names(documented_series() | legacy) == {}


def test_metric_name_parser_ignores_functions_labels_and_keywords():
    expr = (
        'histogram_quantile(0.99, sum by (le) (rate(a_bucket{x="b_c", y=~"$proxy"}[5m])))\n'
        "/ on (instance) group_left (role) b offset 5m and bool c:d:e unless 1e-6"
    )
    assert promql.metric_names(expr) == {"a_bucket", "b", "c:d:e"}


def test_generated_rules_file_is_the_one_prometheus_reads(tmp_path: Path):
    assert build.main(["--check"]) == 0
