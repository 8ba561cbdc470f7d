"""The status transition table, every (from, to) pair (PROTOCOL.md "Game state", notes 18-19)."""

from __future__ import annotations

from conformance.client import Conn
from conformance.context import CheckContext, get_state, update
from conformance.registry import CheckFn, add_check, check, expect_equal
from conformance.shapes import STATUSES, transition_accepted

# how to reach each status from a new game (waiting)
PATH = {
    "waiting": [],
    "active": ["active"],
    "paused": ["active", "paused"],
    "finished": ["active", "finished"],
}


async def _game_in(ctx: CheckContext, status: str) -> tuple[str, Conn, int]:
    game, (alice,), _ = await ctx.new_game("alice")
    version = 1
    for step in PATH[status]:
        version += 1
        await update(alice, game, version, updates={"status": step})
    return game, alice, version


def _transition_check(current: str, new: str) -> CheckFn:
    accepted = transition_accepted(current, new)

    async def run(ctx: CheckContext) -> None:
        game, alice, version = await _game_in(ctx, current)
        if accepted:
            state = await update(alice, game, version + 1, updates={"status": new})
            expect_equal(f"status after {current} -> {new}", new, state["status"])
        else:
            await alice.request_error("INVALID_STATE", "STATE_UPDATE", updates={"status": new})
            state = await get_state(alice, game)
            expect_equal(f"status after refused {current} -> {new}", current, state["status"])
            expect_equal(f"version after refused {current} -> {new}", version, state["version"])

    return run


def _register() -> None:
    for current in STATUSES:
        for new in STATUSES:
            accepted = transition_accepted(current, new)
            verdict = "is_accepted" if accepted else "is_refused_with_invalid_state"
            if current == new:
                rule = (
                    "note 19: finished refuses all"
                    if current == "finished"
                    else ("same status is a no-op still accepted (note 18: a change)")
                )
            else:
                rule = "allowed change" if accepted else "not an allowed change"
            add_check(
                f"status.{current}_to_{new}_{verdict}",
                _transition_check(current, new),
                doc=f"PROTOCOL.md Game state, status table: {current} -> {new}: {rule}.",
            )


_register()


@check("status.unknown_status_is_invalid_state")
async def unknown_status(ctx: CheckContext) -> None:
    """Note 16: a status string that is not a status is INVALID_STATE (right type, breaks a
    rule)."""
    game, (alice,), _ = await ctx.new_game("alice")
    for bad in ("running", "Active", "", "WAITING"):
        await alice.request_error("INVALID_STATE", "STATE_UPDATE", updates={"status": bad})
    expect_equal("version", 1, (await get_state(alice, game))["version"])


@check("status.finished_game_refuses_every_update")
async def finished_refuses_everything(ctx: CheckContext) -> None:
    """PROTOCOL.md Game state: a finished game refuses every update with INVALID_STATE (note 19)."""
    game, alice, version = await _game_in(ctx, "finished")
    for updates in (
        {"status": "finished"},
        {"status": "active"},
        {"scores": {"alice": 1}},
        {"score_deltas": {"alice": 0}},
        {"timer": {"alice": 1}},
        {"settings": {"mode": "x"}},
        {"current_player": "alice"},
        {"current_player": None},
    ):
        await alice.request_error("INVALID_STATE", "STATE_UPDATE", updates=updates)
    await alice.request_error(
        "INVALID_STATE", "STATE_UPDATE", updates={"scores": {"alice": 2}}, expected_version=version
    )
    expect_equal("version of the finished game", version, (await get_state(alice, game))["version"])
