"""A switch over many games does not hold the clients for the servers' rate limit.

The verification reads every active game on both servers with the clients paused. Over one
admin connection per server, the protocol's rate limit (a burst of 100 messages per
connection, then 50 a second) held them for it: 300 games paused every client 4 s, and
past about 600 games (10 s) the switch was refused after holding them all that time. The
reads are now spread over connections that each stay within the burst, and run
concurrently: no read is refused (`RATE_LIMITED`) by either server, so none waits.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from compare.admin import AdminClient
from proxy.route import Route
from proxy.switch import GAMES_PER_CONNECTION, SwitchError, all_or_first_error
from stateshift.tokens import mint_token
from tests.proxy.conftest import Stack, one_per_game, start_stack
from tests.support import TEST_SECRET

GAMES = 4 * GAMES_PER_CONNECTION + 10  # more than the protocol's burst of 100


def rate_limited(stack: Stack) -> tuple[float, float]:
    """`RATE_LIMITED` answers sent so far by the old and the new server."""
    old = stack.old.metrics.registry.get_sample_value(
        "stateshift_legacy_errors_total", {"path": "admin", "code": "RATE_LIMITED"}
    )
    new = stack.new.metrics.registry.get_sample_value(
        "stateshift_server_errors_total", {"path": "admin", "code": "RATE_LIMITED"}
    )
    return old or 0.0, new or 0.0


async def test_a_switch_over_more_games_than_the_burst_reads_none_of_them_rate_limited(
    tmp_path: Path,
):
    async with (
        start_stack(tmp_path, tap=False, switchboard=True) as stack,
        one_per_game(stack.proxy.url, GAMES) as clients,
    ):
        for target in ("new", "old"):  # a flip, then a rollback
            prepared = await stack.board.prepare(Route(primary=target))
            assert prepared.games_checked == GAMES
            await stack.board.commit(prepared.token)
            assert stack.proxy.route.primary == target
        assert rate_limited(stack) == (0.0, 0.0)
        # every client is still served, by the old server again
        for n, client in enumerate(clients):
            beat = await client.request(type="HEARTBEAT", id=f"h{n}")
            assert beat["type"] == "HEARTBEAT_ACK", beat


async def test_a_switch_with_one_unequal_game_among_many_is_refused_and_names_it(
    tmp_path: Path,
):
    async with (
        start_stack(tmp_path, tap=False, switchboard=True) as stack,
        one_per_game(stack.proxy.url, GAMES),
    ):
        # one game changed on the shadow alone: the verification must find it
        async with AdminClient(stack.new.url, mint_token(TEST_SECRET, "ops", "admin")) as a:
            state = await a.get_state("game-77")
            assert state is not None
            state["scores"] = {"p77": 5}
            await a.import_state(state)
        with pytest.raises(SwitchError) as refused:
            await stack.board.prepare(Route(primary="new"))
        assert refused.value.reason == "unequal"
        assert "game game-77 differs" in refused.value.message
        assert stack.proxy.route.primary == "old"
        assert stack.proxy.gate.is_set()  # the clients were resumed


async def test_a_ramp_step_verifies_the_games_it_moves_and_only_those(tmp_path: Path):
    """A ramp step moves a share of the games: only those must be equal on both servers
    (the others keep their primary). Every active game was read with the clients paused,
    so a ramp's pause grew with every game, not with the step; and a game that stays on the
    old server, different on the new one (the comparator's finding), refused every step."""
    step = Route(primary="old", ramp=50.0)
    games = [f"game-{n}" for n in range(8)]
    moving = [game for game in games if step.primary_for(game) == "new"]
    staying = [game for game in games if game not in moving]
    assert moving, "the hash puts some of these games on the new server"
    assert staying, "and keeps some on the old one"
    async with (
        start_stack(tmp_path, tap=False, switchboard=True) as stack,
        one_per_game(stack.proxy.url, len(games)),
    ):
        admin = mint_token(TEST_SECRET, "ops", "admin")
        async with AdminClient(stack.new.url, admin) as a:
            for game, value in ((staying[0], 5), (moving[0], 6)):
                state = await a.get_state(game)
                assert state is not None
                state["scores"] = dict.fromkeys(state["scores"], value)
                await a.import_state(state)
        with pytest.raises(SwitchError) as refused:  # a game it moves differs
            await stack.board.prepare(step)
        assert refused.value.reason == "unequal"
        assert f"game {moving[0]} differs" in refused.value.message
        async with AdminClient(stack.old.url, admin) as old:
            state = await old.get_state(moving[0])
        assert state is not None
        async with AdminClient(stack.new.url, admin) as a:
            await a.import_state(state)  # repaired, as a resync would
        prepared = await stack.board.prepare(step)  # the staying game's difference: no matter
        assert prepared.games_checked == len(moving)
        await stack.board.commit(prepared.token)
        assert stack.proxy.route == step


async def test_the_first_failure_cancels_the_rest_and_is_raised_in_their_order():
    started: list[int] = []
    cancelled: list[int] = []
    failing = asyncio.Event()

    async def work(n: int) -> None:
        started.append(n)
        try:
            if n in (3, 5):
                failing.set()
                raise ValueError(f"failed {n}")
            await asyncio.Event().wait()  # never ends by itself
        except asyncio.CancelledError:
            cancelled.append(n)
            raise

    with pytest.raises(ValueError, match="failed 3"):
        await all_or_first_error(work(n) for n in range(8))
    assert sorted(started) == list(range(8))
    assert sorted(cancelled) == [0, 1, 2, 4, 6, 7]
