"""Authentication and access (PROTOCOL.md "Authentication", notes 3, 5, 8-11)."""

from __future__ import annotations

import asyncio
import time
from typing import Any

from conformance import tokens
from conformance.context import CheckContext, get_state
from conformance.registry import ConformanceFailure, check, expect_equal


async def _refused(
    ctx: CheckContext, url: str, token: Any, code: str, close: int, what: str, **extra: Any
) -> None:
    """CONNECT with `token` must get `ERROR code` (re = its id), then close `close`."""
    conn = await ctx.open(url)
    fields: dict[str, Any] = {"type": "CONNECT", "id": "auth", **extra}
    if token is not ...:
        fields["token"] = token
    await conn.send(fields)
    await conn.expect_error(code, re="auth", what=what)
    await conn.expect_close(close)


async def _refused_game_token(ctx: CheckContext, token: Any, what: str) -> None:
    """On an existing game (so that a refusal is not a 4404) the token gets 4401."""
    game, _, _ = await ctx.new_game("alice")
    await _refused(ctx, ctx.game_url(game), token, "UNAUTHENTICATED", 4401, what)


@check("auth.message_before_connect_is_unauthenticated_and_not_processed")
async def message_before_connect_is_unauthenticated(ctx: CheckContext) -> None:
    """PROTOCOL.md Authentication: anything before CONNECT gets UNAUTHENTICATED, not processed;
    note 3: stays open."""
    game, _, _ = await ctx.new_game("alice")
    conn = await ctx.open(ctx.game_url(game))
    for kind, fields in (
        ("HEARTBEAT", {}),
        ("GET_STATE", {}),
        ("STATE_UPDATE", {"updates": {"status": "active"}}),
        ("DISCONNECT", {}),
        ("LIST_GAMES", {}),
    ):
        await conn.request_error("UNAUTHENTICATED", kind, **fields)
    await ctx.connect(conn, ctx.token("alice"))
    state = await get_state(conn, game)
    expect_equal("version (the early STATE_UPDATE must not apply)", 1, state["version"])
    expect_equal("status", "waiting", state["status"])
    admin = await ctx.open(ctx.admin_url)
    await admin.request_error("UNAUTHENTICATED", "LIST_GAMES")
    await admin.request_error("UNAUTHENTICATED", "HEARTBEAT")
    await ctx.connect(admin, ctx.token("ops", "admin"))


@check("auth.unknown_type_before_connect_is_unknown_type")
async def unknown_type_before_connect(ctx: CheckContext) -> None:
    """Note 3: an unknown type before CONNECT is UNKNOWN_TYPE (the type check comes first), stays
    open."""
    conn = await ctx.open(ctx.game_url(ctx.game_id()))
    await conn.request_error("UNKNOWN_TYPE", "HELLO")
    await ctx.connect(conn, ctx.token("alice"))


@check("auth.token_signed_with_another_secret_closes_4401")
async def wrong_secret(ctx: CheckContext) -> None:
    """PROTOCOL.md Authentication: bad signature is UNAUTHENTICATED, close 4401 (note 8)."""
    token = ctx.sign(tokens.claims("alice"), secret=ctx.secret + "-not")
    await _refused_game_token(ctx, token, "a token signed with another secret")


@check("auth.unsigned_alg_none_token_closes_4401")
async def alg_none(ctx: CheckContext) -> None:
    """PROTOCOL.md Authentication: tokens are HS256; note 8: `alg: none` is UNAUTHENTICATED,
    4401."""
    await _refused_game_token(ctx, tokens.unsigned(tokens.claims("alice")), "an alg:none token")


@check("auth.token_signed_with_hs512_or_hs384_closes_4401")
async def other_algorithms(ctx: CheckContext) -> None:
    """PROTOCOL.md Authentication: tokens are HS256; note 8: any other algorithm is
    UNAUTHENTICATED, 4401."""
    for alg in ("HS512", "HS384"):
        token = ctx.sign(tokens.claims("alice"), algorithm=alg)
        await _refused_game_token(ctx, token, f"a token signed with {alg}")


@check("auth.expired_token_closes_4401")
async def expired_token(ctx: CheckContext) -> None:
    """PROTOCOL.md Authentication: an expired token is UNAUTHENTICATED, close 4401 (game and admin
    paths)."""
    payload = tokens.claims("alice", ttl=-3600)
    await _refused_game_token(ctx, ctx.sign(payload), "a token expired an hour ago")
    admin = tokens.claims("ops", "admin", ttl=-3600)
    await _refused(ctx, ctx.admin_url, ctx.sign(admin), "UNAUTHENTICATED", 4401, "expired admin")


@check("auth.token_missing_a_required_claim_closes_4401")
async def missing_claims(ctx: CheckContext) -> None:
    """PROTOCOL.md Authentication: missing claim is UNAUTHENTICATED, 4401; note 8: sub/exp/role
    everywhere, games on game paths."""
    for claim in ("exp", "sub", "role", "games"):
        payload = tokens.drop(tokens.claims("alice"), claim)
        await _refused_game_token(ctx, ctx.sign(payload), f"a token without `{claim}`")
    for claim in ("exp", "sub", "role"):
        payload = tokens.drop(tokens.claims("ops", "admin"), claim)
        await _refused(
            ctx, ctx.admin_url, ctx.sign(payload), "UNAUTHENTICATED", 4401, f"admin without {claim}"
        )


@check("auth.admin_token_without_games_is_accepted_on_the_admin_path")
async def admin_without_games(ctx: CheckContext) -> None:
    """Note 8: `games` is ignored on the admin path (not required there)."""
    conn = await ctx.open(ctx.admin_url)
    payload = tokens.drop(tokens.claims("ops", "admin"), "games")
    await ctx.connect(conn, ctx.sign(payload))
    await conn.expect_open()


@check("auth.ill_typed_claims_close_4401")
async def ill_typed_claims(ctx: CheckContext) -> None:
    """Note 8: an ill-typed claim is UNAUTHENTICATED, close 4401."""
    base = tokens.claims("alice")
    for name, value in (
        ("exp", "tomorrow"),
        ("games", "*"),
        ("games", [1, 2]),
        ("role", 1),
        ("sub", 7),
        ("sub", None),
    ):
        await _refused_game_token(ctx, ctx.sign({**base, name: value}), f"claim {name}={value!r}")


@check("auth.unknown_role_closes_4401")
async def unknown_role(ctx: CheckContext) -> None:
    """PROTOCOL.md Authentication: role is player|observer|admin; note 8: an unknown role is
    4401."""
    for role in ("superuser", "Player", ""):
        token = ctx.sign(tokens.claims("alice", role=role))
        await _refused_game_token(ctx, token, f"role {role!r}")


@check("auth.sub_breaking_the_identifier_rules_closes_4401")
async def bad_sub(ctx: CheckContext) -> None:
    """PROTOCOL.md Authentication: `sub` follows the identifier rules; note 8: otherwise 4401."""
    for sub in ("", "a" * 65, "bad id", "al!ce", "caf\u00e9"):
        token = ctx.sign(tokens.claims(sub))
        await _refused_game_token(ctx, token, f"sub {sub!r}")


@check("auth.connect_without_a_valid_token_string_closes_4401")
async def no_token(ctx: CheckContext) -> None:
    """PROTOCOL.md Error codes: no/invalid token is UNAUTHENTICATED, 4401; note 8: non-string token
    too."""
    for token in (..., None, 5, "", "not-a-jwt", "a.b.c", ["x"]):
        await _refused_game_token(ctx, token, f"token {token!r}")


@check("auth.player_or_observer_token_on_the_admin_path_is_forbidden_4403")
async def wrong_role_for_admin_path(ctx: CheckContext) -> None:
    """PROTOCOL.md Authentication: wrong role for the path; note 9: FORBIDDEN, close 4403."""
    for role in ("player", "observer"):
        token = ctx.token("alice", role)
        await _refused(ctx, ctx.admin_url, token, "FORBIDDEN", 4403, f"a {role} on /v1/admin")


@check("auth.game_not_in_the_token_games_is_forbidden_4403")
async def game_not_in_games(ctx: CheckContext) -> None:
    """PROTOCOL.md Authentication: a game not in `games` is FORBIDDEN, close 4403 (note 9)."""
    game, _, _ = await ctx.new_game("alice")
    for role in ("player", "observer", "admin"):
        token = ctx.token("bob", role, [game + "x", "other"])
        await _refused(
            ctx, ctx.game_url(game), token, "FORBIDDEN", 4403, f"{role} without the game"
        )
    # a player creating a game the token does not list must not create it either
    fresh = ctx.game_id()
    await _refused(
        ctx, ctx.game_url(fresh), ctx.token("bob", "player", [game]), "FORBIDDEN", 4403, "new game"
    )
    observer = await ctx.open(ctx.game_url(fresh))
    await observer.send({"type": "CONNECT", "id": "o", "token": ctx.token("eve", "observer")})
    await observer.expect_error("NOT_FOUND", re="o", what="the refused game must not exist")


@check("auth.token_listing_the_game_is_accepted")
async def token_listing_the_game(ctx: CheckContext) -> None:
    """PROTOCOL.md Authentication: `games` lists the game ids the token may open (or `["*"]`)."""
    game = ctx.game_id()
    conn, state = await ctx.game(game, "alice", games=["other", game])
    expect_equal("players", ["alice"], sorted(state["scores"]))
    await conn.expect_open()


@check("auth.second_connect_is_bad_message_and_changes_nothing")
async def second_connect(ctx: CheckContext) -> None:
    """Note 5: a second CONNECT on an authenticated connection is BAD_MESSAGE, stays open, changes
    nothing."""
    game, (conn,), _ = await ctx.new_game("alice")
    await conn.request_error("BAD_MESSAGE", "CONNECT", token=ctx.token("bob"))
    state = await get_state(conn, game)
    expect_equal("players after a second CONNECT", ["alice"], sorted(state["scores"]))
    expect_equal("version after a second CONNECT", 1, state["version"])


@check("auth.no_connect_within_the_deadline_closes_4401_without_error", slow=True)
async def connect_deadline(ctx: CheckContext) -> None:
    """PROTOCOL.md Authentication: no CONNECT within 10 s closes 4401; note 11: no ERROR frame."""
    limit = ctx.config.connect_timeout
    started = time.monotonic()
    conn = await ctx.open(ctx.game_url(ctx.game_id()))
    await conn.expect_close(4401, within=limit + max(5.0, limit))
    waited = time.monotonic() - started
    # the server's clock starts before ours: allow a little slack, but not an early close
    if waited < 0.8 * limit:
        raise ConformanceFailure(f"closed 4401 after {waited:.2f}s, before the {limit:g}s deadline")


@check("auth.connect_deadline_is_met_by_a_connect_after_earlier_messages", slow=True)
async def deadline_met_after_errors(ctx: CheckContext) -> None:
    """PROTOCOL.md Authentication: only a missing CONNECT closes 4401; a late-but-in-time CONNECT
    is served."""
    conn = await ctx.open(ctx.game_url(ctx.game_id()))
    await conn.request_error("UNAUTHENTICATED", "HEARTBEAT")
    await ctx.connect(conn, ctx.token("alice"))
    # once authenticated the CONNECT deadline no longer applies; heartbeats keep it from idling
    step = ctx.config.connect_timeout / 4
    for _ in range(6):
        await asyncio.sleep(step)
        await conn.expect_open()
