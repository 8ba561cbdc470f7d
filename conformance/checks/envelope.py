"""The message envelope: frames, JSON, `id`, `type` (PROTOCOL.md "Messages", notes 1-7, 35)."""

from __future__ import annotations

import json

from conformance.context import CheckContext, expect_state
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


# A JSON integer beyond 64 bits: servers may read such frames on a slower, exact path (note 30).
HUGE = "123456789012345678901234567890"
# Unpaired surrogate escapes, as JSON text (backslashes kept): high alone, low alone, high
# followed by a non-surrogate, a low before a high.
UNPAIRED = (r"\ud800", r"\udfff", r"\ud83dx", r"\ude00\ud83d", r"ab\udc00")


def _surrogate_frames(huge: bool) -> list[str]:
    """Frames that are JSON but for one unpaired surrogate escape (in a value, the id, a key)."""
    number = f', "n": {HUGE}' if huge else ""
    frames = [f'{{"type": "HEARTBEAT", "id": "s"{number}, "x": "{bad}"}}' for bad in UNPAIRED]
    frames += [
        f'{{"type": "HEARTBEAT", "id": "{UNPAIRED[0]}"{number}}}',
        f'{{"type": "HEARTBEAT"{number}, "{UNPAIRED[1]}": 1, "id": "s"}}',
        f'{{"type": "HEARTBEAT", "id": "s", "x": ["{UNPAIRED[0]}", -{HUGE}]}}'
        if huge
        else f'{{"type": "HEARTBEAT", "id": "s", "x": {{"y": ["{UNPAIRED[0]}"]}}}}',
    ]
    return frames


async def _surrogates_refused(ctx: CheckContext, huge: bool) -> None:
    conn = await ctx.open(ctx.game_url(ctx.game_id()))
    first = _surrogate_frames(huge)[0]
    await conn.send_raw(first)  # "not JSON" comes before authentication (note 1)
    await conn.expect_error("BAD_MESSAGE", re=None, what=f"{first} before CONNECT")
    await ctx.connect(conn, ctx.token("alice"))
    for frame in _surrogate_frames(huge):
        await conn.send_raw(frame)
        await conn.expect_error("BAD_MESSAGE", re=None, what=frame)
    # a paired escape is text: the id is the one character it spells
    number = f', "n": {HUGE}' if huge else ""
    await conn.send_raw(f'{{"type": "HEARTBEAT", "id": "\\ud83d\\ude00"{number}}}')
    await conn.recv_type("HEARTBEAT_ACK", re="\U0001f600", what="a paired surrogate escape")
    await conn.expect_open()


@check("envelope.unpaired_surrogate_escape_is_bad_message_with_null_re")
async def unpaired_surrogate(ctx: CheckContext) -> None:
    """Note 35: a string with an unpaired surrogate escape ("\\ud800") is not text: the frame is
    not JSON (BAD_MESSAGE, `re` null, even with a readable `id`), stays open; a pair is text."""
    await _surrogates_refused(ctx, huge=False)


@check("envelope.unpaired_surrogate_escape_is_bad_message_beside_a_huge_integer")
async def unpaired_surrogate_huge(ctx: CheckContext) -> None:
    """Notes 35 and 30: the surrogate rule holds in frames with an integer beyond 64 bits too
    (which servers may parse on another path): BAD_MESSAGE, `re` null, stays open."""
    await _surrogates_refused(ctx, huge=True)


@check("envelope.a_repeated_key_keeps_its_last_value")
async def repeated_key(ctx: CheckContext) -> None:
    """Note 35: a key repeated in one object keeps its last value (`id`, `type`, keys inside
    `updates`), on frames with an integer beyond 64 bits too."""
    game, (alice,), _ = await ctx.new_game("alice")
    for frame, re in (
        ('{"type": "HEARTBEAT", "id": "a", "id": "b"}', "b"),
        ('{"type": "HEARTBEAT", "id": 5, "id": "c"}', "c"),
        ('{"type": "NOPE", "id": "d", "type": "HEARTBEAT"}', "d"),
        (f'{{"type": "HEARTBEAT", "id": "e", "n": {HUGE}, "id": "f"}}', "f"),
        (f'{{"type": "HEARTBEAT", "id": {HUGE}, "id": "g"}}', "g"),
    ):
        await alice.send_raw(frame)
        await alice.recv_type("HEARTBEAT_ACK", re=re, what=f"HEARTBEAT_ACK re={re!r} for {frame}")
    await alice.send_raw('{"type": "HEARTBEAT", "id": "h", "id": 5}')
    await alice.expect_error("BAD_MESSAGE", re=None, what="a last `id` that is not readable")
    await alice.send_raw('{"type": "HEARTBEAT", "id": "i", "type": "NOPE"}')
    await alice.expect_error("UNKNOWN_TYPE", re="i", what="a last `type` that is unknown")
    await alice.send_raw(
        '{"type": "STATE_UPDATE", "id": "u1", "updates": {"scores": {"alice": 1, "alice": 7}}}'
    )
    await alice.recv_type("ACK", re="u1")
    state = await expect_state(alice, game, 2, "the update with a repeated score")
    expect_equal("alice's score (last of 1, 7)", 7, state["scores"]["alice"])
    await alice.send_raw(
        '{"type": "STATE_UPDATE", "id": "u2", "updates": {"status": "bogus", "status": "active"},'
        f' "n": {HUGE}, "expected_version": {HUGE}, "expected_version": 2}}'
    )
    await alice.recv_type("ACK", re="u2")
    state = await expect_state(alice, game, 3, "the update with a repeated status")
    expect_equal("status (last of bogus, active)", "active", state["status"])
