"""The legacy server's state rules, without I/O."""

from __future__ import annotations

from typing import Any

import pytest

from legacy.errors import BadMessage, FloatForInt, InvalidState
from legacy.rules import (
    GameState,
    format_ms,
    is_identifier,
    is_timestamp,
    join_timer,
    merge_join,
    merge_update,
    parse_import,
    parse_update,
    resolve_update,
)

T0 = "2026-01-01T00:00:00.000Z"


def game(status: str = "active", players: tuple[str, ...] = ("alice", "bob")) -> GameState:
    state = merge_join(None, "g1", players[0], 60_000, 1, T0)
    for version, player in enumerate(players[1:], start=2):
        state = merge_join(state, "g1", player, 60_000, version, T0)
    state["status"] = status
    return state


def apply(state: GameState, updates: Any, bias: int = 0) -> GameState:
    change = resolve_update(state, parse_update(updates), bias)
    return merge_update(state, change, state["version"] + 1, T0)


def test_identifiers_follow_the_protocol_rules() -> None:
    assert is_identifier("a.B-9_z")
    assert is_identifier("x" * 64)
    assert not is_identifier("x" * 65)
    assert not is_identifier("")
    assert not is_identifier("a b")
    assert not is_identifier("a\n")
    assert not is_identifier(7)


def test_timestamps_are_rfc3339_utc_with_milliseconds() -> None:
    assert format_ms(0) == "1970-01-01T00:00:00.000Z"
    assert format_ms(1_764_151_200_123) == "2025-11-26T10:00:00.123Z"
    assert format_ms(-1) == "1969-12-31T23:59:59.999Z"
    assert is_timestamp("2026-11-26T10:00:00.123Z")
    assert not is_timestamp("2026-11-26T10:00:00Z")
    assert not is_timestamp("2026-13-26T10:00:00.123Z")
    assert not is_timestamp(
        "\u0662\u0660\u0662\u0666-11-26T10:00:00.123Z"
    )  # RFC 3339 digits: ASCII
    assert not is_timestamp(12)


def test_creation_and_join_make_one_version_each() -> None:
    state = merge_join(None, "g1", "alice", 60_000, 1, T0)
    assert dict(state) == {
        "game_id": "g1",
        "status": "waiting",
        "current_player": None,
        "scores": {"alice": 0},
        "timer": {"alice": 60_000},
        "settings": {},
        "version": 1,
        "updated_at": T0,
    }
    joined = merge_join(state, "g1", "bob", 5, 2, T0)
    assert joined["scores"] == {"alice": 0, "bob": 0}
    assert joined["timer"] == {"alice": 60_000, "bob": 5}
    assert state["scores"] == {"alice": 0}, "published states are never mutated"


def test_join_timer_uses_initial_time_ms_when_set() -> None:
    assert join_timer(None) == 60_000
    state = game()
    state["settings"] = {"initial_time_ms": "1500"}
    assert join_timer(state) == 1500


@pytest.mark.parametrize(
    ("before", "after"),
    [
        ("waiting", "active"),
        ("active", "paused"),
        ("paused", "active"),
        ("active", "finished"),
        ("paused", "finished"),
        ("active", "active"),
        ("waiting", "waiting"),
    ],
)
def test_allowed_status_changes_are_accepted(before: str, after: str) -> None:
    assert apply(game(before), {"status": after})["status"] == after


@pytest.mark.parametrize(
    ("before", "after"),
    [("waiting", "paused"), ("waiting", "finished"), ("paused", "waiting"), ("active", "waiting")],
)
def test_illegal_status_changes_are_invalid_state(before: str, after: str) -> None:
    with pytest.raises(InvalidState):
        apply(game(before), {"status": after})


def test_a_finished_game_refuses_every_update() -> None:
    with pytest.raises(InvalidState):
        apply(game("finished"), {"status": "finished"})
    with pytest.raises(InvalidState):
        apply(game("finished"), {"settings": {"a": "b"}})


def test_scores_then_deltas_are_applied_and_checked_on_the_result() -> None:
    state = apply(game(), {"scores": {"alice": 10}, "score_deltas": {"alice": 5, "bob": -3}})
    assert state["scores"] == {"alice": 15, "bob": -3}
    with pytest.raises(InvalidState):
        apply(state, {"score_deltas": {"alice": 1_000_000_000}})
    near = apply(state, {"scores": {"alice": 1_000_000_000}})
    assert near["scores"]["alice"] == 1_000_000_000


def test_delta_bias_models_the_off_by_one_fault() -> None:
    assert apply(game(), {"score_deltas": {"alice": 2}}, bias=1)["scores"]["alice"] == 3


@pytest.mark.parametrize(
    "updates",
    [
        {"scores": {"carol": 1}},
        {"score_deltas": {"carol": 1}},
        {"timer": {"carol": 1}},
        {"current_player": "carol"},
        {"timer": {"alice": -1}},
        {"timer": {"alice": 86_400_001}},
        {"status": "over"},
        {"settings": {"bad key": "x"}},
        {"settings": {"k": "x" * 1025}},
        {"settings": {"initial_time_ms": "007"}},
        {"settings": {"initial_time_ms": "86400001"}},
        {"settings": {"initial_time_ms": "-1"}},
    ],
)
def test_rule_breaks_are_invalid_state(updates: dict[str, Any]) -> None:
    with pytest.raises(InvalidState):
        apply(game(), updates)


@pytest.mark.parametrize(
    "updates",
    [
        None,
        {},
        [],
        {"bogus": 1},
        {"status": 1},
        {"current_player": 5},
        {"scores": []},
        {"scores": {"alice": True}},
        {"timer": {"alice": "1"}},
        {"settings": {"a": 1}},
    ],
)
def test_ill_typed_updates_are_bad_message(updates: Any) -> None:
    with pytest.raises(BadMessage):
        parse_update(updates)


def test_a_float_for_an_int_is_flagged_for_an_exact_reread() -> None:
    with pytest.raises(FloatForInt):
        parse_update({"scores": {"alice": 1.0}})


def test_settings_set_remove_and_count_after_the_update() -> None:
    state = game()
    state["settings"] = {f"k{i}": "v" for i in range(64)}
    with pytest.raises(InvalidState):
        apply(state, {"settings": {"extra": "v"}})
    swapped = apply(state, {"settings": {"k0": None, "extra": "v"}})
    assert len(swapped["settings"]) == 64
    assert "k0" not in swapped["settings"]


def test_current_player_and_timer_updates() -> None:
    state = apply(game(), {"current_player": "bob", "timer": {"bob": 0}})
    assert state["current_player"] == "bob"
    assert state["timer"]["bob"] == 0
    assert apply(state, {"current_player": None})["current_player"] is None


def full_state(**changes: Any) -> dict[str, Any]:
    state: dict[str, Any] = {
        "game_id": "g9",
        "status": "paused",
        "current_player": "bob",
        "scores": {"bob": 3},
        "timer": {"bob": 10},
        "settings": {"initial_time_ms": "100"},
        "version": 42,
        "updated_at": "2026-01-02T03:04:05.678Z",
    }
    state.update(changes)
    return state


def test_an_import_keeps_version_and_a_valid_updated_at() -> None:
    assert parse_import(full_state(), T0) == full_state()
    assert parse_import(full_state(updated_at="yesterday"), T0)["updated_at"] == T0
    without = full_state()
    del without["updated_at"]
    assert parse_import(without, T0)["updated_at"] == T0


@pytest.mark.parametrize(
    "changes",
    [
        {"version": "42"},
        {"version": 4.2},
        {"scores": []},
        {"settings": {"a": None}},
        {"game_id": 9},
        {"status": None},
    ],
)
def test_ill_typed_imports_are_bad_message(changes: dict[str, Any]) -> None:
    with pytest.raises(BadMessage):
        parse_import(full_state(**changes), T0)


@pytest.mark.parametrize(
    "changes",
    [
        {"version": 0},
        {"version": 2**53},
        {"game_id": "no spaces"},
        {"status": "over"},
        {"timer": {"carol": 10}},
        {"current_player": "carol"},
        {"scores": {"bob": 2_000_000_000}},
        {"settings": {"initial_time_ms": "x"}},
        {
            "scores": {f"p{i}": 0 for i in range(65)},
            "timer": {f"p{i}": 0 for i in range(65)},
            "current_player": None,
        },
    ],
)
def test_rule_breaking_imports_are_invalid_state(changes: dict[str, Any]) -> None:
    with pytest.raises(InvalidState):
        parse_import(full_state(**changes), T0)


def test_a_missing_import_field_is_bad_message() -> None:
    state = full_state()
    del state["timer"]
    with pytest.raises(BadMessage):
        parse_import(state, T0)
