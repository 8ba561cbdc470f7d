"""Each client message's answer and fields on both paths (PROTOCOL.md "Messages", notes 10-15)."""

from __future__ import annotations

from conformance.context import CheckContext, get_state
from conformance.registry import check, expect, expect_equal
from conformance.shapes import is_timestamp


@check("messages.connected_carries_re_session_player_role_and_state")
async def connected_carries_re_session_player_role_and_state(ctx: CheckContext) -> None:
    """PROTOCOL.md Messages: `CONNECTED {re, session_id, player_id, role, state}`; note 15: full
    state."""
    game = ctx.game_id()
    conn = await ctx.open(ctx.game_url(game))
    await conn.send({"type": "CONNECT", "id": "hello", "token": ctx.token("alice")})
    msg = await conn.recv_type("CONNECTED", re="hello")
    expect_equal("CONNECTED.player_id", "alice", msg.get("player_id"))
    expect_equal("CONNECTED.role", "player", msg.get("role"))
    sid = msg.get("session_id")
    expect(isinstance(sid, str) and sid != "", f"CONNECTED.session_id should be a string: {sid!r}")
    state = msg.get("state")
    expect(isinstance(state, dict) and state.get("game_id") == game, f"CONNECTED.state: {state!r}")


@check("messages.session_ids_differ_between_connections")
async def session_ids_differ_between_connections(ctx: CheckContext) -> None:
    """PROTOCOL.md Messages: `session_id` identifies a connection (two sessions of one player
    differ)."""
    game = ctx.game_id()
    ids = set()
    for _ in range(3):
        conn = await ctx.open(ctx.game_url(game))
        ids.add((await ctx.connect(conn, ctx.token("alice")))["session_id"])
    expect_equal("distinct session ids over 3 connections", 3, len(ids))


@check("messages.heartbeat_answers_server_time_in_rfc3339_utc_milliseconds")
async def heartbeat_answers_server_time(ctx: CheckContext) -> None:
    """PROTOCOL.md Messages: `HEARTBEAT_ACK {re, server_time}`, RFC 3339 UTC with milliseconds."""
    conn, _ = await ctx.game(ctx.game_id())
    msg = await conn.request("HEARTBEAT", "HEARTBEAT_ACK")
    expect(is_timestamp(msg.get("server_time")), f"server_time: {msg.get('server_time')!r}")
    admin = await ctx.admin()
    msg = await admin.request("HEARTBEAT", "HEARTBEAT_ACK")
    expect(is_timestamp(msg.get("server_time")), f"admin server_time: {msg.get('server_time')!r}")


@check("messages.get_state_answers_state_with_re_game_id_and_version")
async def get_state_answers_state(ctx: CheckContext) -> None:
    """PROTOCOL.md Messages: `GET_STATE` answers `STATE {re, game_id, version, state}`; note 15."""
    game, (conn,), joined = await ctx.new_game("alice")
    state = await get_state(conn, game)
    expect_equal("GET_STATE state", joined, state)


@check("messages.get_state_on_a_game_path_ignores_its_game_id_field")
async def get_state_ignores_game_id(ctx: CheckContext) -> None:
    """Note 13: on a game path, GET_STATE's `game_id` field is ignored (always the path's game)."""
    game, (conn,), _ = await ctx.new_game("alice")
    other, _, _ = await ctx.new_game("bob")
    await get_state(conn, game, game_id=other)
    await get_state(conn, game, game_id=5)


@check("messages.disconnect_answers_disconnected_then_closes_1000")
async def disconnect_answers_disconnected(ctx: CheckContext) -> None:
    """PROTOCOL.md Messages: `DISCONNECT` answers `DISCONNECTED {re}`, then close 1000."""
    conn, _ = await ctx.game(ctx.game_id())
    await conn.request("DISCONNECT", "DISCONNECTED")
    await conn.expect_close(1000)
    admin = await ctx.admin()
    await admin.request("DISCONNECT", "DISCONNECTED")
    await admin.expect_close(1000)


@check("messages.disconnect_keeps_the_player_in_the_game")
async def disconnect_keeps_the_player(ctx: CheckContext) -> None:
    """PROTOCOL.md Creation and joining: only new ids join; a player who left is still in
    `scores`."""
    game, (alice,), _ = await ctx.new_game("alice")
    await alice.request("DISCONNECT", "DISCONNECTED")
    await alice.expect_close(1000)
    _, state = await ctx.game(game, "bob")
    expect_equal(
        "players after alice left and bob joined", ["alice", "bob"], sorted(state["scores"])
    )


@check("messages.admin_messages_on_a_game_path_are_forbidden")
async def admin_messages_on_game_path_are_forbidden(ctx: CheckContext) -> None:
    """Note 13: LIST_GAMES and IMPORT_STATE on a game path are FORBIDDEN, connection stays open."""
    game, (conn,), state = await ctx.new_game("alice")
    await conn.request_error("FORBIDDEN", "LIST_GAMES")
    await conn.request_error("FORBIDDEN", "IMPORT_STATE", state=state)
    admin_conn, _ = await ctx.game(game, "ops", role="admin")
    await admin_conn.request_error("FORBIDDEN", "LIST_GAMES")
    await conn.expect_open()


@check("messages.admin_connected_has_no_state")
async def admin_connected_has_no_state(ctx: CheckContext) -> None:
    """PROTOCOL.md Messages: admin `CONNECTED` has no `state`; note 10: on the admin path."""
    conn = await ctx.open(ctx.admin_url)
    msg = await ctx.connect(conn, ctx.token("ops", "admin"))
    expect("state" not in msg, f"admin CONNECTED should have no state: {msg!r}")
    expect_equal("CONNECTED.role", "admin", msg.get("role"))
    expect_equal("CONNECTED.player_id", "ops", msg.get("player_id"))


@check("messages.state_update_on_the_admin_path_is_bad_message")
async def state_update_on_admin_path(ctx: CheckContext) -> None:
    """Note 14: STATE_UPDATE on the admin path is BAD_MESSAGE (updates go through the game path)."""
    game, _, _ = await ctx.new_game("alice")
    admin = await ctx.admin()
    await admin.request_error(
        "BAD_MESSAGE", "STATE_UPDATE", game_id=game, updates={"status": "active"}
    )
    expect_equal(
        "version after refused admin-path update",
        1,
        (await get_state(admin, game, game_id=game))["version"],
    )
