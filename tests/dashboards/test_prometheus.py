"""End to end with a real Prometheus: the reference old server (with one injected
divergence), the new server and two proxies (the second with its shadow down) run as
subprocesses, clients play through the proxies, and a real `prometheus` scrapes every
`/metrics` each second with the rules loaded. Then every dashboard query returns data, every
rule evaluates cleanly, and every metric name the dashboards and rules use is exported by a
running component."""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import re
import shutil
import socket
import subprocess
import time
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from dashboards import build
from tests.dashboards import promql
from tests.proxy.conftest import Client, token
from tests.support import ServerProcess, admin_url, timeout

pytestmark = pytest.mark.slow

#: one injected divergence: the old server adds one to every score delta
FAULT = ("--fault", "score-delta-off-by-one")


def free_port() -> int:
    """A port nobody listens on (closed again at once)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def poll(condition: Callable[[], bool], within: float, what: str) -> None:
    """Wait for `condition` (a synchronous `wait_until`)."""
    deadline = time.monotonic() + within
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.2)


def http_get(url: str) -> str:
    with urllib.request.urlopen(url, timeout=timeout(10)) as response:
        return str(response.read().decode())


@dataclass
class Prometheus:
    url: str

    def api(self, path: str, **params: str) -> Any:
        query = urllib.parse.urlencode(params)
        body = json.loads(http_get(f"{self.url}/api/v1/{path}?{query}"))
        assert body["status"] == "success", body
        return body["data"]

    def query(self, expr: str) -> list[dict[str, Any]]:
        data = self.api("query", query=expr)
        result = data["result"]
        if data["resultType"] == "scalar":
            return [{"value": result}]
        return list(result)


@dataclass
class Stack:
    prometheus: Prometheus
    #: the /metrics text of each component, read after the traffic
    expositions: dict[str, str]


def start_proxy(args: list[str], log: Path) -> tuple[ServerProcess, str]:
    """Start `stateshift proxy`; return it and its admin (metrics) URL."""
    proxy = ServerProcess(["proxy", *args], log)
    proxy.start()
    return proxy, admin_url(proxy, within=timeout(20))


async def play(via_a: str, via_b: str) -> None:
    """Clients on both proxies: concurrent score updates (the old server's fault makes them
    diverge), settings-only updates (they match) and one unknown message type (an ERROR)."""
    clients: list[Client] = []
    try:

        async def player(url: str, game: str, name: str, rounds: int, scores: bool) -> None:
            client = await Client.open(f"{url}/v1/games/{game}")
            clients.append(client)
            await client.request(type="CONNECT", id="c", token=token(name))
            for n in range(rounds):
                updates: dict[str, Any] = {"settings": {"turn": f"{name}-{n}"}}
                if scores:
                    updates["score_deltas"] = {name: 1}
                await client.send(type="STATE_UPDATE", id=f"u{n}", updates=updates)
            await client.until(lambda f: f.get("re") == f"u{rounds - 1}")
            await client.request(type="FLY", id="x")

        await asyncio.gather(
            player(via_a, "diverging", "p1", 10, scores=True),
            player(via_a, "diverging", "p2", 10, scores=True),
            player(via_a, "calm", "p3", 20, scores=False),
            player(via_b, "unmirrored", "p4", 10, scores=False),
        )
    finally:
        for client in clients:
            await client.ws.close()


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    binary = shutil.which("prometheus")
    assert binary, "prometheus is required (Debian package prometheus; scripts/test.sh)"
    tmp = tmp_path_factory.mktemp("prometheus-e2e")
    processes: list[ServerProcess] = []
    prometheus: subprocess.Popen[bytes] | None = None
    try:
        old = ServerProcess(
            ["legacy", "--port", "0", "--data", str(tmp / "old.jsonl"), *FAULT],
            tmp / "old.log",
        )
        processes.append(old)
        old_url = old.start()
        new = ServerProcess(["serve", "--port", "0", "--db", str(tmp / "new.db")], tmp / "new.log")
        processes.append(new)
        new_url = new.start()
        common = ["--listen", "127.0.0.1:0", "--admin", "127.0.0.1:0", "--sweep-interval", "0"]
        proxy_a, admin_a = start_proxy(
            ["--old", old_url, "--new", new_url, "--state", str(tmp / "a.db"), *common],
            tmp / "proxy-a.log",
        )
        processes.append(proxy_a)
        dead = f"ws://127.0.0.1:{free_port()}"  # proxy b's shadow is down
        proxy_b, admin_b = start_proxy(
            ["--old", old_url, "--new", dead, "--state", str(tmp / "b.db"), *common],
            tmp / "proxy-b.log",
        )
        processes.append(proxy_b)

        targets = {
            "stateshift-proxy": [admin_a, admin_b],
            "stateshift-new": [new_url.replace("ws://", "http://")],
            "stateshift-old": [old_url.replace("ws://", "http://")],
        }
        port = free_port()
        config = {
            "global": {"scrape_interval": "1s", "scrape_timeout": "1s"}
            | {"evaluation_interval": "1s"},
            "rule_files": [str(build.RULES_PATH)],
            "scrape_configs": [
                {
                    "job_name": job,
                    "static_configs": [
                        {"targets": [url.removeprefix("http://").rstrip("/") for url in urls]}
                    ],
                }
                for job, urls in targets.items()
            ],
        }
        (tmp / "prometheus.yml").write_text(json.dumps(config))  # JSON is YAML
        with (tmp / "prometheus.log").open("wb") as log:
            prometheus = subprocess.Popen(
                [
                    binary,
                    f"--config.file={tmp / 'prometheus.yml'}",
                    f"--storage.tsdb.path={tmp / 'data'}",
                    f"--web.listen-address=127.0.0.1:{port}",
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        api = Prometheus(f"http://127.0.0.1:{port}")

        def ready() -> bool:
            assert prometheus is not None
            assert prometheus.poll() is None, (tmp / "prometheus.log").read_text()
            with contextlib.suppress(OSError):
                return "Ready" in http_get(f"{api.url}/-/ready")
            return False

        poll(ready, timeout(30), "prometheus to be ready")

        def all_up() -> bool:
            active = api.api("targets")["activeTargets"]
            return len(active) == 4 and all(t["health"] == "up" for t in active)

        poll(all_up, timeout(30), "every target scraped")
        asyncio.run(play(proxy_a.url, proxy_b.url))

        def diverged() -> bool:
            found = api.query('sum(stateshift_findings_total{job="stateshift-proxy"}) > 0')
            return bool(found)

        poll(diverged, timeout(30), "the divergence in prometheus")
        expositions = {
            name: http_get(f"{url.replace('ws://', 'http://').rstrip('/')}/metrics")
            for name, url in (("old", old_url), ("new", new_url), ("a", admin_a), ("b", admin_b))
        }
        yield Stack(api, expositions)
    finally:
        if prometheus is not None:
            prometheus.terminate()
            try:
                prometheus.wait(timeout(15))
            except subprocess.TimeoutExpired:
                prometheus.kill()
                prometheus.wait()
        for process in reversed(processes):
            process.stop()


def has_data(result: list[dict[str, Any]]) -> bool:
    """At least one sample with a number (not NaN)."""
    return any(not math.isnan(float(sample["value"][1])) for sample in result)


def test_every_dashboard_panel_and_recording_rule_returns_data(stack: Stack):
    queries = [query for query in promql.all_queries() if query.must_return_data]
    empty: dict[str, str] = {}

    def all_return_data() -> bool:
        empty.clear()
        for query in queries:
            if not has_data(stack.prometheus.query(query.resolved())):
                empty[query.where] = query.resolved()
        return not empty

    with contextlib.suppress(AssertionError):
        poll(all_return_data, timeout(30), "every query to return data")
    assert empty == {}


def test_every_query_is_valid_promql_for_prometheus(stack: Stack):
    for query in promql.all_queries():
        stack.prometheus.api("query", query=query.resolved())  # raises on a parse error


def test_every_rule_evaluates_without_error(stack: Stack):
    def evaluated() -> bool:
        rules = [r for g in stack.prometheus.api("rules")["groups"] for r in g["rules"]]
        return len(rules) == len(build.RECORDS) + len(build.ALERTS) and all(
            r.get("lastEvaluation", "").startswith("2") and r["health"] != "unknown" for r in rules
        )

    poll(evaluated, timeout(30), "every rule evaluated")
    groups = stack.prometheus.api("rules")["groups"]
    problems = {
        r.get("name"): r.get("lastError") for g in groups for r in g["rules"] if r["health"] != "ok"
    }
    assert problems == {}


def test_alerts_loaded_with_severity_summary_and_runbook(stack: Stack):
    groups = stack.prometheus.api("rules", type="alert")["groups"]
    alerts = {r["name"]: r for g in groups for r in g["rules"]}
    assert set(alerts) == {alert.alert for alert in build.ALERTS}
    for name, rule in alerts.items():
        assert rule["labels"]["severity"] in ("critical", "warning", "info"), name
        assert rule["annotations"]["summary"], name
        assert rule["annotations"]["runbook_url"].startswith(build.RUNBOOK_BASE), name


def test_every_metric_name_used_is_exported_by_a_running_component(stack: Stack):
    exported: set[str] = set()
    for text in stack.expositions.values():
        exported |= promql.exported_series(text)
    assert promql.unknown_names(exported) == {}
    # and Prometheus has scraped each of them (the families with samples)
    used = set().union(*(promql.metric_names(q.expr) for q in promql.all_queries()))
    stored = set(stack.prometheus.api("label/__name__/values"))
    unscraped = {
        name
        for name in used - promql.recorded()
        if name not in stored
        and any(
            re.search(rf"^{re.escape(name)}[{{ ]", text, re.MULTILINE)
            for text in stack.expositions.values()
        )
    }
    assert unscraped == set()
