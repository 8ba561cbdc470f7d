"""Creation and joining (PROTOCOL.md "Creation and joining", notes 10, 19, 21)."""

from __future__ import annotations

from conformance.context import CheckContext, expect_state, get_state, update
from conformance.registry import check, expect, expect_equal
from conformance.shapes import DEFAULT_TIMER, is_timestamp


@check("join.first_connect_creates_the_game_at_version_1_with_the_player_in_it")
async def first_connect_creates_game(ctx: CheckContext) -> None:
    """PROTOCOL.md Creation and joining: creation and first join are one change: version 1, player
    in it."""
    game = ctx.game_id()
    _, state = await ctx.game(game, "alice")
    expect_equal("status", "waiting", state["status"])
    expect_equal("current_player", None, state["current_player"])
    expect_equal("scores", {"alice": 0}, state["scores"])
    expect_equal("timer", {"alice": DEFAULT_TIMER}, state["timer"])
    expect_equal("settings", {}, state["settings"])
    expect_equal("version", 1, state["version"])
    expect(is_timestamp(state["updated_at"]), f"updated_at: {state['updated_at']!r}")


@check("join.join_is_broadcast_to_others_and_the_joiner_sees_it_in_connected")
async def join_is_broadcast(ctx: CheckContext) -> None:
    """PROTOCOL.md Creation and joining: a join is a change (version + 1) broadcast to open
    connections."""
    game, (alice,), _ = await ctx.new_game("alice")
    watcher, _ = await ctx.game(game, "eve", role="observer")
    bob, state = await ctx.game(game, "bob")
    expect_equal("version in bob's CONNECTED", 2, state["version"])
    expect_equal("scores in bob's CONNECTED", {"alice": 0, "bob": 0}, state["scores"])
    for conn, who in ((alice, "alice"), (watcher, "the observer")):
        seen = await expect_state(conn, game, 2, f"join broadcast to {who}")
        expect_equal(f"state broadcast to {who}", state, seen)
    # the joiner gets no broadcast of its own join: its next frame answers its next request
    await bob.expect_open()


@check("join.reconnecting_player_is_not_a_change")
async def reconnect_is_not_a_change(ctx: CheckContext) -> None:
    """PROTOCOL.md Creation and joining: only a player whose id is not yet in `scores` joins."""
    game, (alice,), _ = await ctx.new_game("alice")
    again, state = await ctx.game(game, "alice")
    expect_equal("version after alice connects again", 1, state["version"])
    expect_equal("scores", {"alice": 0}, state["scores"])
    await alice.expect_open()  # no broadcast reached the first connection
    await again.expect_open()


@check("join.joiner_timer_is_initial_time_ms_or_60000")
async def joiner_timer(ctx: CheckContext) -> None:
    """PROTOCOL.md Creation and joining: `timer[id] = int(settings.initial_time_ms)` or 60000; note
    21."""
    game, (alice,), _ = await ctx.new_game("alice")
    await update(alice, game, 2, updates={"settings": {"initial_time_ms": "5000"}})
    _, state = await ctx.game(game, "bob")
    await expect_state(alice, game, 3, "bob's join")
    expect_equal("timers after bob joined", {"alice": DEFAULT_TIMER, "bob": 5000}, state["timer"])
    await update(alice, game, 4, updates={"settings": {"initial_time_ms": "0"}})
    _, state = await ctx.game(game, "carol")
    expect_equal("carol's timer", 0, state["timer"]["carol"])
    await expect_state(alice, game, 5, "carol's join")
    await update(alice, game, 6, updates={"settings": {"initial_time_ms": None}})
    _, state = await ctx.game(game, "dave")
    expect_equal(
        "dave's timer after removing initial_time_ms", DEFAULT_TIMER, state["timer"]["dave"]
    )
    expect_equal("scores", {"alice": 0, "bob": 0, "carol": 0, "dave": 0}, state["scores"])


@check("join.sixty_fifth_player_is_forbidden_4403")
async def sixty_fifth_player(ctx: CheckContext) -> None:
    """PROTOCOL.md Creation and joining: at most 64 players; the 65th gets FORBIDDEN and close
    4403."""
    game = ctx.game_id()
    for i in range(64):
        conn, state = await ctx.game(game, f"p{i:02d}")
        expect_equal(f"version after player {i + 1} joined", i + 1, state["version"])
        await conn.aclose()
    conn = await ctx.open(ctx.game_url(game))
    await conn.send({"type": "CONNECT", "id": "late", "token": ctx.token("p64")})
    await conn.expect_error("FORBIDDEN", re="late", what="the 65th player")
    await conn.expect_close(4403)
    # a player already in the game still connects, and nothing changed
    member, state = await ctx.game(game, "p00")
    expect_equal("players", 64, len(state["scores"]))
    expect_equal("version", 64, state["version"])
    await member.expect_open()


@check("join.observer_on_a_missing_game_is_not_found_4404")
async def observer_on_missing_game(ctx: CheckContext) -> None:
    """PROTOCOL.md Creation and joining: an observer opening a missing game gets NOT_FOUND and
    close 4404."""
    game = ctx.game_id()
    conn = await ctx.open(ctx.game_url(game))
    await conn.send({"type": "CONNECT", "id": "obs", "token": ctx.token("eve", "observer")})
    await conn.expect_error("NOT_FOUND", re="obs", what="an observer on a missing game")
    await conn.expect_close(4404)
    # and the observer did not create it
    again = await ctx.open(ctx.game_url(game))
    await again.send({"type": "CONNECT", "id": "obs2", "token": ctx.token("eve", "observer")})
    await again.expect_error("NOT_FOUND", re="obs2", what="the game must still not exist")


@check("join.observer_never_joins")
async def observer_never_joins(ctx: CheckContext) -> None:
    """PROTOCOL.md Creation and joining: observers never join; their CONNECTED carries the state."""
    game, (alice,), joined = await ctx.new_game("alice")
    conn = await ctx.open(ctx.game_url(game))
    msg = await ctx.connect(conn, ctx.token("eve", "observer"))
    expect_equal("CONNECTED.role", "observer", msg.get("role"))
    expect_equal("CONNECTED.player_id", "eve", msg.get("player_id"))
    expect_equal("observer's CONNECTED.state", joined, msg.get("state"))
    await alice.expect_open()  # no join broadcast


@check("join.admin_on_a_game_path_gets_the_state_and_never_joins")
async def admin_on_game_path(ctx: CheckContext) -> None:
    """Note 10: an admin may open a game path; its CONNECTED carries `state`; admins never join."""
    game, (alice,), joined = await ctx.new_game("alice")
    conn = await ctx.open(ctx.game_url(game))
    msg = await ctx.connect(conn, ctx.token("ops", "admin", [game]))
    expect_equal("CONNECTED.role", "admin", msg.get("role"))
    expect_equal("admin's CONNECTED.state", joined, msg.get("state"))
    expect_equal("GET_STATE", joined, await get_state(conn, game))
    await alice.expect_open()


@check("join.admin_on_a_missing_game_is_not_found_4404")
async def admin_on_missing_game(ctx: CheckContext) -> None:
    """Note 10: admins, like observers, get NOT_FOUND and close 4404 on a game that does not
    exist."""
    conn = await ctx.open(ctx.game_url(ctx.game_id()))
    await conn.send({"type": "CONNECT", "id": "adm", "token": ctx.token("ops", "admin")})
    await conn.expect_error("NOT_FOUND", re="adm", what="an admin on a missing game")
    await conn.expect_close(4404)


@check("join.a_new_player_may_join_a_finished_game")
async def join_finished_game(ctx: CheckContext) -> None:
    """Note 19: joins are not updates: a new player may still join a finished game."""
    game, (alice,), _ = await ctx.new_game("alice")
    await update(alice, game, 2, updates={"status": "active"})
    await update(alice, game, 3, updates={"status": "finished"})
    _, state = await ctx.game(game, "bob")
    expect_equal("version after bob joined a finished game", 4, state["version"])
    expect_equal("status", "finished", state["status"])
    expect_equal("scores", {"alice": 0, "bob": 0}, state["scores"])
    await expect_state(alice, game, 4, "bob's join")
