"""The message envelope: frames, JSON, `id`, `type` (PROTOCOL.md "Messages", notes 1-7)."""

from __future__ import annotations

import json

from conformance.context import CheckContext
from conformance.registry import check, expect_equal


@check("envelope.binary_frame_is_bad_message_with_null_re")
async def binary_frame_is_bad_message_with_null_re(ctx: CheckContext) -> None:
    """PROTOCOL.md Error codes: binary frame is BAD_MESSAGE, stays open; notes 1-2: `re` null,
    checked first."""
    conn = await ctx.open(ctx.game_url(ctx.game_id()))
    # before CONNECT too: the binary check comes before authentication (note 1)
    await conn.send_raw(json.dumps({"type": "HEARTBEAT", "id": "b1"}).encode())
    await conn.expect_error("BAD_MESSAGE", re=None, what="a binary frame before CONNECT")
    await ctx.connect(conn, ctx.token("alice"))
    await conn.send_raw(json.dumps({"type": "HEARTBEAT", "id": "b2"}).encode())
    await conn.expect_error("BAD_MESSAGE", re=None, what="a binary frame")
    await conn.expect_open()


@check("envelope.invalid_json_is_bad_message_with_null_re")
async def invalid_json_is_bad_message_with_null_re(ctx: CheckContext) -> None:
    """PROTOCOL.md Error codes: not JSON is BAD_MESSAGE, stays open; note 2: `re` null."""
    conn = await ctx.open(ctx.game_url(ctx.game_id()))
    await conn.send_raw('{"type": "CONNECT", "id": "c1"')
    await conn.expect_error("BAD_MESSAGE", re=None, what="invalid JSON before CONNECT")
    await ctx.connect(conn, ctx.token("alice"))
    for text in ('{"type": "HEARTBEAT", "id": "h1"', "HEARTBEAT", "", "{'id': 'x'}", "\x00"):
        await conn.send_raw(text)
        await conn.expect_error("BAD_MESSAGE", re=None, what=f"invalid JSON {text!r}")
    await conn.expect_open()


@check("envelope.json_that_is_not_an_object_is_bad_message_with_null_re")
async def json_that_is_not_an_object_is_bad_message_with_null_re(ctx: CheckContext) -> None:
    """PROTOCOL.md Error codes: not an object is BAD_MESSAGE, stays open; note 2: `re` null."""
    conn, _ = await ctx.game(ctx.game_id())
    for text in ('[{"type": "HEARTBEAT", "id": "h"}]', "5", '"HEARTBEAT"', "null", "true", "[]"):
        await conn.send_raw(text)
        await conn.expect_error("BAD_MESSAGE", re=None, what=f"non-object JSON {text}")
    await conn.expect_open()


@check("envelope.missing_or_unreadable_id_is_bad_message_with_null_re")
async def missing_or_unreadable_id_is_bad_message_with_null_re(ctx: CheckContext) -> None:
    """PROTOCOL.md Messages: `id` is a string of 1..64 characters; note 2: otherwise BAD_MESSAGE,
    `re` null."""
    conn, _ = await ctx.game(ctx.game_id())
    await conn.send({"type": "HEARTBEAT"})
    await conn.expect_error("BAD_MESSAGE", re=None, what="a message without id")
    for bad in (5, None, "", "x" * 65, ["a"], {"a": 1}, True):
        await conn.send({"type": "HEARTBEAT", "id": bad})
        await conn.expect_error("BAD_MESSAGE", re=None, what=f"id {bad!r}")
    await conn.expect_open()


@check("envelope.any_id_of_1_to_64_characters_is_echoed_in_re")
async def any_id_of_1_to_64_characters_is_echoed_in_re(ctx: CheckContext) -> None:
    """PROTOCOL.md Messages: every direct answer carries `re` = `id`; note 2: any characters."""
    conn, _ = await ctx.game(ctx.game_id())
    for mid in ("x", "y" * 64, "héllo wörld!", "a b/c?d#e", '"quoted"', "\u2603" * 64, "0"):
        await conn.send({"type": "HEARTBEAT", "id": mid})
        await conn.recv_type("HEARTBEAT_ACK", re=mid)


@check("envelope.missing_or_ill_typed_type_is_bad_message_with_re")
async def missing_or_ill_typed_type_is_bad_message_with_re(ctx: CheckContext) -> None:
    """PROTOCOL.md Error codes: missing/ill-typed field is BAD_MESSAGE; note 1: after the id
    check."""
    conn, _ = await ctx.game(ctx.game_id())
    await conn.send({"id": "t0"})
    await conn.expect_error("BAD_MESSAGE", re="t0", what="a message without type")
    for i, bad in enumerate((5, None, ["HEARTBEAT"], {"t": 1}, True)):
        await conn.send({"type": bad, "id": f"t{i + 1}"})
        await conn.expect_error("BAD_MESSAGE", re=f"t{i + 1}", what=f"type {bad!r}")
    await conn.expect_open()


@check("envelope.unknown_type_is_unknown_type_with_re")
async def unknown_type_is_unknown_type_with_re(ctx: CheckContext) -> None:
    """PROTOCOL.md Error codes: `type` not in the page is UNKNOWN_TYPE, stays open; note 28:
    server-to-client types sent by a client too."""
    conn, _ = await ctx.game(ctx.game_id())
    for i, bad in enumerate(("PING", "heartbeat", "", "STATE", "ACK", "CONNECTED", "ERROR")):
        await conn.send({"type": bad, "id": f"u{i}"})
        await conn.expect_error("UNKNOWN_TYPE", re=f"u{i}", what=f"type {bad!r}")
    await conn.expect_open()


@check("envelope.extra_top_level_fields_are_ignored")
async def extra_top_level_fields_are_ignored(ctx: CheckContext) -> None:
    """Note 4: extra top-level fields in a client message are ignored."""
    conn = await ctx.open(ctx.game_url(ctx.game_id()))
    await conn.send({"type": "CONNECT", "id": "c", "token": ctx.token("alice"), "extra": [1]})
    await conn.recv_type("CONNECTED", re="c")
    await conn.send({"type": "HEARTBEAT", "id": "h", "updates": {"nope": 1}, "re": "z"})
    await conn.recv_type("HEARTBEAT_ACK", re="h")


@check("envelope.answers_come_in_request_order")
async def answers_come_in_request_order(ctx: CheckContext) -> None:
    """PROTOCOL.md Messages: answers carry `re`; note 6: one connection's answers come in request
    order."""
    conn, _ = await ctx.game(ctx.game_id())
    ids = [f"o{i}" for i in range(30)]
    for i, mid in enumerate(ids):
        kind = ("HEARTBEAT", "GET_STATE", "NOPE")[i % 3]
        await conn.send({"type": kind, "id": mid})
    got = [(await conn.recv(what=f"answer {i}")).get("re") for i in range(len(ids))]
    expect_equal("order of answers", ids, got)


@check("envelope.checks_apply_in_the_order_of_note_1")
async def checks_in_order(ctx: CheckContext) -> None:
    """Note 1: unknown type → not authenticated → role/path rights → fields; the first
    failing check decides the answer."""
    game, _, _ = await ctx.new_game("alice")
    conn = await ctx.open(ctx.game_url(game))
    # authentication before fields: an ill-typed update before CONNECT is UNAUTHENTICATED
    await conn.request_error("UNAUTHENTICATED", "STATE_UPDATE", updates=5)
    await conn.request_error("UNAUTHENTICATED", "LIST_GAMES", limit="x")
    await ctx.connect(conn, ctx.token("alice"))
    # rights before fields: an ill-typed admin message on a game path is FORBIDDEN (note 13)
    await conn.request_error("FORBIDDEN", "LIST_GAMES", limit="x")
    await conn.request_error("FORBIDDEN", "IMPORT_STATE", state=5)
    # unknown type before anything about fields
    await conn.request_error("UNKNOWN_TYPE", "NOPE", updates=5)
    await conn.expect_open()
