"""Snapshot sweeps: the pure judgement of one game (no sockets), then whole sweeps over two
real servers fed the same updates, healthy and with a real logic divergence."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from compare.admin import AdminClient
from compare.rules import defaults
from compare.sweep import EXCLUDED, SKEW, VANISHED, assess, plan, sweep
from legacy.service import LegacyServer
from server.app import StateServer
from tests.proxy.conftest import Client, start_legacy, start_new, token

ADMIN = token("ops", "admin")
RULES = defaults().for_type("STATE")


def state(game_id: str = "g1", version: int = 4, **changes: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "game_id": game_id,
        "status": "active",
        "current_player": None,
        "scores": {"alice": 3, "bob": 0},
        "timer": {"alice": 60000, "bob": 60000},
        "settings": {},
        "version": version,
        "updated_at": "2026-11-26T10:00:00.123Z",
    }
    base.update(changes)
    return base


# ------------------------------------------------------------------ pure core


def test_plan_reads_every_game_of_either_side_in_id_order() -> None:
    games, excluded = plan({"b": 1, "a": 2}, {"c": 1, "a": 2})
    assert games == ["a", "b", "c"]
    assert excluded == []


def test_plan_leaves_out_games_the_caller_skips() -> None:
    games, excluded = plan({"a": 1, "b": 1}, {"b": 1, "c": 1}, skip=lambda g: g == "b")
    assert games == ["a", "c"]
    assert excluded == [("b", EXCLUDED)]


def test_equal_states_at_equal_versions_match_despite_updated_at() -> None:
    outcome = assess("g1", state(), state(updated_at="2030-01-01T00:00:00.000Z"), RULES)
    assert outcome.matched
    assert not outcome.transient


def test_different_scores_at_equal_versions_are_a_finding_with_a_normalised_path() -> None:
    outcome = assess("g1", state(), state(scores={"alice": 4, "bob": 0}), RULES)
    assert outcome.finding is not None
    assert outcome.finding.verdict.paths == ["root['scores'][*]"]
    # the diff and its text name the paths as the finding does: from the state
    assert "root['scores']['alice']" in outcome.finding.verdict.text
    assert "root['state']" not in str(outcome.finding.verdict.diff)
    assert (outcome.finding.primary_version, outcome.finding.shadow_version) == (4, 4)
    assert outcome.finding.missing is None
    assert not outcome.transient


def test_different_versions_are_skew_not_a_finding() -> None:
    outcome = assess("g1", state(version=4), state(version=5, status="paused"), RULES)
    assert outcome.finding is None
    assert outcome.skipped == SKEW
    assert outcome.transient


@pytest.mark.parametrize("missing", ["primary", "shadow"])
def test_a_game_on_one_side_only_is_a_finding_naming_the_side_lacking_it(missing: str) -> None:
    primary = None if missing == "primary" else state()
    shadow = None if missing == "shadow" else state()
    outcome = assess("g1", primary, shadow, RULES)
    assert outcome.finding is not None
    assert outcome.finding.missing == missing
    assert outcome.finding.verdict.paths == ["root"]
    assert outcome.transient  # read once more before it counts


def test_a_game_gone_from_both_sides_is_skipped() -> None:
    assert assess("g1", None, None, RULES).skipped == VANISHED


# ------------------------------------------------------------------ real servers


async def play(url: str, game_id: str) -> None:
    """The same short game on any server: two players join, deltas, a set, a status."""
    alice = await Client.open(f"{url}/v1/games/{game_id}")
    bob = await Client.open(f"{url}/v1/games/{game_id}")
    try:
        await alice.request(type="CONNECT", id="c", token=token("alice"))
        await bob.request(type="CONNECT", id="c", token=token("bob"))
        steps: list[dict[str, Any]] = [
            {"status": "active", "current_player": "alice"},
            {"score_deltas": {"alice": 5}},
            {"scores": {"bob": 2}, "score_deltas": {"bob": 1}},
            {"settings": {"mode": "blitz"}, "timer": {"alice": 1234}},
        ]
        for n, updates in enumerate(steps):
            msg_id = f"u{n}"
            await alice.send(type="STATE_UPDATE", id=msg_id, updates=updates)
            ack = await alice.until(lambda frame: frame.get("re") == msg_id)  # noqa: B023 (awaited in this iteration)
            assert ack["type"] == "ACK", ack
    finally:
        await alice.ws.close()
        await bob.ws.close()


async def run_sweep(primary_url: str, shadow_url: str, **kwargs: Any) -> Any:
    async with AdminClient(primary_url, ADMIN) as p, AdminClient(shadow_url, ADMIN) as s:
        return await sweep(p, s, defaults(), **kwargs)


async def test_sweep_of_two_healthy_servers_fed_the_same_games_finds_nothing(
    servers: tuple[LegacyServer, StateServer],
) -> None:
    old, new = servers
    for game_id in ("g1", "g2", "g3"):
        await play(old.url, game_id)
        await play(new.url, game_id)
    report = await run_sweep(old.url, new.url)
    assert report.findings == []
    assert (report.games, report.compared, report.matched) == (3, 3, 3)
    assert report.skipped == []
    assert report.ok


async def test_sweep_finds_a_real_score_divergence_at_its_path(tmp_path: Path) -> None:
    old = await start_legacy(tmp_path, "score-delta-off-by-one")
    new = await start_new(tmp_path)
    try:
        for game_id in ("g1", "g2"):
            await play(old.url, game_id)
            await play(new.url, game_id)
        async with AdminClient(new.url, ADMIN) as admin:
            await admin.import_state(state("only-new", 2))
        report = await run_sweep(old.url, new.url)
    finally:
        await new.stop()
        await old.stop()
    assert (report.games, report.compared, report.matched) == (3, 3, 0)
    diverged = {f.game_id: f for f in report.findings}
    assert set(diverged) == {"g1", "g2", "only-new"}
    for game_id in ("g1", "g2"):
        finding = diverged[game_id]
        assert finding.verdict.paths == ["root['scores'][*]"]
        assert finding.primary_version == finding.shadow_version == 6  # join, join, 4 updates
        assert finding.primary_state is not None
        assert finding.shadow_state is not None
        # the old server added one too many on each delta
        assert finding.primary_state["scores"] == {"alice": 6, "bob": 4}
        assert finding.shadow_state["scores"] == {"alice": 5, "bob": 3}
    assert diverged["only-new"].missing == "primary"
    assert not report.ok
    assert report.to_json()["findings"][0]["paths"] == ["root['scores'][*]"]


async def test_sweep_skips_games_the_caller_excludes(
    servers: tuple[LegacyServer, StateServer],
) -> None:
    old, new = servers
    async with AdminClient(old.url, ADMIN) as admin:
        await admin.import_state(state("g1"))
        await admin.import_state(state("g2"))
    async with AdminClient(new.url, ADMIN) as admin:
        await admin.import_state(state("g1"))
    report = await run_sweep(old.url, new.url, skip=lambda g: g == "g2")
    assert report.findings == []
    assert report.skipped == [("g2", EXCLUDED)]
    assert (report.games, report.compared, report.matched) == (2, 1, 1)
