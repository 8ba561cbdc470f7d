"""What on-call sees, checked against real components: a proxy restart after finalize is
alerted, and the "current primary" under a ramp names the upstream serving most games.

Each test names one defect and failed because of it. Metrics come from real processes
(`stateshift legacy`, `stateshift serve`, `stateshift proxy` subprocesses on 127.0.0.1,
driven by real clients and the real `stateshift switchover` CLI); alert rules are evaluated by
promtool over series replayed from those real scrapes (so no test waits on Prometheus' clock:
timing never decides an outcome).
"""

from __future__ import annotations

import asyncio
import json
import shutil
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest

from dashboards import build
from stateshift.tokens import mint_token
from tests.dashboards.conftest import Servers
from tests.proxy.conftest import Client, token
from tests.support import (
    ROOT,
    TEST_SECRET,
    admin_url,
    cli_env,
    timeout,
)

pytestmark = pytest.mark.slow


# ------------------------------------------------------------------------------ helpers


def http_get(url: str) -> str:
    with urllib.request.urlopen(url, timeout=timeout(10)) as response:
        return str(response.read().decode())


def stateshift(*args: str) -> subprocess.CompletedProcess[str]:
    """Run the `stateshift` CLI as a migration engineer would (admin token in the env)."""
    env = cli_env(
        STATESHIFT_ADMIN_TOKEN=mint_token(TEST_SECRET, "review", "admin"),
        COLUMNS="200",
        NO_COLOR="1",
        TERM="dumb",
    )
    return subprocess.run(
        [sys.executable, "-m", "stateshift", *args],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env=env,
        timeout=timeout(60),
    )


def samples(exposition: str) -> dict[str, float]:
    """`name{labels}` -> value for every sample of a Prometheus text exposition."""
    out = {}
    for line in exposition.splitlines():
        if not line or line.startswith("#"):
            continue
        series, _, value = line.rpartition(" ")
        out[series] = float(value)
    return out


def value(exposition: str, series: str) -> float:
    found = samples(exposition)
    assert series in found, f"{series} not exported"
    return found[series]


async def play(url: str, game: str, player: str, updates: int = 5) -> None:
    """One player: CONNECT, a few acknowledged updates, a clean close."""
    client = await Client.open(f"{url}/v1/games/{game}")
    try:
        await client.request(type="CONNECT", id="c", token=token(player))
        for n in range(updates):
            await client.send(type="STATE_UPDATE", id=f"u{n}", updates={"settings": {"n": n}})
        await client.until(lambda frame: frame.get("re") == f"u{updates - 1}")
    finally:
        await client.ws.close()


def _quoted(text: str) -> str:
    """An annotation as promtool expects it, rendered for instance p1 (JSON is YAML)."""
    rendered = text.replace("{{ $labels.instance }}", "p1")
    assert "{{" not in rendered, f"cannot render {text!r}"
    return json.dumps(rendered)


def promtool_alerts(
    scrapes: list[tuple[str, int]],
    alert: str,
    eval_minute: int,
    tmp: Path,
    rules: Path | None = None,
) -> tuple[bool, str]:
    """Replay real scrapes of one instance (`p1`) as promtool input, one sample a minute
    (each exposition repeated `count` times), and say whether `alert` fires at
    `eval_minute` (promtool's own verdict on an expectation that it fires)."""
    binary = shutil.which("promtool")
    assert binary, "promtool is required (Debian package prometheus)"
    rule = next(a for a in build.ALERTS if a.alert == alert)
    parsed = [(samples(text), count) for text, count in scrapes]
    names = sorted(set().union(*(set(found) for found, _ in parsed)))
    series = []
    for name in names:
        values = []
        for found, count in parsed:
            values += [repr(found.get(name, 0.0))] * count
        labelled = name[:-1] + ',instance="p1"}' if "{" in name else name + '{instance="p1"}'
        series.append(f"      - series: '{labelled}'\n        values: '{' '.join(values)}'")
    test = (
        f"rule_files:\n  - {rules or build.RULES_PATH}\n"
        "evaluation_interval: 1m\n"
        "tests:\n"
        "  - interval: 1m\n"
        "    input_series:\n" + "\n".join(series) + "\n"
        "    alert_rule_test:\n"
        f"      - eval_time: {eval_minute}m\n"
        f"        alertname: {alert}\n"
        "        exp_alerts:\n"
        f"          - exp_labels: {{severity: {rule.severity}, instance: p1}}\n"
        "            exp_annotations:\n"
        f"              summary: {_quoted(rule.summary)}\n"
        f"              description: {_quoted(rule.description)}\n"
        f"              runbook_url: {_quoted(build.RUNBOOK_BASE + rule.runbook)}\n"
    )
    path = tmp / f"replay-{alert}.yml"
    path.write_text(test)
    result = subprocess.run(
        [binary, "test", "rules", str(path)], capture_output=True, text=True, timeout=timeout(60)
    )
    return result.returncode == 0, result.stdout + result.stderr


# ------------------------------------------------------------------------------ findings


def test_proxy_restart_after_finalize_fires_the_restart_alert(servers: Servers):
    """After `switchover finalize` the proxies stay in front of the new server and splice
    sessions (finalizing-and-decommissioning.md). A proxy restart then disconnects every
    client, yet StateshiftProxyRestarted (and the "Proxy restart" annotation) watch only
    `stateshift_proxy_frames_total{direction="client"}`, which spliced sessions never
    count: it stays 0 before and after the restart, `resets()` sees nothing, on-call is
    never told. (Also the runbook's "watch the proxies' ... frame counts instead".)"""
    proxy = servers.proxy("p")
    proxy.start()
    try:
        admin = admin_url(proxy, within=timeout(20))
        control = admin.replace("http://", "ws://")
        flipped = stateshift("switchover", "flip", "--proxy", control, "--force", "--reason", "t")
        assert flipped.returncode == 0, flipped.stdout + flipped.stderr
        final = stateshift("switchover", "finalize", "--proxy", control, "--yes")
        assert final.returncode == 0, final.stdout + final.stderr

        asyncio.run(play(proxy.url, "g1", "alice"))
        before = http_get(f"{admin}/metrics")
        # the finalized proxy did relay the player's traffic (as bytes)
        assert value(before, "stateshift_proxy_spliced_connections_total") == 1

        proxy.stop()  # the restart: its clients are disconnected
        proxy.start()
        admin = admin_url(proxy, within=timeout(20))
        restarted = http_get(f"{admin}/metrics")
        asyncio.run(play(proxy.url, "g1", "alice"))
        after = http_get(f"{admin}/metrics")
    finally:
        proxy.stop()

    fires, output = promtool_alerts(
        [(before, 6), (restarted, 1), (after, 10)],
        "StateshiftProxyRestarted",
        eval_minute=8,
        tmp=servers.tmp,
    )
    assert fires, "a finalized proxy's restart is invisible to StateshiftProxyRestarted:\n" + (
        output
    )


def test_current_primary_under_a_ramp_names_the_upstream_serving_most_games(servers: Servers):
    """`stateshift_route_primary` is documented (proxy/metrics.py, and the "Current primary
    per proxy" panel that reads it) as "1 for the upstream that is primary (for all games,
    or most under a ramp)". `switchover ramp 90` keeps the route's `primary` at old, so
    with 90% of the games served by the new server the panel and the metric still say
    `old` (on-call reads "the old server is primary")."""
    proxy = servers.proxy("p")
    proxy.start()
    try:
        admin = admin_url(proxy, within=timeout(20))
        control = admin.replace("http://", "ws://")
        ramp = stateshift("switchover", "ramp", "90", "--proxy", control, "--force")
        assert ramp.returncode == 0, ramp.stdout + ramp.stderr
        text = http_get(f"{admin}/metrics")
    finally:
        proxy.stop()
    assert value(text, "stateshift_route_ramp_percent") == 90
    primary = {
        upstream: value(text, f'stateshift_route_primary{{upstream="{upstream}"}}')
        for upstream in ("old", "new")
    }
    assert primary == {"old": 0, "new": 1}, (
        f"at a 90% ramp to new, 'Current primary per proxy' shows {primary}"
    )
