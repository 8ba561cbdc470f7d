"""STATE_UPDATE: each key's effect, versions, broadcast, conflicts, rights (notes 17, 18, 20-22,
32, 36)."""

from __future__ import annotations

import asyncio
import json
from typing import Any

from conformance.client import Conn
from conformance.context import CheckContext, expect_state, get_state, update
from conformance.registry import ConformanceFailure, check, expect, expect_equal
from conformance.shapes import (
    DEFAULT_TIMER,
    SCORE_MAX,
    SCORE_MIN,
    TIMER_MAX,
    is_int,
    without_volatile,
)


@check("update.status_key_sets_the_status")
async def status_key(ctx: CheckContext) -> None:
    """PROTOCOL.md STATE_UPDATE.updates: `status` transitions the game."""
    game, (alice,), _ = await ctx.new_game("alice")
    state = await update(alice, game, 2, updates={"status": "active"})
    expect_equal("status", "active", state["status"])
    expect_equal("GET_STATE status", "active", (await get_state(alice, game))["status"])


@check("update.current_player_key_sets_a_player_or_null")
async def current_player_key(ctx: CheckContext) -> None:
    """PROTOCOL.md STATE_UPDATE.updates: `current_player` sets a player id or null."""
    game, (alice, _bob), _ = await ctx.new_game("alice", "bob")
    state = await update(alice, game, 3, updates={"current_player": "bob"})
    expect_equal("current_player", "bob", state["current_player"])
    state = await update(alice, game, 4, updates={"current_player": None})
    expect_equal("current_player", None, state["current_player"])


@check("update.scores_key_sets_each_listed_score")
async def scores_key(ctx: CheckContext) -> None:
    """PROTOCOL.md STATE_UPDATE.updates: `scores` sets each listed score; others keep theirs."""
    game, (alice, _bob), _ = await ctx.new_game("alice", "bob")
    state = await update(alice, game, 3, updates={"scores": {"alice": 7, "bob": -3}})
    expect_equal("scores", {"alice": 7, "bob": -3}, state["scores"])
    state = await update(alice, game, 4, updates={"scores": {"bob": 10}})
    expect_equal("scores", {"alice": 7, "bob": 10}, state["scores"])
    state = await update(alice, game, 5, updates={"scores": {"alice": SCORE_MAX, "bob": SCORE_MIN}})
    expect_equal("scores at the bounds", {"alice": SCORE_MAX, "bob": SCORE_MIN}, state["scores"])


@check("update.score_deltas_add_to_scores_after_scores_are_set")
async def score_deltas_key(ctx: CheckContext) -> None:
    """PROTOCOL.md STATE_UPDATE.updates: `score_deltas` adds to each listed score, after
    `scores`."""
    game, (alice, _bob), _ = await ctx.new_game("alice", "bob")
    state = await update(alice, game, 3, updates={"score_deltas": {"alice": 5, "bob": -2}})
    expect_equal("scores", {"alice": 5, "bob": -2}, state["scores"])
    state = await update(alice, game, 4, updates={"score_deltas": {"alice": 1}})
    expect_equal("scores", {"alice": 6, "bob": -2}, state["scores"])
    state = await update(
        alice, game, 5, updates={"scores": {"alice": 100}, "score_deltas": {"alice": 5}}
    )
    expect_equal("scores (set 100, then add 5)", {"alice": 105, "bob": -2}, state["scores"])
    state = await update(alice, game, 6, updates={"score_deltas": {"alice": 0}})
    expect_equal("scores after a zero delta", {"alice": 105, "bob": -2}, state["scores"])


@check("update.timer_key_sets_each_listed_timer")
async def timer_key(ctx: CheckContext) -> None:
    """PROTOCOL.md STATE_UPDATE.updates: `timer` sets each listed timer, in [0, 86,400,000]."""
    game, (alice, _bob), _ = await ctx.new_game("alice", "bob")
    state = await update(alice, game, 3, updates={"timer": {"alice": 1234}})
    expect_equal("timer", {"alice": 1234, "bob": DEFAULT_TIMER}, state["timer"])
    state = await update(alice, game, 4, updates={"timer": {"alice": 0, "bob": TIMER_MAX}})
    expect_equal("timer at the bounds", {"alice": 0, "bob": TIMER_MAX}, state["timer"])


@check("update.settings_key_sets_keys_and_null_removes_them")
async def settings_key(ctx: CheckContext) -> None:
    """PROTOCOL.md STATE_UPDATE.updates: `settings` sets each key; null removes it."""
    game, (alice,), _ = await ctx.new_game("alice")
    state = await update(alice, game, 2, updates={"settings": {"mode": "blitz", "b.x-1_Y": ""}})
    expect_equal("settings", {"mode": "blitz", "b.x-1_Y": ""}, state["settings"])
    state = await update(alice, game, 3, updates={"settings": {"mode": None, "map": "x" * 1024}})
    expect_equal("settings", {"b.x-1_Y": "", "map": "x" * 1024}, state["settings"])
    state = await update(alice, game, 4, updates={"settings": {"absent": None}})
    expect_equal(
        "settings after removing an absent key",
        {"b.x-1_Y": "", "map": "x" * 1024},
        state["settings"],
    )


@check("update.sixty_four_settings_are_accepted_and_a_removal_nets_out_an_addition")
async def sixty_four_settings(ctx: CheckContext) -> None:
    """PROTOCOL.md Game state: at most 64 settings; note 22: counted after the update (removal nets
    out)."""
    game, (alice,), _ = await ctx.new_game("alice")
    many = {f"k{i}": str(i) for i in range(64)}
    state = await update(alice, game, 2, updates={"settings": many})
    expect_equal("number of settings", 64, len(state["settings"]))
    state = await update(alice, game, 3, updates={"settings": {"k0": None, "extra": "1"}})
    expect_equal("number of settings after one out, one in", 64, len(state["settings"]))
    expect("extra" in state["settings"] and "k0" not in state["settings"], f"{state['settings']}")
    await alice.request_error("INVALID_STATE", "STATE_UPDATE", updates={"settings": {"k65": "x"}})


@check("update.all_keys_in_one_update_apply_together")
async def all_keys_together(ctx: CheckContext) -> None:
    """PROTOCOL.md STATE_UPDATE.updates: one update may carry every key; it is one change (note 20
    order)."""
    game, (alice, _bob), _ = await ctx.new_game("alice", "bob")
    state = await update(
        alice,
        game,
        3,
        updates={
            "status": "active",
            "current_player": "bob",
            "scores": {"alice": 3},
            "score_deltas": {"alice": 2, "bob": 1},
            "timer": {"bob": 500},
            "settings": {"initial_time_ms": "1000", "mode": "x"},
        },
    )
    expect_equal("status", "active", state["status"])
    expect_equal("current_player", "bob", state["current_player"])
    expect_equal("scores", {"alice": 5, "bob": 1}, state["scores"])
    expect_equal("timer", {"alice": DEFAULT_TIMER, "bob": 500}, state["timer"])
    expect_equal("settings", {"initial_time_ms": "1000", "mode": "x"}, state["settings"])


@check("update.every_accepted_update_is_a_change_even_when_nothing_changes")
async def no_op_is_a_change(ctx: CheckContext) -> None:
    """PROTOCOL.md Game state: same status again is accepted; note 18: every accepted update is a
    change."""
    game, (alice,), joined = await ctx.new_game("alice")
    state = await update(alice, game, 2, updates={"status": "waiting"})
    state = await update(alice, game, 3, updates={"scores": {"alice": 0}})
    expect_equal(
        "state apart from version",
        {**without_volatile(joined), "version": 3},
        without_volatile(state),
    )


@check("update.versions_grow_by_one_and_updated_at_follows_each_change")
async def versions_grow_by_one(ctx: CheckContext) -> None:
    """PROTOCOL.md Game state: version grows by exactly 1 per accepted change; `updated_at` is the
    last change."""
    game, (alice,), joined = await ctx.new_game("alice")
    stamps = [joined["updated_at"]]
    for version in range(2, 12):
        state = await update(alice, game, version, updates={"score_deltas": {"alice": 1}})
        stamps.append(state["updated_at"])
    expect_equal("score after 10 deltas", 10, state["scores"]["alice"])
    expect(stamps == sorted(stamps), f"updated_at should never go back: {stamps}")
    got = await get_state(alice, game)
    expect_equal("GET_STATE after 10 updates", state, got)


@check("update.change_is_broadcast_to_every_connection_with_ack_first_on_the_sender")
async def broadcast_to_every_connection(ctx: CheckContext) -> None:
    """PROTOCOL.md Messages: STATE goes to every connection on the game, sender included, ACK
    first."""
    game, (alice, bob), _ = await ctx.new_game("alice", "bob")
    alice2, _ = await ctx.game(game, "alice")
    observer, _ = await ctx.game(game, "eve", role="observer")
    admin, _ = await ctx.game(game, "ops", role="admin")
    # update() checks ACK then STATE on the sender
    state = await update(bob, game, 3, updates={"scores": {"bob": 9}})
    for conn, who in (
        (alice, "alice"),
        (alice2, "alice's 2nd"),
        (observer, "observer"),
        (admin, "admin"),
    ):
        seen = await expect_state(conn, game, 3, f"broadcast to {who}")
        expect_equal(f"state broadcast to {who}", state, seen)
    other, (carol,), _ = await ctx.new_game("carol")
    await update(carol, other, 2, updates={"status": "active"})
    await alice.expect_open()  # no broadcast from another game


@check("update.admin_on_a_game_path_may_update")
async def admin_may_update(ctx: CheckContext) -> None:
    """PROTOCOL.md STATE_UPDATE: only players of the game and admins may update."""
    game, (alice,), _ = await ctx.new_game("alice")
    admin, _ = await ctx.game(game, "ops", role="admin")
    state = await update(admin, game, 2, updates={"scores": {"alice": 4}})
    expect_equal("scores", {"alice": 4}, state["scores"])
    await expect_state(alice, game, 2, "admin's change broadcast to alice")


@check("update.observer_update_is_forbidden_and_the_connection_stays_open")
async def observer_forbidden(ctx: CheckContext) -> None:
    """PROTOCOL.md STATE_UPDATE: an observer gets FORBIDDEN; Error codes: stays open (not on
    CONNECT)."""
    game, (alice,), _ = await ctx.new_game("alice")
    observer, _ = await ctx.game(game, "eve", role="observer")
    await observer.request_error("FORBIDDEN", "STATE_UPDATE", updates={"status": "active"})
    await observer.expect_open()
    expect_equal("version", 1, (await get_state(alice, game))["version"])


@check("update.matching_expected_version_is_accepted")
async def expected_version_matches(ctx: CheckContext) -> None:
    """PROTOCOL.md STATE_UPDATE: optional `expected_version` (int); equal to the current version:
    accepted."""
    game, (alice,), _ = await ctx.new_game("alice")
    await update(alice, game, 2, updates={"status": "active"}, expected_version=1)
    await update(alice, game, 3, updates={"status": "paused"}, expected_version=2)


@check("update.differing_expected_version_is_conflict_with_the_current_version")
async def expected_version_conflict(ctx: CheckContext) -> None:
    """PROTOCOL.md STATE_UPDATE / Error codes: CONFLICT carries the current `version`, stays
    open."""
    game, (alice,), _ = await ctx.new_game("alice")
    await update(alice, game, 2, updates={"status": "active"})
    for stale in (1, 3, 0, -1, 10**12):
        err = await alice.request_error(
            "CONFLICT", "STATE_UPDATE", updates={"status": "paused"}, expected_version=stale
        )
        expect_equal(f"CONFLICT.version for expected_version {stale}", 2, err.get("version"))
    state = await get_state(alice, game)
    expect_equal("status after conflicts", "active", state["status"])
    expect_equal("version after conflicts", 2, state["version"])


@check("update.check_order_is_shape_then_rights_then_conflict_then_rules")
async def check_order(ctx: CheckContext) -> None:
    """Note 17: shape (BAD_MESSAGE) → rights (FORBIDDEN) → expected_version (CONFLICT) → rules
    (INVALID_STATE)."""
    game, (alice,), _ = await ctx.new_game("alice")
    observer, _ = await ctx.game(game, "eve", role="observer")
    await observer.request_error(
        "BAD_MESSAGE", "STATE_UPDATE", updates={"bogus": 1}, expected_version=9
    )
    await observer.request_error(
        "FORBIDDEN", "STATE_UPDATE", updates={"status": "finished"}, expected_version=9
    )
    await alice.request_error(
        "BAD_MESSAGE", "STATE_UPDATE", updates={"scores": "x"}, expected_version=9
    )
    await alice.request_error(
        "CONFLICT", "STATE_UPDATE", updates={"status": "finished"}, expected_version=9
    )
    await alice.request_error(
        "INVALID_STATE", "STATE_UPDATE", updates={"status": "finished"}, expected_version=1
    )


@check("update.refused_update_is_applied_not_at_all")
async def refused_update_is_atomic(ctx: CheckContext) -> None:
    """PROTOCOL.md STATE_UPDATE: an update is validated whole and applied whole, or not at all."""
    game, (alice,), joined = await ctx.new_game("alice")
    for updates in (
        {"status": "active", "scores": {"alice": 1, "nobody": 1}},
        {"settings": {"mode": "x"}, "timer": {"alice": -1}},
        {"scores": {"alice": 5}, "current_player": "nobody"},
        {"status": "active", "settings": {"initial_time_ms": "soon"}},
    ):
        await alice.request_error("INVALID_STATE", "STATE_UPDATE", updates=updates)
    expect_equal("state after refused updates", joined, await get_state(alice, game))


@check("update.changing_initial_time_ms_keeps_existing_timers")
async def initial_time_keeps_timers(ctx: CheckContext) -> None:
    """Note 21: only the value at join time matters: changing `initial_time_ms` never changes
    timers."""
    game, (alice,), _ = await ctx.new_game("alice")
    state = await update(alice, game, 2, updates={"settings": {"initial_time_ms": "86400000"}})
    expect_equal("alice's timer", DEFAULT_TIMER, state["timer"]["alice"])
    _, joined = await ctx.game(game, "bob")
    expect_equal("timers", {"alice": DEFAULT_TIMER, "bob": 86_400_000}, joined["timer"])


@check("update.null_expected_version_means_absent")
async def expected_version_null(ctx: CheckContext) -> None:
    """Note 32: `expected_version: null` means the field is absent: the update is accepted at any
    version, and a rule break is INVALID_STATE (not CONFLICT, not BAD_MESSAGE)."""
    game, (alice,), _ = await ctx.new_game("alice")
    await update(alice, game, 2, updates={"status": "active"}, expected_version=None)
    await update(alice, game, 3, updates={"scores": {"alice": 4}}, expected_version=None)
    await alice.request_error(
        "INVALID_STATE", "STATE_UPDATE", updates={"current_player": "nobody"}, expected_version=None
    )
    expect_equal("version", 3, (await get_state(alice, game))["version"])


def _version(msg: dict[str, Any]) -> int:
    version = msg.get("version")
    if not is_int(version):
        raise ConformanceFailure(f"`version` should be an integer: {json.dumps(msg)}")
    return version


async def _answer(conn: Conn, mid: str, broadcasts: list[int]) -> dict[str, Any]:
    """The answer to `mid`, noting the versions of the STATE broadcasts received before it."""
    while True:
        msg = await conn.recv(what=f"the answer to {mid}")
        if msg.get("type") == "STATE" and "re" not in msg:
            broadcasts.append(_version(msg))
            continue
        if msg.get("re") != mid:
            raise ConformanceFailure(f"expected the answer to {mid}, got {json.dumps(msg)}")
        return msg


@check("update.versions_shown_under_concurrent_changes_are_never_ahead_of_committed_ones")
async def shown_versions_committed(ctx: CheckContext) -> None:
    """Note 36: nothing uncommitted is shown. While another player's updates are committed, a
    CONFLICT's `version` is never ahead of a later GET_STATE on the same connection, the
    versions a connection is shown never go back, and each is one it also gets as a committed
    change's STATE broadcast (a correct server always passes; a wrong one is caught when the
    timing exposes it)."""
    _, (alice, bob), joined = await ctx.new_game("alice", "bob")
    n = 60  # within the burst: nothing is rate limited
    last = joined["version"] + n

    async def alice_updates() -> list[int]:
        """One update after another: many commits, spread over the time bob reads."""
        acks = []
        for _ in range(n):
            mid = await alice.send_msg("STATE_UPDATE", updates={"score_deltas": {"alice": 1}})
            acks.append(_version(await _answer(alice, mid, [])))
        return acks

    async def bob_reads() -> list[tuple[str, int]]:
        shown = []
        for i in range(n // 2):
            mid = await bob.send_msg(
                "STATE_UPDATE", updates={"status": "waiting"}, expected_version=0
            )
            err = await _answer(bob, mid, broadcasts)
            expect_equal(f"answer {i} to a stale expected_version", "CONFLICT", err.get("code"))
            shown.append(("CONFLICT", _version(err)))
            mid = await bob.send_msg("GET_STATE")
            msg = await _answer(bob, mid, broadcasts)
            expect_equal(f"answer {i} to GET_STATE", "STATE", msg.get("type"))
            shown.append(("GET_STATE", _version(msg)))
        return shown

    broadcasts: list[int] = []
    acks, shown = await asyncio.gather(alice_updates(), bob_reads())
    expected_acks = list(range(joined["version"] + 1, last + 1))
    expect_equal("ACK versions of alice's updates", expected_acks, acks)
    versions = [v for _, v in shown]
    expect(
        versions == sorted(versions),
        f"versions shown to bob went back (CONFLICT then GET_STATE, in turn): {shown}",
    )
    expect(all(joined["version"] <= v <= last for v in versions), f"versions out of range: {shown}")
    while not broadcasts or broadcasts[-1] < last:
        msg = await bob.recv(what=f"STATE broadcasts up to version {last}")
        if msg.get("type") == "STATE" and "re" not in msg:
            broadcasts.append(_version(msg))
    committed = {joined["version"], *broadcasts}
    phantom = [s for s in shown if s[1] not in committed]
    expect(phantom == [], f"versions shown to bob but never broadcast as committed: {phantom}")
