"""The comparator's alerts against a real proxy whose comparator eats its core.

The relay pours the tap into the comparator at the end of every event-loop turn that
produced records (`Tap.pour` -> `StateComparator.take`), and the comparator judges them there
and then: it cannot fall behind. However expensive comparing gets, its lag gauge stays the
time since the last mirrored frame, the tap's backlog is empty whenever it can be scraped,
and nothing is dropped; the cost is taken from relaying instead. Alerts on lag and drops
(StateshiftComparatorLagging, StateshiftComparatorDroppingTap) therefore stayed silent while
a rules file sent every pair to DeepDiff.

Real processes (`stateshift legacy`, `stateshift serve`, `stateshift proxy` with the shipped
rules, then with a rules file that excludes the volatile fields by regex instead of
`ignore_keys`, so that every pair pays DeepDiff) carry the same burst of heartbeats; the
proxy's `/metrics` is scraped before and after it. promtool then evaluates the rule file over
those scrapes held for 20 minutes (counters growing at the rate measured, gauges as read) and
says which comparator alerts fire. The verdict rests on a ratio (the time spent comparing
over the time the saturated proxy took), not on this machine's speed: with DeepDiff on every
pair most of the proxy's time goes to comparing; with the shipped rules a few per cent.
"""

from __future__ import annotations

import asyncio
import re
import shutil
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from compare.comparator import StateComparator
from compare.rules import defaults
from dashboards import build
from proxy.tap import Tap, TapRecord
from tests.dashboards.conftest import Servers
from tests.proxy.conftest import Client, token
from tests.support import ServerProcess, admin_url, proxy_args, timeout, wait_until

pytestmark = pytest.mark.slow

#: the shipped rules, written the expensive way: the volatile fields excluded by regex (the
#: cheap equality only skips `ignore_keys`, so every pair that differs in them pays DeepDiff)
REGEX_RULES = """\
[rules."*"]
exclude_regex_paths = [
    "\\\\['updated_at'\\\\]",
    "\\\\['server_time'\\\\]",
    "\\\\['session_id'\\\\]",
]

[rules.ERROR]
ignore_keys = ["message"]
"""
CONNECTIONS = 40
#: heartbeats per connection, sent at once (within the servers' burst of 100 messages)
BEATS = 90
#: minutes the measured state is held for promtool (the alerts' windows and `for`s fit in it)
MINUTES = 20
COMPARATOR_ALERTS = 'alertname=~"StateshiftComparator.*"'


@dataclass
class Window:
    """Two scrapes of a proxy's `/metrics` around a burst, and the seconds between them."""

    before: dict[str, float]
    after: dict[str, float]
    seconds: float

    def rate(self, series: str) -> float:
        return (self.after.get(series, 0.0) - self.before.get(series, 0.0)) / self.seconds


def samples(exposition: str) -> dict[str, float]:
    """`name{labels}` -> value for every sample of a Prometheus text exposition."""
    out = {}
    for line in exposition.splitlines():
        if line and not line.startswith("#"):
            series, _, value = line.rpartition(" ")
            out[series] = float(value)
    return out


async def scrape(admin: str) -> dict[str, float]:
    """GET the proxy's `/metrics` (on this loop: the clients keep reading meanwhile)."""
    host, port = admin.removeprefix("http://").rstrip("/").rsplit(":", 1)
    reader, writer = await asyncio.open_connection(host, int(port))
    try:
        writer.write(f"GET /metrics HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n".encode())
        async with asyncio.timeout(timeout()):
            raw = await reader.read()
    finally:
        writer.close()
    head, _, body = raw.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200"), head
    return samples(body.decode())


def answers_compared(found: dict[str, float]) -> float:
    return sum(
        value
        for series, value in found.items()
        if series.startswith("stateshift_comparisons_total{") and 'kind="answer"' in series
    )


async def burst(url: str, admin: str) -> Window:
    """`CONNECTIONS` players send `BEATS` heartbeats each at once through the proxy; the
    window runs from a scrape before the burst to the scrape that shows every answer
    compared (the proxy is saturated in between: everything was sent at the start)."""
    clients = [await Client.open(f"{url}/v1/games/g{n % 4}") for n in range(CONNECTIONS)]
    try:
        for n, client in enumerate(clients):
            connected = await client.request(type="CONNECT", id="c", token=token(f"p{n}"))
            assert connected["type"] == "CONNECTED", connected
        seen: dict[str, float] = {}

        async def compared(count: float) -> bool:
            seen.update(await scrape(admin))
            return answers_compared(seen) >= count

        await wait_until(lambda: compared(CONNECTIONS), what="the CONNECTs compared")
        before = await scrape(admin)
        started = time.monotonic()
        last = f"h{BEATS - 1}"
        readers = [
            asyncio.create_task(client.until(lambda frame: frame.get("re") == last))
            for client in clients
        ]
        for client in clients:
            for beat in range(BEATS):
                await client.send(type="HEARTBEAT", id=f"h{beat}")
        expected = answers_compared(before) + CONNECTIONS * BEATS
        await wait_until(
            lambda: compared(expected), within=timeout(60), every=0.05, what="every answer"
        )
        after = dict(seen)
        seconds = time.monotonic() - started
        await asyncio.gather(*readers)
        return Window(before, after, seconds)
    finally:
        for client in clients:
            await client.ws.close()


def measure(servers: Servers, name: str, *extra: str) -> Window:
    """Start a proxy in front of both servers, run the burst through it, stop it."""
    proxy = ServerProcess(
        proxy_args(
            servers.old.url,
            servers.new.url,
            servers.tmp / f"{name}.db",
            "--sweep-interval",
            "0",
            *extra,
        ),
        servers.tmp / f"{name}.log",
    )
    proxy.start()
    try:
        return asyncio.run(burst(proxy.url, admin_url(proxy, within=timeout(20))))
    finally:
        proxy.stop()


def replay(window: Window) -> list[str]:
    """promtool input series for instance p1: counters growing at the measured rate from
    their first value, gauges as last read, one sample a minute for `MINUTES` minutes."""
    lines = []
    for series in sorted(window.after):
        name = series.partition("{")[0]
        start = window.before.get(series, 0.0)
        if name.endswith(("_total", "_sum", "_count", "_bucket")):
            step = window.rate(series) * 60
            values = " ".join(repr(start + step * minute) for minute in range(MINUTES + 1))
        else:
            values = " ".join([repr(window.after[series])] * (MINUTES + 1))
        labelled = series[:-1] + ',instance="p1"}' if "{" in series else series + '{instance="p1"}'
        lines.append(f"      - series: '{labelled}'\n        values: '{values}'")
    return lines


def comparator_alerts_fire(window: Window, tmp: Path, name: str) -> tuple[bool, str]:
    """Whether any comparator alert of the rule file fires over the replayed window
    (promtool's own verdict: the `ALERTS` series it evaluated), and its output."""
    binary = shutil.which("promtool")
    assert binary, "promtool is required (Debian package prometheus)"
    test = (
        f"rule_files:\n  - {build.RULES_PATH}\n"
        "evaluation_interval: 1m\n"
        "tests:\n"
        "  - interval: 1m\n"
        "    input_series:\n" + "\n".join(replay(window)) + "\n"
        "    promql_expr_test:\n"
        f'      - expr: clamp_max(count(ALERTS{{alertstate="firing", {COMPARATOR_ALERTS}}}), 1)\n'
        f"        eval_time: {MINUTES}m\n"
        "        exp_samples:\n"
        "          - labels: '{}'\n"
        "            value: 1\n"
    )
    path = tmp / f"replay-{name}.yml"
    path.write_text(test)
    result = subprocess.run(
        [binary, "test", "rules", str(path)], capture_output=True, text=True, timeout=timeout(60)
    )
    return result.returncode == 0, result.stdout + result.stderr


def test_a_comparator_eating_the_proxys_core_fires_an_alert_and_a_cheap_one_does_not(
    servers: Servers,
):
    (servers.tmp / "regex.toml").write_text(REGEX_RULES)
    cheap = measure(servers, "cheap")
    costly = measure(servers, "costly", "--rules", str(servers.tmp / "regex.toml"))

    share = {
        label: window.rate("stateshift_compare_busy_seconds_total")
        for label, window in (("cheap", cheap), ("costly", costly))
    }
    for window in (cheap, costly):
        # what the old alerts watched: nothing to see, however much comparing costs
        assert window.after["stateshift_proxy_tap_dropped_total"] == 0
        assert window.after["stateshift_proxy_tap_backlog"] == 0
        assert window.after["stateshift_compare_lag_seconds"] < 30

    fires, output = comparator_alerts_fire(costly, servers.tmp, "costly")
    assert fires, (
        f"comparing took {share['costly']:.0%} of the proxy's time (shipped rules: "
        f"{share['cheap']:.0%}) and no comparator alert fires:\n{output}"
    )
    fires, output = comparator_alerts_fire(cheap, servers.tmp, "cheap")
    assert not fires, (
        f"the shipped rules ({share['cheap']:.0%} of the proxy's time) fire a comparator "
        f"alert:\n{output}"
    )


class SlowStore:
    """A finding store whose every write blocks the loop for `seconds` (SQLite committing a
    finding: WAL mode, synchronous FULL, an fsync per commit)."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.ids = 0

    def add(self, finding: dict[str, Any]) -> int:
        time.sleep(self.seconds)
        self.ids += 1
        return self.ids


def expensive_alert_series() -> str:
    """The series whose rate StateshiftComparatorExpensive compares with its threshold."""
    (alert,) = [a for a in build.ALERTS if a.alert == "StateshiftComparatorExpensive"]
    found = re.search(r"rate\((\w+)(?:\{[^}]*\})?\[", alert.expr)
    assert found is not None, alert.expr
    return found.group(1)


def test_the_comparator_cost_alert_counts_the_time_findings_take_from_the_relay():
    """StateshiftComparatorExpensive says it fires when comparing takes over a quarter of the
    proxy's core, 'usually ... or a storm of mismatches'. The series it reads was observed
    around `compare()` only: a mismatch's finding (written to SQLite in the relay's turn)
    and every unpaired finding took the loop's time unseen. Here a storm of findings takes
    nearly all the time the comparator held the loop; the alert's series must show most
    of it."""
    registry = CollectorRegistry()
    store = SlowStore(0.05)
    comparator = StateComparator(Tap(), defaults(), store, registry)  # type: ignore[arg-type]
    series = expensive_alert_series()
    before = registry.get_sample_value(series) or 0.0
    items: list[TapRecord] = []
    for game in range(4):
        game_id = f"g{game}"
        primary = {
            "type": "STATE",
            "game_id": game_id,
            "version": 2,
            "state": {"version": 2, "scores": {"a": 2}},
        }
        shadow = primary | {"state": {"version": 2, "scores": {"a": 9}}}
        items.append(TapRecord(1, "upstream", "primary", "old", 0.0, game_id, b"", primary))
        items.append(TapRecord(1, "upstream", "shadow", "new", 0.0, game_id, b"", shadow))
    started = time.perf_counter()
    comparator.take(items)
    held = time.perf_counter() - started
    assert store.ids == 4  # four games diverged: four findings
    measured = (registry.get_sample_value(series) or 0.0) - before
    assert measured >= 0.5 * held, (
        f"{series} grew by {measured:.4f} s while the comparator held the loop {held:.4f} s"
    )
