"""STATE_UPDATE validation: BAD_MESSAGE for shape, INVALID_STATE for rules (notes 7, 16, 20-22)."""

from __future__ import annotations

import json
from typing import Any

from conformance.client import fresh_id
from conformance.context import CheckContext, get_state
from conformance.registry import check, expect_equal
from conformance.shapes import SCORE_MAX, SCORE_MIN, TIMER_MAX


async def _all_refused(
    ctx: CheckContext,
    code: str,
    cases: list[dict[str, Any]],
    players: tuple[str, ...] = ("alice", "bob"),
) -> None:
    """Each `STATE_UPDATE` field set in `cases` gets `ERROR code`; the game never changes."""
    game, conns, joined = await ctx.new_game(*players)
    alice = conns[0]
    for fields in cases:
        await alice.request_error(code, "STATE_UPDATE", **fields)
    expect_equal("state after refused updates", joined, await get_state(alice, game))


@check("validation.missing_empty_or_non_object_updates_is_bad_message")
async def bad_updates_field(ctx: CheckContext) -> None:
    """PROTOCOL.md updates: an object with at least one key; note 16: empty/not an object is
    BAD_MESSAGE."""
    await _all_refused(
        ctx,
        "BAD_MESSAGE",
        [
            {},
            {"updates": {}},
            {"updates": []},
            {"updates": "status"},
            {"updates": None},
            {"updates": 1},
        ],
    )


@check("validation.unknown_key_in_updates_is_bad_message")
async def unknown_update_key(ctx: CheckContext) -> None:
    """PROTOCOL.md Error codes: unknown key in `updates` is BAD_MESSAGE (note 4: even beside valid
    keys)."""
    await _all_refused(
        ctx,
        "BAD_MESSAGE",
        [
            {"updates": {"version": 5}},
            {"updates": {"status": "active", "extra": 1}},
            {"updates": {"Status": "active"}},
            {"updates": {"game_id": "x"}},
            {"updates": {"updated_at": "2026-01-01T00:00:00.000Z"}},
        ],
    )


@check("validation.ill_typed_update_values_are_bad_message")
async def ill_typed_values(ctx: CheckContext) -> None:
    """Note 16: a value of the wrong JSON type is BAD_MESSAGE (scores, settings, status,
    current_player...)."""
    await _all_refused(
        ctx,
        "BAD_MESSAGE",
        [
            {"updates": {"status": 1}},
            {"updates": {"status": None}},
            {"updates": {"current_player": 5}},
            {"updates": {"current_player": ["alice"]}},
            {"updates": {"scores": "alice"}},
            {"updates": {"scores": [1]}},
            {"updates": {"scores": None}},
            {"updates": {"scores": {"alice": "5"}}},
            {"updates": {"scores": {"alice": None}}},
            {"updates": {"score_deltas": {"alice": "1"}}},
            {"updates": {"score_deltas": 3}},
            {"updates": {"timer": {"alice": "100"}}},
            {"updates": {"timer": [100]}},
            {"updates": {"settings": {"mode": 5}}},
            {"updates": {"settings": {"mode": True}}},
            {"updates": {"settings": {"mode": ["x"]}}},
            {"updates": {"settings": "mode"}},
            {"updates": {"status": "active"}, "expected_version": "1"},
            {"updates": {"status": "active"}, "expected_version": [1]},
        ],
    )


@check("validation.booleans_and_non_integer_numbers_are_bad_message")
async def non_integer_numbers(ctx: CheckContext) -> None:
    """Note 7: an int field takes a JSON integer only: true/false, 1.0 and 1e3 are BAD_MESSAGE."""
    game, (alice, _bob), joined = await ctx.new_game("alice", "bob")
    for fragment in (
        '"updates": {"scores": {"alice": 1.0}}',
        '"updates": {"scores": {"alice": 1e3}}',
        '"updates": {"scores": {"alice": true}}',
        '"updates": {"score_deltas": {"alice": 2.5}}',
        '"updates": {"score_deltas": {"alice": false}}',
        '"updates": {"timer": {"alice": 1000.0}}',
        '"updates": {"timer": {"alice": 1E3}}',
        '"updates": {"status": "active"}, "expected_version": 1.0',
        '"updates": {"status": "active"}, "expected_version": true',
        '"updates": {"status": "active"}, "expected_version": 1e0',
    ):
        mid = fresh_id()
        await alice.send_raw(f'{{"type": "STATE_UPDATE", "id": {json.dumps(mid)}, {fragment}}}')
        await alice.expect_error("BAD_MESSAGE", re=mid, what=fragment)
    expect_equal("state after refused updates", joined, await get_state(alice, game))


@check("validation.players_not_in_the_game_are_invalid_state")
async def unknown_players(ctx: CheckContext) -> None:
    """PROTOCOL.md updates: players named in scores/score_deltas/timer must be in the game; note
    16."""
    await _all_refused(
        ctx,
        "INVALID_STATE",
        [
            {"updates": {"scores": {"carol": 1}}},
            {"updates": {"score_deltas": {"carol": 1}}},
            {"updates": {"timer": {"carol": 1}}},
            {"updates": {"scores": {"alice": 1, "carol": 1}}},
            {"updates": {"scores": {"bad id!": 1}}},
            {"updates": {"timer": {"": 1}}},
            {"updates": {"current_player": "carol"}},
            {"updates": {"current_player": ""}},
            {"updates": {"current_player": "bad id!"}},
        ],
    )


@check("validation.out_of_range_numbers_are_invalid_state")
async def out_of_range(ctx: CheckContext) -> None:
    """PROTOCOL.md Game state: scores in [-1e9, 1e9], timers in [0, 86,400,000]; note 16:
    INVALID_STATE."""
    await _all_refused(
        ctx,
        "INVALID_STATE",
        [
            {"updates": {"scores": {"alice": SCORE_MAX + 1}}},
            {"updates": {"scores": {"alice": SCORE_MIN - 1}}},
            {"updates": {"score_deltas": {"alice": SCORE_MAX + 1}}},
            {"updates": {"timer": {"alice": -1}}},
            {"updates": {"timer": {"alice": TIMER_MAX + 1}}},
        ],
    )


@check("validation.integers_beyond_64_bits_are_invalid_state_not_bad_message")
async def huge_integers(ctx: CheckContext) -> None:
    """Notes 7, 16 and 30: a JSON integer of any size has the right type; out of range it is
    INVALID_STATE (not BAD_MESSAGE), for scores, deltas, timers and expected_version too."""
    await _all_refused(
        ctx,
        "INVALID_STATE",
        [
            {"updates": {"scores": {"alice": 10**30}}},
            {"updates": {"scores": {"alice": -(10**30)}}},
            {"updates": {"score_deltas": {"alice": 2**64}}},
            {"updates": {"timer": {"alice": 2**63}}},
            # past a double's range too (some JSON readers give up there: note 30 does not)
            {"updates": {"scores": {"alice": 10**400}}},
            {"updates": {"score_deltas": {"alice": -(10**400)}}},
        ],
    )
    _, (alice,), _ = await ctx.new_game("alice")
    for beyond in (2**64, 10**400):
        err = await alice.request_error(
            "CONFLICT", "STATE_UPDATE", updates={"status": "active"}, expected_version=beyond
        )
        expect_equal("CONFLICT.version", 1, err.get("version"))


@check("validation.delta_pushing_a_score_out_of_range_is_invalid_state")
async def delta_out_of_range(ctx: CheckContext) -> None:
    """Note 20: rules are checked on the result: a score a delta pushes out of range is
    INVALID_STATE."""
    await _all_refused(
        ctx,
        "INVALID_STATE",
        [
            {"updates": {"scores": {"alice": SCORE_MAX}, "score_deltas": {"alice": 1}}},
            {"updates": {"scores": {"alice": SCORE_MIN}, "score_deltas": {"alice": -1}}},
            {"updates": {"score_deltas": {"alice": SCORE_MIN - 1}}},
        ],
    )


@check("validation.bad_settings_are_invalid_state")
async def bad_settings(ctx: CheckContext) -> None:
    """PROTOCOL.md Game state: setting values at most 1,024 characters, keys are identifiers; note
    16."""
    await _all_refused(
        ctx,
        "INVALID_STATE",
        [
            {"updates": {"settings": {"mode": "x" * 1025}}},
            {"updates": {"settings": {"bad key": "x"}}},
            {"updates": {"settings": {"": "x"}}},
            {"updates": {"settings": {"k" * 65: "x"}}},
            {"updates": {"settings": {f"k{i}": "v" for i in range(65)}}},
        ],
    )


@check("validation.bad_initial_time_ms_is_invalid_state")
async def bad_initial_time(ctx: CheckContext) -> None:
    """PROTOCOL.md Game state: initial_time_ms is the decimal text of an int in [0, 86,400,000];
    note 21."""
    await _all_refused(
        ctx,
        "INVALID_STATE",
        [
            {"updates": {"settings": {"initial_time_ms": bad}}}
            for bad in (
                "",
                "abc",
                "-1",
                "+5",
                "007",
                "00",
                " 5",
                "5 ",
                "1.5",
                "1e3",
                "86400001",
                "99999999999999999999",
            )
        ],
    )
