"""The pure protocol rules, without sockets or an event loop."""

from __future__ import annotations

import orjson
import pytest

from server.errors import BadMessage, Forbidden, InvalidState, UnknownType
from server.rules import (
    GameState,
    apply_update,
    history,
    join,
    parse_import,
    parse_list_games,
    parse_request,
    parse_update,
    timestamp,
)

NOW = 1_795_000_000.123


def game(**changes: object) -> GameState:
    state = GameState(
        "g1",
        status="active",
        scores={"alice": 10, "bob": 0},
        timer={"alice": 60000, "bob": 60000},
        version=3,
        updated_at=timestamp(NOW),
    )
    for key, value in changes.items():
        setattr(state, key, value)
    return state


def update(**updates: object):
    return parse_update({"updates": updates})[0]


# ------------------------------------------------------------------ envelope


@pytest.mark.parametrize(
    ("raw", "error", "re"),
    [
        (b'{"type":"HEARTBEAT","id":"1"}', BadMessage, None),
        ("{not json", BadMessage, None),
        ("[1, 2]", BadMessage, None),
        ('{"type":"HEARTBEAT"}', BadMessage, None),
        ('{"type":"HEARTBEAT","id":""}', BadMessage, None),
        ('{"type":"HEARTBEAT","id":7}', BadMessage, None),
        ('{"type":"HEARTBEAT","id":"' + "x" * 65 + '"}', BadMessage, None),
        ('{"id":"1"}', BadMessage, "1"),
        ('{"type":5,"id":"1"}', BadMessage, "1"),
        ('{"type":"JUMP","id":"1"}', UnknownType, "1"),
    ],
)
def test_envelope_errors_carry_re_only_when_the_id_is_readable(raw, error, re):
    with pytest.raises(error) as caught:
        parse_request(raw)
    assert caught.value.re == re


def test_envelope_accepts_a_well_formed_message_and_ignores_extra_fields():
    request = parse_request('{"type":"HEARTBEAT","id":"' + "x" * 64 + '","extra":1}')
    assert (request.type, request.id) == ("HEARTBEAT", "x" * 64)


# ------------------------------------------------------------------ update shape


@pytest.mark.parametrize(
    "body",
    [
        {},
        {"updates": {}},
        {"updates": []},
        {"updates": {"colour": "red"}},
        {"updates": {"status": 1}},
        {"updates": {"current_player": 5}},
        {"updates": {"scores": []}},
        {"updates": {"scores": {"alice": 1.0}}},
        {"updates": {"scores": {"alice": True}}},
        {"updates": {"score_deltas": {"alice": "1"}}},
        {"updates": {"timer": {"alice": None}}},
        {"updates": {"settings": {"a": 1}}},
        {"updates": {"status": "active"}, "expected_version": "3"},
        {"updates": {"status": "active"}, "expected_version": True},
    ],
)
def test_ill_typed_updates_are_bad_messages(body):
    with pytest.raises(BadMessage):
        parse_update(body)


def test_expected_version_is_returned_when_present():
    assert parse_update({"updates": {"status": "active"}, "expected_version": 4})[1] == 4
    assert parse_update({"updates": {"status": "active"}})[1] is None


# ------------------------------------------------------------------ transitions


@pytest.mark.parametrize(
    ("before", "after"),
    [
        ("waiting", "active"),
        ("active", "paused"),
        ("paused", "active"),
        ("active", "finished"),
        ("paused", "finished"),
        ("waiting", "waiting"),
        ("active", "active"),
        ("paused", "paused"),
    ],
)
def test_allowed_status_changes_are_applied(before, after):
    new = apply_update(game(status=before), update(status=after), NOW)
    assert new.status == after
    assert new.version == 4


@pytest.mark.parametrize(
    ("before", "after"),
    [
        ("waiting", "paused"),
        ("waiting", "finished"),
        ("active", "waiting"),
        ("paused", "waiting"),
        ("active", "over"),
    ],
)
def test_forbidden_status_changes_are_invalid(before, after):
    with pytest.raises(InvalidState):
        apply_update(game(status=before), update(status=after), NOW)


def test_a_finished_game_refuses_every_update_even_the_same_status():
    for updates in ({"status": "finished"}, {"scores": {"alice": 1}}, {"settings": {"a": "b"}}):
        with pytest.raises(InvalidState):
            apply_update(game(status="finished"), update(**updates), NOW)


# ------------------------------------------------------------------ effects and rules


def test_scores_are_set_before_deltas_are_added():
    new = apply_update(game(), update(scores={"alice": 5}, score_deltas={"alice": 2}), NOW)
    assert new.scores == {"alice": 7, "bob": 0}


def test_an_update_is_applied_whole_or_not_at_all():
    state = game()
    with pytest.raises(InvalidState):
        apply_update(state, update(scores={"alice": 99}, timer={"carol": 1}), NOW)
    assert state.scores["alice"] == 10  # the original is untouched
    assert state.version == 3


@pytest.mark.parametrize(
    "updates",
    [
        {"scores": {"carol": 1}},
        {"score_deltas": {"carol": 1}},
        {"timer": {"carol": 1}},
        {"current_player": "carol"},
        {"scores": {"alice": 1_000_000_001}},
        {"scores": {"alice": -1_000_000_001}},
        {"score_deltas": {"alice": 1_000_000_000}},
        {"timer": {"alice": -1}},
        {"timer": {"alice": 86_400_001}},
        {"settings": {"bad key": "x"}},
        {"settings": {"k": "x" * 1025}},
        {"settings": {"initial_time_ms": "-1"}},
        {"settings": {"initial_time_ms": "007"}},
        {"settings": {"initial_time_ms": "86400001"}},
        {"settings": {"initial_time_ms": " 5"}},
    ],
)
def test_rule_breaking_values_are_invalid_state(updates):
    with pytest.raises(InvalidState):
        apply_update(game(), update(**updates), NOW)


def test_boundaries_are_accepted():
    new = apply_update(
        game(),
        update(
            scores={"alice": 1_000_000_000, "bob": -1_000_000_000},
            timer={"alice": 0, "bob": 86_400_000},
            settings={"k": "x" * 1024, "initial_time_ms": "86400000"},
            current_player="bob",
        ),
        NOW,
    )
    assert new.current_player == "bob"
    assert new.settings["initial_time_ms"] == "86400000"


def test_settings_null_removes_and_the_count_is_checked_after_applying():
    full = {f"k{i}": "v" for i in range(64)}
    state = game(settings=dict(full))
    with pytest.raises(InvalidState):
        apply_update(state, update(settings={"extra": "v"}), NOW)
    new = apply_update(state, update(settings={"k0": None, "extra": "v"}), NOW)
    assert "k0" not in new.settings
    assert len(new.settings) == 64


def test_current_player_can_be_cleared():
    new = apply_update(game(current_player="alice"), update(current_player=None), NOW)
    assert new.current_player is None


def test_every_accepted_update_is_a_change_even_a_no_op():
    new = apply_update(game(), update(status="active"), NOW + 1)
    assert new.version == 4
    assert new.updated_at == timestamp(NOW + 1)


# ------------------------------------------------------------------ joins


def test_the_first_player_creates_the_game_at_version_1():
    state = join(None, "g1", "alice", NOW)
    assert state is not None
    assert state.to_wire() == {
        "game_id": "g1",
        "status": "waiting",
        "current_player": None,
        "scores": {"alice": 0},
        "timer": {"alice": 60000},
        "settings": {},
        "version": 1,
        "updated_at": timestamp(NOW),
    }


def test_a_join_uses_the_initial_time_setting():
    state = join(game(settings={"initial_time_ms": "1500"}), "g1", "carol", NOW)
    assert state is not None
    assert (state.scores["carol"], state.timer["carol"], state.version) == (0, 1500, 4)


def test_a_known_player_does_not_join_again():
    assert join(game(), "g1", "alice", NOW) is None


def test_the_65th_player_is_forbidden():
    players = {f"p{i}": 0 for i in range(64)}
    with pytest.raises(Forbidden):
        join(game(scores=dict(players), timer=dict(players)), "g1", "late", NOW)


# ------------------------------------------------------------------ admin


def full_state(**changes: object) -> dict[str, object]:
    state = game().to_wire()
    state.update(changes)
    return state


def test_import_accepts_a_full_state_and_keeps_a_valid_updated_at():
    imported = parse_import(full_state(version=1), NOW)
    assert imported.version == 1
    assert imported.updated_at == timestamp(NOW)
    assert parse_import(full_state(updated_at="yesterday"), NOW + 5).updated_at == timestamp(
        NOW + 5
    )


@pytest.mark.parametrize(
    "stamp", ["2026-13-45T99:99:99.999Z", "2026-02-30T10:00:00.000Z", 1764151200, None]
)
def test_an_imported_updated_at_that_names_no_instant_is_set_to_now(stamp):
    """Note 24: kept when it is an RFC 3339 UTC timestamp with milliseconds, else now (the
    shape alone is not enough; any other value, as the old server does)."""
    assert parse_import(full_state(updated_at=stamp), NOW + 5).updated_at == timestamp(NOW + 5)


@pytest.mark.parametrize(
    ("changes", "error"),
    [
        ({"version": "1"}, BadMessage),
        ({"version": True}, BadMessage),
        ({"scores": None}, BadMessage),
        ({"settings": {"a": 1}}, BadMessage),
        ({"version": 0}, InvalidState),
        ({"status": "over"}, InvalidState),
        ({"game_id": "bad id"}, InvalidState),
        ({"timer": {"alice": 1}}, InvalidState),
        ({"current_player": "carol"}, InvalidState),
        ({"settings": {"initial_time_ms": "x"}}, InvalidState),
    ],
)
def test_import_validation(changes, error):
    with pytest.raises(error):
        parse_import(full_state(**changes), NOW)


def test_import_without_current_player_is_a_bad_message():
    state = full_state()
    del state["current_player"]
    with pytest.raises(BadMessage):
        parse_import(state, NOW)


@pytest.mark.parametrize("body", [{"limit": 0}, {"limit": 1001}, {"limit": 1.5}, {"after": 3}])
def test_list_games_arguments_are_checked(body):
    with pytest.raises(BadMessage):
        parse_list_games(body)


def test_list_games_defaults():
    assert parse_list_games({}) == (None, 100)


# ------------------------------------------------------------------ history and time


def test_history_has_a_row_per_changed_value_only():
    old = game(settings={"a": "1", "b": "2"})
    new = apply_update(
        old, update(scores={"alice": 10, "bob": 3}, settings={"a": None, "c": "3"}), NOW
    )
    rows = sorted(history(old, new), key=lambda row: (row[0], row[2]))
    stamp = new.updated_at
    assert rows == [
        ("scores", "g1", "bob", 3, 4, stamp),
        ("settings", "g1", "a", None, 4, stamp),
        ("settings", "g1", "c", "3", 4, stamp),
    ]


def test_timestamps_are_rfc3339_utc_with_milliseconds():
    assert timestamp(0.5) == "1970-01-01T00:00:00.500Z"
    assert orjson.loads(orjson.dumps(timestamp(NOW)))[-1] == "Z"


def test_integers_beyond_64_bits_parse_and_are_out_of_range_not_ill_typed():
    request = parse_request(
        '{"type":"STATE_UPDATE","id":"u","updates":{"scores":{"alice":1' + "0" * 30 + "}}}"
    )
    update_, _ = parse_update(request.body)
    with pytest.raises(InvalidState):
        apply_update(game(), update_, NOW)


@pytest.mark.parametrize("digits", [400, 5000])
def test_integer_literals_past_a_double_or_pythons_digit_limit_are_integers(digits):
    """Note 30, however many digits (Python's int() stops at 4,300 by default)."""
    request = parse_request(
        '{"type":"STATE_UPDATE","id":"u","updates":{"scores":{"alice":-' + "9" * digits + "}}}"
    )
    update_, _ = parse_update(request.body)
    with pytest.raises(InvalidState):
        apply_update(game(), update_, NOW)


def test_nan_and_infinity_are_not_json():
    for literal in ("NaN", "Infinity", "-Infinity"):
        with pytest.raises(BadMessage):
            parse_request('{"type":"HEARTBEAT","id":"h","x":' + literal + "}")


def test_import_versions_beyond_2_53_are_invalid():
    parse_import(full_state(version=2**53 - 1), NOW)
    with pytest.raises(InvalidState):
        parse_import(full_state(version=2**53), NOW)


def test_null_optional_fields_mean_absent():
    assert parse_update({"updates": {"status": "active"}, "expected_version": None})[1] is None
    assert parse_list_games({"after": None, "limit": None}) == (None, 100)


def test_list_games_after_must_be_a_game_id():
    with pytest.raises(BadMessage):
        parse_list_games({"after": "not an id"})


def test_unpaired_surrogates_are_not_json_on_both_parsers():
    with pytest.raises(BadMessage):
        parse_request('{"type":"HEARTBEAT","id":"h","x":"\\ud800"}')
    with pytest.raises(BadMessage):  # the slow path (a long number) refuses them too
        parse_request('{"type":"HEARTBEAT","id":"h","n":1' + "0" * 20 + ',"x":"\\ud800"}')
