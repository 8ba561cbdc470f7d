"""Transport: paths, /healthz, frame size limit (PROTOCOL.md "Transport", note 12)."""

from __future__ import annotations

import json

from conformance.client import http_get
from conformance.context import CheckContext
from conformance.registry import ConformanceFailure, check, expect, expect_equal


@check("transport.healthz_answers_200_ok")
async def healthz_answers_200_ok(ctx: CheckContext) -> None:
    """PROTOCOL.md Transport: `GET /healthz` answers HTTP 200 `ok` (no upgrade)."""
    status, body = await http_get(ctx.base, "/healthz", ctx.config.answer_timeout)
    expect_equal("GET /healthz status", 200, status)
    expect_equal("GET /healthz body", "ok", body.decode(errors="replace").strip())


@check("transport.other_paths_are_refused_with_http_404")
async def other_paths_are_refused_with_http_404(ctx: CheckContext) -> None:
    """PROTOCOL.md Transport: any path but /v1/games/{id} and /v1/admin is refused with 404."""
    game = ctx.game_id()
    for path in (
        "/",
        "/v1",
        "/v1/games",
        "/v1/games/",
        f"/v2/games/{game}",
        f"/v1/games/{game}/extra",
        "/v1/admin/extra",
        "/v1/admins",
        f"/V1/games/{game}",
        "/healthz/x",
    ):
        expect_equal(f"handshake status of {path}", 404, await ctx.handshake_status(path))


@check("transport.game_path_with_an_invalid_game_id_is_refused_with_http_404")
async def game_path_with_an_invalid_game_id_is_refused_with_http_404(ctx: CheckContext) -> None:
    """Note 12: a game path whose id breaks the identifier rules is HTTP 404."""
    for game in ("a" * 65, "bad%20id", "bad!id", "caf%C3%A9"):
        path = f"/v1/games/{game}"
        expect_equal(f"handshake status of {path}", 404, await ctx.handshake_status(path))


@check("transport.identifier_of_64_characters_is_a_valid_game_path")
async def identifier_of_64_characters_is_a_valid_game_path(ctx: CheckContext) -> None:
    """PROTOCOL.md Transport: identifiers are 1 to 64 characters of [A-Za-z0-9_.-]."""
    game = (ctx.game_id("cf-max.") + "_" * 64)[:64]
    conn, state = await ctx.game(game, "alice")
    expect_equal("game_id of a 64-character game", game, state["game_id"])
    await conn.expect_open()


@check("transport.query_string_is_allowed_and_ignored")
async def query_string_is_allowed_and_ignored(ctx: CheckContext) -> None:
    """Note 12: a query string on a game or admin path is allowed and ignored."""
    game = ctx.game_id()
    conn = await ctx.open(ctx.game_url(game) + "?client=conformance&x=1")
    connected = await ctx.connect(conn, ctx.token("alice"))
    state = connected.get("state")
    expect(isinstance(state, dict) and state.get("game_id") == game, f"state: {state!r}")
    admin = await ctx.open(ctx.admin_url + "?v=1")
    await ctx.connect(admin, ctx.token("ops", "admin"))
    await admin.expect_open()


def _padded_heartbeat(size: int) -> str:
    base = json.dumps({"type": "HEARTBEAT", "id": "big", "pad": ""})
    text = json.dumps({"type": "HEARTBEAT", "id": "big", "pad": "x" * (size - len(base))})
    if len(text.encode()) != size:
        raise ConformanceFailure(f"suite bug: padded frame is {len(text)} bytes, not {size}")
    return text


@check("transport.frame_of_exactly_max_size_is_accepted_and_answered")
async def frame_of_exactly_max_size_is_accepted_and_answered(ctx: CheckContext) -> None:
    """PROTOCOL.md Transport: only frames *larger* than 65,536 bytes close (note 4: extra fields
    ignored)."""
    conn, _ = await ctx.game(ctx.game_id())
    await conn.send_raw(_padded_heartbeat(ctx.config.max_frame))
    await conn.recv_type("HEARTBEAT_ACK", re="big")
    await conn.expect_open()


@check("transport.frame_one_byte_over_max_size_closes_1009")
async def frame_one_byte_over_max_size_closes_1009(ctx: CheckContext) -> None:
    """PROTOCOL.md Transport: a frame larger than 65,536 bytes closes the connection with 1009."""
    conn, _ = await ctx.game(ctx.game_id())
    await conn.send_raw(_padded_heartbeat(ctx.config.max_frame + 1))
    await conn.expect_close(1009)
