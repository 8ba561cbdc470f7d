"""The load generator against real servers on loopback: its counts add up with the servers'
versions, every invalid message gets its documented error, and the CLI reports it."""

from __future__ import annotations

import asyncio
import json
import random
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

from compare.admin import AdminClient
from legacy.service import LegacyServer
from loadgen.plan import MAX_CONNECTION_RATE, PlayerPlan, connection_rate, percentile
from loadgen.runner import LoadGen, LoadReport, run_load
from server.app import StateServer
from stateshift.tokens import mint_token
from tests.proxy.conftest import start_legacy, start_new
from tests.support import ROOT, TEST_SECRET, cli_env, running, timeout


async def check_versions(url: str, report: LoadReport) -> None:
    """Each game's version on the server is exactly the changes the run accounts for."""
    async with AdminClient(url, mint_token(TEST_SECRET, "ops", "admin")) as admin:
        for game_id, count in report.stats.games.items():
            state = await admin.get_state(game_id)
            assert state is not None, game_id
            assert state["version"] == count.versions, (game_id, count)
            assert count.last_version <= state["version"]


@pytest.mark.parametrize("server", ["new", "old"])
async def test_counts_add_up_with_the_servers_versions(tmp_path: Path, server: str):
    started: StateServer | LegacyServer = (
        await start_new(tmp_path) if server == "new" else await start_legacy(tmp_path)
    )
    try:
        report = await run_load(
            started.url,
            TEST_SECRET,
            games=2,
            players=3,
            rate=90,
            duration=2.0,
            invalid_ratio=0.1,
            reconnect_every=2.0,
            seed=7,
        )
        assert report.ok, report.to_dict()
        stats = report.stats
        assert stats.acked == stats.sent["STATE_UPDATE"] > 50
        assert stats.acked == sum(g.acked for g in stats.games.values())
        assert all(g.joins == 3 for g in stats.games.values())
        assert not stats.unexpected_errors
        # every invalid message got exactly its documented error
        assert sum(stats.invalid_sent.values()) == sum(stats.expected_errors.values()) > 0
        assert set(stats.expected_errors) <= {"BAD_MESSAGE", "UNKNOWN_TYPE"}
        assert stats.errors == stats.expected_errors
        assert stats.reconnects > 0
        assert stats.unexpected_closes == stats.unanswered == stats.missed_broadcasts == 0
        assert len(stats.latencies) == stats.acked
        await check_versions(started.url, report)
    finally:
        await started.stop()


async def test_broadcasts_a_player_never_got_are_counted_and_fail_the_run(tmp_path: Path):
    """A rehearsal ran the old server as primary with `drop-broadcast:0.1` (a tenth of the
    STATE broadcasts never sent) and the load generator said ok, 0 errors: it learned from
    the broadcasts without checking them. Every connection gets every version of its game
    from its CONNECTED on: a version skipped is a broadcast missed."""
    started = await start_legacy(tmp_path, "drop-broadcast:0.5")
    try:
        report = await run_load(
            started.url, TEST_SECRET, games=1, players=3, rate=60, duration=1.5, seed=3
        )
        assert report.stats.acked > 10
        assert report.stats.missed_broadcasts > 0
        assert not report.ok
        assert report.to_dict()["missed_broadcasts"] == report.stats.missed_broadcasts
    finally:
        await started.stop()


async def test_held_deltas_are_all_answered_before_the_hold_returns(tmp_path: Path):
    server = await start_new(tmp_path)
    try:
        gen = LoadGen(server.url, TEST_SECRET, 1, 2, rate=60, duration=30.0, seed=3)
        task = asyncio.create_task(gen.run())
        await asyncio.sleep(0.5)
        gen.hold_deltas(True)
        await gen.deltas_answered(within=timeout())
        sent = gen.stats.sent["STATE_UPDATE"]
        await asyncio.sleep(0.5)
        assert gen.stats.pending_deltas == 0  # none sent while held
        assert gen.stats.sent["STATE_UPDATE"] > sent  # but other updates go on
        gen.hold_deltas(False)
        gen.stop()
        report = await asyncio.wait_for(task, timeout())
        assert report.ok, report.to_dict()
        await check_versions(server.url, report)
    finally:
        await server.stop()


def test_a_connection_never_gets_more_than_the_protocol_allows():
    assert connection_rate(100, 4) == 25
    assert connection_rate(10_000, 4) == MAX_CONNECTION_RATE < 50
    assert connection_rate(100, 0) == 0.0


def test_the_host_starts_the_game_and_held_deltas_are_never_chosen():
    host = PlayerPlan("p0", "g", True, random.Random(1), players=["p0", "p1"])
    assert host.next_update() == {"status": "active", "current_player": "p0"}
    host.hold_deltas = True
    kinds: Counter[str] = Counter()
    for _ in range(2000):
        updates = host.next_update()
        kinds.update(updates.keys())
        assert "score_deltas" not in updates
        if "status" in updates:
            assert updates["status"] in ("active", "paused")
        if "current_player" in updates:
            assert updates["current_player"] in ("p0", "p1")
    assert {"status", "timer", "settings", "current_player"} <= set(kinds)


def test_percentiles_use_the_nearest_rank():
    samples = [float(n) for n in range(1, 101)]
    assert percentile(samples, 50) == 50.0
    assert percentile(samples, 99) == 99.0
    assert percentile(samples, 100) == 100.0
    assert percentile([], 50) is None


def test_the_cli_reports_json_and_exits_0(tmp_path: Path):
    with running(["serve", "--port", "0", "--db", str(tmp_path / "n.db")], tmp_path / "s.log") as s:
        done = subprocess.run(
            [
                *(sys.executable, "-m", "stateshift", "loadgen", "--url", s.url),
                *("--games", "2", "--players", "2", "--rate", "40", "--duration", "1", "--json"),
            ],
            capture_output=True,
            text=True,
            env=cli_env(),
            cwd=ROOT,
            timeout=timeout(60),
        )
    assert done.returncode == 0, done.stderr
    doc = json.loads(done.stdout)
    assert doc["ok"] is True
    assert doc["acked"] == doc["sent"]["STATE_UPDATE"] > 0
    assert set(doc["latency_ms"]) == {"p50", "p95", "p99", "max"}


def test_the_cli_refuses_a_url_that_is_not_ws():
    done = subprocess.run(
        [sys.executable, "-m", "stateshift", "loadgen", "--url", "http://x:1"],
        capture_output=True,
        text=True,
        env=cli_env(),
        cwd=ROOT,
        timeout=timeout(60),
    )
    assert done.returncode == 2
    assert "ws://" in done.stderr
