"""The admin path: LIST_GAMES, GET_STATE with game_id, IMPORT_STATE (notes 14, 23, 24, 29,
31-34)."""

from __future__ import annotations

import asyncio
import secrets
from typing import Any

from conformance.client import Conn
from conformance.context import CheckContext, expect_state, get_state, update
from conformance.registry import ConformanceFailure, check, expect, expect_equal
from conformance.shapes import is_int, is_timestamp, without_volatile

MAX_ID = "z" * 64  # the greatest identifier in byte order
MIN_ID = "-"  # the least identifier in byte order
MAX_VERSION = 2**53 - 1  # note 31: the largest integer every JSON implementation holds exactly


def _state(game_id: str, version: int, **overrides: Any) -> dict[str, Any]:
    state: dict[str, Any] = {
        "game_id": game_id,
        "status": "active",
        "current_player": "alice",
        "scores": {"alice": 10, "bob": -5},
        "timer": {"alice": 1000, "bob": 2000},
        "settings": {"initial_time_ms": "30000", "mode": "blitz"},
        "version": version,
        "updated_at": "2026-01-02T03:04:05.678Z",
    }
    state.update(overrides)
    return state


async def _import(conn: Conn, state: dict[str, Any]) -> None:
    ack = await conn.request("IMPORT_STATE", "ACK", state=state)
    expect_equal("ACK.version of IMPORT_STATE", state["version"], ack.get("version"))


async def _list(conn: Conn, **fields: Any) -> tuple[list[dict[str, Any]], Any]:
    msg = await conn.request("LIST_GAMES", "GAMES", **fields)
    games = msg.get("games")
    if not isinstance(games, list) or not all(
        isinstance(g, dict) and isinstance(g.get("game_id"), str) and is_int(g.get("version"))
        for g in games
    ):
        raise ConformanceFailure(f"GAMES.games should be [{{game_id, version}}]: {msg!r}")
    if "next" not in msg:
        raise ConformanceFailure(f"GAMES lacks `next`: {msg!r}")
    return games, msg["next"]


async def _import_many(ctx: CheckContext, ids: list[str], per_conn: int = 40) -> None:
    """Import games over several admin connections (the rate limit is per connection)."""

    async def batch(chunk: list[str]) -> None:
        conn = await ctx.admin()
        for i, gid in enumerate(chunk):
            await _import(conn, _state(gid, i + 1))

    await asyncio.gather(*(batch(ids[i : i + per_conn]) for i in range(0, len(ids), per_conn)))


@check("admin.list_games_pages_by_game_id_with_after_limit_and_next")
async def list_games_pages(ctx: CheckContext) -> None:
    """PROTOCOL.md LIST_GAMES: `after`, `limit`, ordered by game_id, `next`; note 23: `after`
    exclusive."""
    prefix = f"lg-{secrets.token_hex(5)}-"
    ids = [f"{prefix}{i}" for i in ("A", "B", "Z", "_", "a", "b.1", "b0")]  # byte order
    await _import_many(ctx, list(reversed(ids)))
    admin = await ctx.admin()
    pages: list[list[str]] = []
    after = prefix
    while True:
        games, nxt = await _list(admin, after=after, limit=2)
        names = [g["game_id"] for g in games]
        mine = [n for n in names if n.startswith(prefix)]
        pages.append(mine)
        if len(mine) < 2:
            break
        expect_equal(f"next after a full page {names}", names[-1], nxt)
        after = nxt
    expect_equal("pages of 2", [ids[0:2], ids[2:4], ids[4:6], ids[6:7]], pages)
    games, _ = await _list(admin, after=ids[2], limit=1)
    expect_equal("the game after ids[2]", [{"game_id": ids[3], "version": 4}], games)


@check("admin.list_games_default_limit_is_100")
async def list_games_default_limit(ctx: CheckContext) -> None:
    """PROTOCOL.md LIST_GAMES: `limit` defaults to 100; `next` is the last id of a page with more
    after it."""
    prefix = f"ld-{secrets.token_hex(5)}-"
    ids = [f"{prefix}{i:03d}" for i in range(101)]
    await _import_many(ctx, ids)
    admin = await ctx.admin()
    games, nxt = await _list(admin, after=prefix)
    expect_equal("games on a default page", ids[:100], [g["game_id"] for g in games])
    expect_equal("next", ids[99], nxt)
    games, _ = await _list(admin, after=ids[99], limit=1000)
    expect_equal("first game of the next page", ids[100], games[0]["game_id"] if games else None)


@check("admin.list_games_last_page_has_null_next")
async def list_games_last_page(ctx: CheckContext) -> None:
    """PROTOCOL.md LIST_GAMES: `next` is null on the last page (uses the greatest possible id)."""
    admin = await ctx.admin()
    await _import(admin, _state(MAX_ID, 3))
    games, nxt = await _list(admin, after="z" * 63, limit=1000)
    expect_equal("games after 'z'*63", [{"game_id": MAX_ID, "version": 3}], games)
    expect_equal("next on the last page", None, nxt)
    games, nxt = await _list(admin, after=MAX_ID)
    expect_equal("games after the greatest id", [], games)
    expect_equal("next of an empty last page", None, nxt)
    games, nxt = await _list(admin, after="z" * 63, limit=1)
    expect_equal("next when the page is full but nothing follows", None, nxt)


@check("admin.list_games_lists_versions_and_every_game")
async def list_games_versions(ctx: CheckContext) -> None:
    """PROTOCOL.md LIST_GAMES: `games: [{game_id, version}]` with the current versions."""
    game, (alice,), _ = await ctx.new_game("alice")
    await update(alice, game, 2, updates={"status": "active"})
    admin = await ctx.admin()
    # a strict prefix sorts just before the id; only ids sharing it can come between
    games, _ = await _list(admin, after=game[:-1], limit=1000)
    found = [g for g in games if g["game_id"] == game]
    expect_equal("the game in LIST_GAMES", [{"game_id": game, "version": 2}], found)


@check("admin.list_games_ill_typed_or_out_of_range_fields_are_bad_message")
async def list_games_bad_fields(ctx: CheckContext) -> None:
    """PROTOCOL.md LIST_GAMES: limit 1..1000; note 23: ill-typed or out of range is BAD_MESSAGE,
    stays open."""
    admin = await ctx.admin()
    for fields in (
        {"limit": 0},
        {"limit": 1001},
        {"limit": -1},
        {"limit": "10"},
        {"limit": True},
        {"after": 5},
        {"after": ["a"]},
    ):
        await admin.request_error("BAD_MESSAGE", "LIST_GAMES", **fields)
    await admin.send_raw('{"type": "LIST_GAMES", "id": "f", "limit": 10.0}')
    await admin.expect_error("BAD_MESSAGE", re="f", what="limit 10.0 (note 7)")
    await _list(admin, limit=1)
    await _list(admin, limit=1000)


@check("admin.get_state_with_game_id_answers_the_state")
async def admin_get_state(ctx: CheckContext) -> None:
    """PROTOCOL.md Messages: admin GET_STATE takes `game_id` and answers `STATE {re, game_id,
    version, state}`."""
    game, (alice,), _ = await ctx.new_game("alice")
    state = await update(alice, game, 2, updates={"scores": {"alice": 3}})
    admin = await ctx.admin()
    expect_equal("admin GET_STATE", state, await get_state(admin, game, game_id=game))


@check("admin.get_state_of_a_missing_game_is_not_found_and_stays_open")
async def admin_get_state_missing(ctx: CheckContext) -> None:
    """PROTOCOL.md Error codes: NOT_FOUND for admin GET_STATE of a missing game; note 14: stays
    open."""
    admin = await ctx.admin()
    await admin.request_error("NOT_FOUND", "GET_STATE", game_id=ctx.game_id())
    await admin.expect_open()


@check("admin.get_state_without_a_valid_game_id_is_bad_message")
async def admin_get_state_bad_id(ctx: CheckContext) -> None:
    """Note 14: admin GET_STATE needs `game_id`; missing or invalid is BAD_MESSAGE, stays open."""
    admin = await ctx.admin()
    await admin.request_error("BAD_MESSAGE", "GET_STATE")
    for bad in (5, None, "", "bad id!", "x" * 65, ["g"]):
        await admin.request_error("BAD_MESSAGE", "GET_STATE", game_id=bad)
    await admin.expect_open()


@check("admin.import_state_replaces_state_and_version_exactly_even_a_lower_version")
async def import_replaces_exactly(ctx: CheckContext) -> None:
    """PROTOCOL.md IMPORT_STATE: ACK {version}; replaces state and version exactly; note 24: lower
    version allowed."""
    game, (alice, bob), _ = await ctx.new_game("alice", "bob")
    for version in range(3, 6):
        await update(alice, game, version, updates={"score_deltas": {"alice": 1}})
        await expect_state(bob, game, version)
    admin = await ctx.admin()
    imported = _state(game, 2, current_player=None, status="paused", settings={})
    await _import(admin, imported)
    for conn, who in ((alice, "alice"), (bob, "bob")):
        got = await expect_state(conn, game, 2, f"the import broadcast to {who}")
        expect_equal(f"import broadcast to {who}", imported, got)
    expect_equal("state after import", imported, await get_state(admin, game, game_id=game))
    # the next change continues from the imported version
    state = await update(alice, game, 3, updates={"status": "active"})
    expect_equal("scores kept from the import", imported["scores"], state["scores"])


@check("admin.import_state_creates_a_missing_game")
async def import_creates(ctx: CheckContext) -> None:
    """Note 24: IMPORT_STATE creates the game if needed; players, timers and settings are as
    imported."""
    game = ctx.game_id()
    admin = await ctx.admin()
    imported = _state(game, 17)
    await _import(admin, imported)
    expect_equal("state of the imported game", imported, await get_state(admin, game, game_id=game))
    observer, state = await ctx.game(game, "eve", role="observer")
    expect_equal("observer's CONNECTED.state", imported, state)
    _, joined = await ctx.game(game, "carol")
    expect_equal("version after carol joined", 18, joined["version"])
    expect_equal("carol's timer from initial_time_ms", 30000, joined["timer"]["carol"])
    await expect_state(observer, game, 18, "carol's join")


@check("admin.import_state_is_broadcast_to_the_game_connections")
async def import_broadcast(ctx: CheckContext) -> None:
    """PROTOCOL.md IMPORT_STATE; note 24: the import is broadcast as STATE to connections open on
    that game."""
    game, (alice,), _ = await ctx.new_game("alice")
    observer, _ = await ctx.game(game, "eve", role="observer")
    admin = await ctx.admin()
    watcher = await ctx.admin("watcher")
    imported = _state(game, 40, scores={"alice": 1, "bob": 2})
    await _import(admin, imported)
    for conn, who in ((alice, "alice"), (observer, "observer")):
        expect_equal(
            f"import broadcast to {who}", imported, await expect_state(conn, game, 40, who)
        )
    await admin.expect_open()  # the admin path is not a game's connection
    await watcher.expect_open()


@check("admin.import_state_keeps_a_valid_updated_at_and_sets_a_missing_one")
async def import_updated_at(ctx: CheckContext) -> None:
    """Note 24: `updated_at` is optional: kept when RFC 3339 UTC with ms, else set to now."""
    admin = await ctx.admin()
    game = ctx.game_id()
    await _import(admin, _state(game, 1))
    state = await get_state(admin, game, game_id=game)
    expect_equal("updated_at kept", "2026-01-02T03:04:05.678Z", state["updated_at"])
    other = ctx.game_id()
    imported = _state(other, 1)
    del imported["updated_at"]
    await _import(admin, imported)
    state = await get_state(admin, other, game_id=other)
    expect(is_timestamp(state["updated_at"]), f"updated_at set to now: {state['updated_at']!r}")
    expect_equal("state apart from updated_at", imported, without_volatile(state))


@check("admin.import_state_ill_typed_or_missing_fields_are_bad_message")
async def import_bad_message(ctx: CheckContext) -> None:
    """Note 24: IMPORT_STATE with a missing or ill-typed field is BAD_MESSAGE; nothing changes."""
    admin = await ctx.admin()
    game = ctx.game_id()
    await _import(admin, _state(game, 5))
    good = _state(game, 9)
    cases: list[Any] = [None, "state", [good]]
    for field in ("game_id", "status", "current_player", "scores", "timer", "settings", "version"):
        cases.append({k: v for k, v in good.items() if k != field})
    cases += [
        {**good, "version": "9"},
        {**good, "version": True},
        {**good, "version": 9.5},
        {**good, "scores": [10, -5]},
        {**good, "scores": {"alice": "10", "bob": -5}},
        {**good, "timer": "x"},
        {**good, "settings": {"mode": 1}},
        {**good, "status": 2},
        {**good, "current_player": 3},
        {**good, "game_id": 4},
    ]
    for state in cases:
        await admin.request_error("BAD_MESSAGE", "IMPORT_STATE", state=state)
    await admin.request_error("BAD_MESSAGE", "IMPORT_STATE")
    expect_equal(
        "version after refused imports", 5, (await get_state(admin, game, game_id=game))["version"]
    )


@check("admin.import_state_rule_breaks_are_invalid_state")
async def import_invalid_state(ctx: CheckContext) -> None:
    """Notes 24 and 29: rule breaks in IMPORT_STATE (key sets, ranges, players,
    current_player, settings, unknown status) are INVALID_STATE."""
    admin = await ctx.admin()
    game = ctx.game_id()
    await _import(admin, _state(game, 5))
    good = _state(game, 9)
    many = {f"p{i}": 0 for i in range(65)}
    for state in (
        {**good, "timer": {"alice": 1000}},
        {**good, "timer": {"alice": 1000, "carol": 5}},
        {**good, "scores": {"alice": 10**9 + 1, "bob": 0}},
        {**good, "timer": {"alice": -1, "bob": 0}},
        {**good, "timer": {"alice": 86_400_001, "bob": 0}},
        {**good, "current_player": "carol"},
        {**good, "settings": {"mode": "x" * 1025}},
        {**good, "settings": {"initial_time_ms": "abc"}},
        {**good, "settings": {f"k{i}": "v" for i in range(65)}},
        {**good, "scores": many, "timer": many, "current_player": None},
        {**good, "status": "running"},
    ):
        await admin.request_error("INVALID_STATE", "IMPORT_STATE", state=state)
    expect_equal(
        "version after refused imports", 5, (await get_state(admin, game, game_id=game))["version"]
    )


@check("admin.list_games_null_after_and_null_limit_mean_absent")
async def list_games_null_fields(ctx: CheckContext) -> None:
    """Note 32: `null` for `LIST_GAMES.after` or `limit` means the field is absent: no `after`
    starts at the first game (uses the least possible id), no `limit` is 100."""
    prefix = f"ln-{secrets.token_hex(5)}-"
    ids = [f"{prefix}{i:03d}" for i in range(101)]
    await _import_many(ctx, ids)
    admin = await ctx.admin()
    await _import(admin, _state(MIN_ID, 1))
    games, nxt = await _list(admin, after=prefix, limit=None)
    expect_equal("games on a page with limit null", ids[:100], [g["game_id"] for g in games])
    expect_equal("next with limit null", ids[99], nxt)
    games, _ = await _list(admin, after=None, limit=1)
    expect_equal("first game with after null", [MIN_ID], [g["game_id"] for g in games])
    games, _ = await _list(admin, after=None, limit=None)
    names = [g["game_id"] for g in games]
    expect(names[:1] == [MIN_ID], f"first game with after and limit null: {names[:3]!r}")
    expect(len(names) <= 100, f"{len(names)} games on a page with limit null (default 100)")
    expect_equal("order of the page", sorted(names), names)


@check("admin.list_games_after_breaking_the_identifier_rules_is_bad_message")
async def list_games_bad_after(ctx: CheckContext) -> None:
    """Note 33: `LIST_GAMES.after` must be a game id; a string breaking the identifier rules
    is BAD_MESSAGE (like an ill-typed one), stays open."""
    admin = await ctx.admin()
    for bad in ("", "x" * 65, "bad id", "a/b", "caf\u00e9", "a\u0000", "*", "g1 "):
        await admin.request_error("BAD_MESSAGE", "LIST_GAMES", after=bad)
    await _list(admin, after="x" * 64, limit=1)
    await _list(admin, after="A-z_0.9", limit=1)
    await admin.expect_open()


@check("admin.import_state_ignores_extra_keys_inside_state")
async def import_extra_keys(ctx: CheckContext) -> None:
    """Note 34: extra keys inside `IMPORT_STATE.state` are ignored (like note 4's top-level
    fields): the import is accepted and neither its broadcast nor GET_STATE shows them."""
    game, (alice,), _ = await ctx.new_game("alice")
    admin = await ctx.admin()
    imported = _state(game, 7)
    extras = {"extra": 1, "players": ["alice"], "Version": 99, "meta": {"a": [None]}, "x": None}
    await _import(admin, {**imported, **extras})
    expect_equal("import broadcast", imported, await expect_state(alice, game, 7, "the import"))
    expect_equal("state after import", imported, await get_state(admin, game, game_id=game))
    created = ctx.game_id()
    await _import(admin, {**_state(created, 3), "unknown_key": "v"})
    expect_equal(
        "state of a game created by an import with an extra key",
        _state(created, 3),
        await get_state(admin, created, game_id=created),
    )


@check("admin.import_state_version_up_to_2_53_minus_1_is_accepted_and_above_is_invalid_state")
async def import_version_range(ctx: CheckContext) -> None:
    """Notes 31 and 30: IMPORT_STATE's `version` may be as high as 2^53 - 1; above it (any size
    of integer) is INVALID_STATE, not BAD_MESSAGE, and nothing changes."""
    admin = await ctx.admin()
    game = ctx.game_id()
    await _import(admin, _state(game, MAX_VERSION))
    state = await get_state(admin, game, game_id=game)
    expect_equal("version after importing 2^53 - 1", MAX_VERSION, state["version"])
    for version in (MAX_VERSION + 1, MAX_VERSION + 2, 2**63, 2**64, 10**30):
        await admin.request_error("INVALID_STATE", "IMPORT_STATE", state=_state(game, version))
    other = ctx.game_id()
    await admin.request_error("INVALID_STATE", "IMPORT_STATE", state=_state(other, 2**53))
    await admin.request_error("NOT_FOUND", "GET_STATE", game_id=other)
    expect_equal(
        "state after refused imports",
        _state(game, MAX_VERSION),
        await get_state(admin, game, game_id=game),
    )
