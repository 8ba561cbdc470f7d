"""Readiness gates without sockets: every result kind, too little traffic never passes,
thresholds from TOML and flags, several proxies combined."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from switchover.gates import (
    Gate,
    Thresholds,
    ThresholdsError,
    after_flip,
    breached,
    combine,
    evaluate,
    ready,
    verdict,
)
from switchover.manager import same_route, target


def healthy(**changes: Any) -> dict[str, Any]:
    figures: dict[str, Any] = {
        "window": 300.0,
        "comparisons": 1000,
        "mismatches": 0,
        "diverged": 0,
        "mirrored_connections": 20,
        "shadow_connected": 20,
        "shadow_drops": 0,
        "primary_p99": 0.010,
        "shadow_p99": 0.015,
        "complete": True,
    }
    figures.update(changes)
    return figures


def by_name(gates: list[Gate]) -> dict[str, Gate]:
    return {g.name: g for g in gates}


def test_healthy_figures_pass_every_gate():
    gates = evaluate(healthy(), Thresholds())
    assert [g.name for g in gates] == [
        "comparisons",
        "mismatch_ratio",
        "diverged",
        "comparable",
        "shadow_connected",
        "shadow_drops",
        "shadow_latency",
    ]
    assert {g.result for g in gates} == {"pass"}
    assert ready(gates)
    assert verdict(gates) == "pass"


def test_no_traffic_is_inconclusive_never_a_pass():
    figures = healthy(
        comparisons=0,
        mismatches=0,
        mirrored_connections=0,
        shadow_connected=0,
        primary_p99=None,
        shadow_p99=None,
    )
    gates = by_name(evaluate(figures, Thresholds()))
    assert gates["comparisons"].result == "inconclusive"
    assert gates["mismatch_ratio"].result == "inconclusive"
    assert gates["mismatch_ratio"].figure is None
    assert gates["shadow_latency"].result == "inconclusive"
    assert verdict(gates.values()) == "inconclusive"
    assert not ready(gates.values())
    assert breached(gates.values()) == []


def test_fewer_comparisons_than_the_minimum_is_inconclusive_even_when_all_match():
    gates = by_name(evaluate(healthy(comparisons=199), Thresholds(min_comparisons=200)))
    assert gates["comparisons"].result == "inconclusive"
    assert (gates["comparisons"].figure, gates["comparisons"].threshold) == (199, 200)
    assert gates["mismatch_ratio"].result == "pass"
    assert verdict(gates.values()) == "inconclusive"


def test_the_window_being_incomplete_is_said_in_the_detail():
    gate = evaluate(healthy(comparisons=10, complete=False), Thresholds())[0]
    assert "less than the window" in gate.detail


@pytest.mark.parametrize(
    ("changes", "failing"),
    [
        ({"mismatches": 2}, "mismatch_ratio"),  # 2/1000 > 0.001
        ({"diverged": 1}, "diverged"),
        ({"shadow_connected": 19}, "shadow_connected"),
        ({"shadow_drops": 1}, "shadow_drops"),
        ({"shadow_p99": 0.031}, "shadow_latency"),  # > 2 x 10 ms + 10 ms
    ],
)
def test_each_gate_fails_on_its_own_figure(changes: dict[str, Any], failing: str):
    gates = evaluate(healthy(**changes), Thresholds())
    assert [g.name for g in breached(gates)] == [failing]
    assert verdict(gates) == "fail"
    assert not ready(gates)


def test_a_failure_wins_over_an_inconclusive_gate():
    gates = evaluate(healthy(comparisons=10, mismatches=5), Thresholds())
    assert verdict(gates) == "fail"
    assert by_name(gates)["mismatch_ratio"].figure == 0.5


def test_thresholds_at_their_bound_pass():
    # ratio exactly 0.001, p99 exactly 2x + the slack
    figures = healthy(mismatches=1, shadow_p99=0.030)
    assert ready(evaluate(figures, Thresholds()))


def test_latency_without_samples_on_one_side_is_inconclusive():
    gate = by_name(evaluate(healthy(shadow_p99=None), Thresholds()))["shadow_latency"]
    assert gate.result == "inconclusive"
    assert "shadow" in gate.detail


def test_several_proxies_sum_counts_and_take_the_worst_p99():
    a = healthy(comparisons=150, mismatches=0, primary_p99=0.01, shadow_p99=0.01)
    b = healthy(comparisons=100, mismatches=1, primary_p99=None, shadow_p99=0.05, complete=False)
    fleet = combine([a, b])
    assert fleet["comparisons"] == 250
    assert fleet["mismatches"] == 1
    assert fleet["mirrored_connections"] == 40
    assert (fleet["primary_p99"], fleet["shadow_p99"]) == (0.01, 0.05)
    assert fleet["complete"] is False
    gates = by_name(evaluate(fleet, Thresholds(max_mismatch_ratio=0.01)))
    assert gates["comparisons"].result == "pass"  # neither proxy alone has 200
    assert gates["shadow_latency"].result == "fail"


def test_a_game_diverged_on_every_proxy_counts_once_for_the_fleet():
    """Every proxy sweeps every game: a game diverged on both proxies of a fleet was counted
    twice (350 games read "diverged games 700" with 2 proxies)."""
    a = healthy(diverged=2, diverged_games=["g1", "g2"])
    b = healthy(diverged=2, diverged_games=["g2", "g3"])
    assert combine([a, b])["diverged"] == 3
    # a proxy that does not name its games (an older one): the sum, the safe side
    assert combine([a, healthy(diverged=2)])["diverged"] == 4


def test_after_a_flip_the_new_server_is_judged_not_the_old_ones_health():
    """After a flip the shadow is the old server: its drops, its lost connections or its
    slowness are no reason to roll back onto it; the new primary slower than it is."""
    flipped = {"primary_new_p99": 0.01, "primary_old_p99": None, "shadow_old_p99": 0.5}
    old_unwell = healthy(
        mirrored_connections=20, shadow_connected=12, shadow_drops=8, shadow_p99=0.5, **flipped
    )
    assert {g.result for g in evaluate(old_unwell, Thresholds()) if g.name != "comparisons"} == {
        "pass",
        "fail",
    }
    watched = by_name(after_flip(old_unwell, Thresholds()))
    assert set(watched) == {
        "comparisons",
        "mismatch_ratio",
        "diverged",
        "comparable",
        "primary_failures",
        "primary_latency",
    }
    assert breached(watched.values()) == []
    new_slow = by_name(
        after_flip(
            healthy(**{**flipped, "primary_new_p99": 0.06, "shadow_old_p99": 0.02}), Thresholds()
        )
    )
    assert [g.name for g in breached(new_slow.values())] == ["primary_latency"]
    assert new_slow["primary_latency"].detail == (
        "new server p99 60.0 ms as a primary > 2 x old server p99 20.0 ms + 10 ms (as the shadow)"
    )
    diverged = after_flip(healthy(diverged=1, **flipped), Thresholds())
    assert [g.name for g in breached(diverged)] == ["diverged"]
    no_samples = by_name(after_flip(healthy(**{**flipped, "shadow_old_p99": None}), Thresholds()))
    assert no_samples["primary_latency"].result == "inconclusive"


def test_under_a_ramp_the_new_server_is_judged_against_the_old_one_as_a_primary():
    """Under a ramp each server is primary for some games: their latencies as primaries
    are compared (the old server's as the shadow is not the reference then)."""
    ramped = healthy(primary_new_p99=0.06, primary_old_p99=0.02, shadow_old_p99=0.2)
    gate = by_name(after_flip(ramped, Thresholds()))["primary_latency"]
    assert gate.result == "fail"
    assert gate.detail.endswith("old server p99 20.0 ms + 10 ms (as the primary)")
    # a proxy that reports no latency by upstream: the new primary against the shadow
    older = by_name(after_flip(healthy(primary_p99=0.06, shadow_p99=0.02), Thresholds()))
    assert older["primary_latency"].result == "fail"
    # the fleet's figure is the worst proxy's, by upstream too
    fleet = combine([healthy(primary_new_p99=0.01), healthy(primary_new_p99=0.03)])
    assert fleet["primary_new_p99"] == 0.03


def test_games_not_comparable_leave_readiness_inconclusive():
    """A game the proxy could not mirror faithfully (its shadow lost, a gap) is not compared
    until it is resynced: no evidence, so not ready. `check` said READY with such games
    left (their resync had failed), and the flip's own verification then refused."""
    gates = by_name(evaluate(healthy(not_comparable=2), Thresholds()))
    assert gates["comparable"].result == "inconclusive"
    assert "2 games not comparable" in gates["comparable"].detail
    assert verdict(gates.values()) == "inconclusive"
    a = healthy(not_comparable=1, not_comparable_games=["g1"])
    b = healthy(not_comparable=1, not_comparable_games=["g1"])
    assert combine([a, b])["not_comparable"] == 1


def test_thresholds_load_from_toml_and_flags_override(tmp_path: Path):
    config = tmp_path / "stateshift.toml"
    config.write_text("[readiness]\nmin_comparisons = 50\nmax_latency_ratio = 3\nwindow = 60\n")
    loaded = Thresholds.load(config)
    assert (loaded.min_comparisons, loaded.max_latency_ratio, loaded.window) == (50, 3, 60)
    assert loaded.max_mismatch_ratio == Thresholds().max_mismatch_ratio
    assert loaded.override(window=10, max_diverged=None).window == 10


def test_a_file_without_a_readiness_table_keeps_the_defaults(tmp_path: Path):
    config = tmp_path / "rules.toml"
    config.write_text("[rules]\nx = 1\n")
    assert Thresholds.load(config) == Thresholds()


@pytest.mark.parametrize(
    "text",
    [
        "[readiness]\nmin_comparison = 5\n",  # a typo must not silently keep the default
        "[readiness]\nmax_diverged = -1\n",
        "[readiness]\nmin_comparisons = 2.5\n",
        "[readiness]\nwindow = 0\n",
        '[readiness]\nwindow = "long"\n',
        "readiness = 3\n",
        "not toml [",
    ],
)
def test_bad_readiness_configuration_is_refused(tmp_path: Path, text: str):
    config = tmp_path / "bad.toml"
    config.write_text(text)
    with pytest.raises(ThresholdsError):
        Thresholds.load(config)


def test_ramp_targets_are_plain_routes_at_the_ends():
    assert target("old", 0) == {"primary": "old", "ramp": None, "mirroring": True}
    assert target("old", 100) == {"primary": "new", "ramp": None, "mirroring": True}
    assert target("old", 25) == {"primary": "old", "ramp": 25, "mirroring": True}
    assert same_route({"primary": "new", "ramp": None, "mirroring": True}, target("new"))
    assert not same_route({"primary": "new", "ramp": None, "mirroring": False}, target("new"))


def test_a_latency_gate_allows_a_slack_of_one_histogram_bucket_at_a_few_milliseconds():
    """A rehearsal rolled back two healthy flips: "new server p99 15.0 ms > 2 x old server
    p99 5.0 ms" (and 10 > 2 x 4): at a few milliseconds the p99 is a bucket of the latency
    histogram (4, 5, 7.5, 10, 15 ms), so a ratio moves by 2x between neighbours. A p99 may
    now exceed the ratio by `latency_slack` (10 ms) before the gate fails."""
    figures = healthy(primary_new_p99=0.015, primary_old_p99=None, shadow_old_p99=0.005)
    gates = {g.name: g for g in after_flip(figures, Thresholds())}
    assert gates["primary_latency"].result == "pass", gates["primary_latency"].detail
    slow = healthy(primary_new_p99=0.060, primary_old_p99=None, shadow_old_p99=0.005)
    gates = {g.name: g for g in after_flip(slow, Thresholds())}
    assert gates["primary_latency"].result == "fail"
    assert "+ 10 ms" in gates["primary_latency"].detail
    strict = Thresholds(latency_slack=0.0)
    gates = {g.name: g for g in after_flip(figures, strict)}
    assert gates["primary_latency"].result == "fail"
    readiness = {
        g.name: g for g in evaluate(healthy(shadow_p99=0.015, primary_p99=0.005), Thresholds())
    }
    assert readiness["shadow_latency"].result == "pass"
