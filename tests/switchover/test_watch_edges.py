"""The switchover's watch (flip/ramp --auto-rollback), its figures and the way back, at their
edges (found by reviewing them; each test failed before its fix): a rollback off a dead new
server, a watch that must notice the new server dying, a watch that could read nothing, a
game diverged again after the switch, proxies that do not split latency by upstream. Real
proxies and servers on loopback, unless the decision is a pure one."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import pytest
from websockets.exceptions import InvalidStatus

from proxy.admin import CommandError
from proxy.route import Route
from server.app import StateServer
from switchover.gates import Thresholds, after_flip, breached, combine
from tests.proxy.conftest import Client, start_stack, token
from tests.proxy.conftest import Stack as InProcess
from tests.support import timeout, wait_until
from tests.switchover.conftest import Stack, cli, start_players

#: tasks a test starts on the proxies' loop (kept referenced until they end)
_BACKGROUND: set[asyncio.Task[None]] = set()

WATCH = ("--check-every", "0.5", "--min-comparisons", "1", "--json")


async def _traffic(url: str, games: int = 1, per_game: int = 2, acks: int = 6) -> None:
    """Some comparisons through the proxy, then every player leaves."""
    players = start_players(url, games=games, per_game=per_game, pace=0.05)
    await wait_until(lambda: players.total() >= acks, within=timeout(20), what="traffic")
    assert await players.finish() == [1000] * (games * per_game)


# --------------------------------------------------------------------------- the way back


async def test_a_rollback_off_a_dead_new_server_gets_the_clients_back(stack: Stack):
    """After a flip the new server goes down: the runbook's first case for a rollback
    ("failures reaching the new server"). Mirroring kept the old server up to date, so the
    way back needs nothing from the new server; but every PREPARE opens an admin connection
    to both servers (`Switchboard._verify` -> `_servers(count >= 1)`) even with no game to
    verify, so the rollback is refused `(unreachable)` and every client stays refused 502."""
    proxy = await stack.add_proxy()
    await _traffic(proxy.proxy.url)
    flipped = await cli("flip", "--proxy", proxy.admin, "--force", "--json")
    assert flipped.code == 0, flipped
    assert proxy.route().primary == "new"
    await stack.new.stop()  # the new server is down: no client can play
    outcome = await cli("rollback", "--proxy", proxy.admin, "--reason", "new down", "--json")
    assert outcome.code == 0, outcome.doc["switch"]
    assert proxy.route().primary == "old"


# --------------------------------------------------------------------------- the watch


async def test_a_flip_watch_rolls_back_when_the_new_server_dies(stack: Stack):
    """`flip --auto-rollback` "watches the new server" (rollback.md), yet the new server
    dying under the watch is no breach: its clients are dropped and every new one is refused
    502 (connect failures, role primary), so there are no comparisons and no latency samples:
    every gate is inconclusive and the watch ends "switched; no breach", exit 0, with every
    player locked out. Nothing in FIGURES counts the primary's failures."""
    proxy = await stack.add_proxy()
    await _traffic(proxy.proxy.url)
    run = asyncio.create_task(
        cli("flip", "--proxy", proxy.admin, "--force", "--auto-rollback", str(timeout(6)), *WATCH)
    )
    await wait_until(lambda: proxy.route().primary == "new", what="the flip")
    await stack.new.stop()
    assert not run.done(), "the watch ended before the new server went down"
    # a player arriving now is refused: the primary (new) cannot be reached
    with pytest.raises(InvalidStatus, match="502"):
        await Client.open(f"{proxy.proxy.url}/v1/games/game0")
    outcome = await run
    assert outcome.code == 1, outcome.doc.get("message")
    assert proxy.route().primary == "old"


def crash(server: StateServer) -> None:
    """The server process dies: its port refuses, its connections end without a close."""
    assert server._server is not None
    server._server.close(close_connections=False)
    for conn in list(server.conns):
        conn.ws.transport.abort()


async def test_a_flip_watch_rolls_back_off_a_new_server_that_crashes_under_its_players(
    stack: Stack,
):
    """The new server dies (kill -9) under players mid-update, as in a rehearsal where the
    automatic rollback failed: the breach (`primary_failures`) must roll every client back
    onto the old server, which can then serve them. (End to end; the refusal itself depended
    on sessions still open when the verification ran: the next test sets that up.)"""
    proxy = await stack.add_proxy()
    players = start_players(proxy.proxy.url, games=3, per_game=2, pace=0.01)
    try:
        await wait_until(lambda: players.total() >= 6, within=timeout(20), what="traffic")
        run = asyncio.create_task(
            cli(
                "flip",
                "--proxy",
                proxy.admin,
                "--force",
                "--auto-rollback",
                str(timeout(8)),
                *WATCH,
            )
        )
        await wait_until(lambda: proxy.route().primary == "new", what="the flip")
        played = players.total()
        await wait_until(lambda: players.total() >= played + 12, what="play on the new server")
        crash(stack.new)
        outcome = await run
        assert outcome.code == 1, outcome.doc.get("message")
        rollback = outcome.doc["auto_rollback"]["rollback"]
        assert rollback["ok"], rollback
        assert proxy.route().primary == "old"
        client = await Client.open(f"{proxy.proxy.url}/v1/games/game0")
        joined = await client.request(type="CONNECT", id="c", token=token("late"))
        assert joined["type"] == "CONNECTED", joined
        await client.ws.close()
    finally:
        for task in players.tasks:
            task.cancel()
        await asyncio.gather(*players.tasks, return_exceptions=True)


async def test_a_rollback_moves_games_off_a_new_server_that_accepts_no_connection(
    tmp_path: Path,
):
    """A rollback is the way off a new server that fails. Its verification read every moved
    game from both servers, so with clients still connected to their games (a server that
    stopped accepting connections, or crashed while their sessions were ending) it was
    refused `(unreachable)`: every client stayed on the failing server. The games leave a
    server that cannot be read; the old one, its shadow, received every change the new one
    acknowledged: they are moved without comparing them, and the answer says how many."""
    async with start_stack(tmp_path, primary="new", switchboard=True, comparator=True) as stack:
        client = await Client.open(f"{stack.proxy.url}/v1/games/arena")
        await client.request(type="CONNECT", id="c", token=token("p0"))
        answer = await client.request(
            type="STATE_UPDATE", id="u", updates={"score_deltas": {"p0": 1}}
        )
        assert answer["type"] == "ACK", answer
        assert stack.new._server is not None
        stack.new._server.close(close_connections=False)  # accepts no connection any more
        prepared = await stack.board.prepare(Route(primary="old"))
        assert (prepared.games_checked, prepared.games_unverified) == (0, 1)
        await stack.board.commit(prepared.token)
        assert stack.proxy.route.primary == "old"
        await client.ws.close()


async def test_a_watch_that_could_not_read_the_figures_does_not_report_no_breach(
    stack: Stack,
):
    """A proxy's control plane restarts during the watch (a deploy, a crash): the CLI's
    connection to it is gone and `Fleet` never reconnects, so every later round is a
    ControlError, "a missed round is not a breach", and the watch ends exit 0 "switched; no
    breach in N s" having judged nothing. (In a fleet one such proxy blinds the watch of all
    of them: `all_ok` fails the whole round.)"""
    proxy = await stack.add_proxy()
    await _traffic(proxy.proxy.url)
    control, board = proxy.control, proxy.board
    restarted = asyncio.Event()

    async def restart() -> None:
        port = control.port
        await control.stop()
        control.port_wanted = port
        await control.start()
        restarted.set()

    async def figures(actor: str, msg: dict[str, Any]) -> dict[str, Any]:
        if msg.get("since") == "switch" and not restarted.is_set():
            task = asyncio.create_task(restart())
            _BACKGROUND.add(task)
            task.add_done_callback(_BACKGROUND.discard)
            raise CommandError("UNAVAILABLE", "restarting")
        return await board._figures(actor, msg)

    control.register("FIGURES", figures)
    outcome = await cli("flip", "--proxy", proxy.admin, "--force", "--auto-rollback", "3", *WATCH)
    assert restarted.is_set()
    assert proxy.route().primary == "new"
    # not one round was judged: that is not "no breach"
    assert outcome.code != 0 or "no breach" not in outcome.doc.get("message", ""), outcome.doc


async def test_a_game_diverged_before_the_switch_counts_again_only_if_it_diverges_again(
    tmp_path: Path,
):
    """The watch kept its own baseline of the games diverged before it (a forced flip) for
    the whole watch: a game resynced during the watch (`compare resync`, or the comparator's
    automatic one), then diverging again with the new server as the primary, was never
    counted, and only the diverged gate would see one game's mismatch under real traffic.
    The proxy now counts, since the switch, the games diverged after it: again included."""
    async with start_stack(tmp_path, comparator=True, switchboard=True) as stack:
        comparator, board = stack.live.comparator, stack.board
        comparator.diverged["game7"] = 1  # diverged before the switch: finding 1
        prepared = await board.prepare(Route(primary="new"))
        await board.commit(prepared.token)
        assert board.figures(1.0)["diverged"] == 1  # every diverged game
        assert board.figures(1.0, since_switch=True)["diverged"] == 0
        del comparator.diverged["game7"]  # resynced: agrees again
        comparator.diverged["game7"] = 2  # then diverged again: finding 2
        figures = board.figures(1.0, since_switch=True)
        assert (figures["diverged"], figures["diverged_games"]) == (1, ["game7"])


async def one_change_paired(stack: InProcess) -> None:
    """A player joins `arena` and changes it once; both answers (CONNECTED, ACK) paired."""
    comparator = stack.live.comparator
    client = await Client.open(f"{stack.proxy.url}/v1/games/arena")
    await client.request(type="CONNECT", id="c", token=token("p0"))
    answer = await client.request(type="STATE_UPDATE", id="u", updates={"score_deltas": {"p0": 1}})
    assert answer["type"] == "ACK", answer
    await wait_until(
        lambda: comparator.counts[("answer", "match")] >= 2, what="CONNECTED and ACK paired"
    )


async def test_a_frame_tapped_before_the_switch_and_judged_unpaired_after_it_is_not_counted(
    tmp_path: Path,
):
    """A frame left alone is judged `unpaired` only `pair_timeout` (10 s) after it was
    tapped: one tapped just before a switch was judged after it, and counted in the figures
    "since the switch" (a mismatch, its game diverged) that the watch rolls back on. Here
    the old server, shadow, drops every broadcast; the new primary's are judged after the
    rollback."""
    async with start_stack(
        tmp_path,
        "drop-broadcast:1",
        primary="new",
        comparator=True,
        switchboard=True,
        pair_timeout=3600.0,  # judged when this test says
    ) as stack:
        comparator, board = stack.live.comparator, stack.board
        await one_change_paired(stack)
        prepared = await board.prepare(Route(primary="old"))
        await board.commit(prepared.token)
        comparator.expire(time.time() + 7200)  # the broadcasts' partners never came
        assert comparator.counts[("broadcast", "unpaired")] == 1
        assert comparator.diverged.keys() == {"arena"}
        figures = board.figures(1.0, since_switch=True)
        assert (figures["mismatches"], figures["diverged"]) == (0, 0), figures
        everything = board.figures(3600.0)
        assert (everything["mismatches"], everything["diverged"]) == (1, 1), everything


# --------------------------------------------------------------------------- the gates


def test_the_latency_gate_of_proxies_without_p99_by_upstream_survives_combining():
    """`after_flip` falls back to primary/shadow p99 for "a proxy that does not split them by
    upstream" (one not yet upgraded during a rolling upgrade) by testing whether the key is
    present. The watch always judges `combine`d figures, and `combine` writes every P99_KEYS
    key (None when no proxy gave it): the fallback never runs, and the new server 500 x
    slower than the old one is "inconclusive", never a breach."""
    old_style = {
        "comparisons": 500,
        "mismatches": 0,
        "diverged": 0,
        "mirrored_connections": 1,
        "shadow_connected": 1,
        "shadow_drops": 0,
        "primary_p99": 0.5,  # the new server, primary after the flip
        "shadow_p99": 0.001,  # the old server, now the shadow
        "window": 10.0,
        "complete": True,
    }
    alone = {g.name: g.result for g in after_flip(old_style, Thresholds())}
    assert alone["primary_latency"] == "fail"
    fleet = {g.name: g.result for g in after_flip(combine([old_style]), Thresholds())}
    assert fleet["primary_latency"] == "fail", fleet
    assert breached(after_flip(combine([old_style]), Thresholds()))


async def test_the_figures_p99_is_interpolated_within_its_bucket(tmp_path: Path):
    """FIGURES gave a bucket's upper bound as the p99: 100 answers of 5.1 ms read as 7.5 ms
    (the bucket 5-7.5 ms), 10.1 ms as 15 ms. It is now interpolated within the bucket, as
    Prometheus' `histogram_quantile` does."""
    async with start_stack(tmp_path, tap=False, switchboard=True) as stack:
        latency = stack.proxy.metrics.latency.labels("primary", "old")
        bounds = stack.proxy.metrics.latency.bounds
        lower = max(b for b in bounds if b < 0.0051)
        upper = min(b for b in bounds if b >= 0.0051)
        for _ in range(100):
            latency.observe(0.0051)
        p99 = stack.board.figures(3600.0)["primary_old_p99"]
        assert p99 == pytest.approx(lower + (upper - lower) * 0.99), (p99, lower, upper)
        assert p99 < upper


async def test_broadcasts_the_old_server_drops_as_the_shadow_after_a_flip_are_not_counted(
    tmp_path: Path,
):
    """A rehearsal restarted the old server, the shadow after a flip, with
    `--fault drop-broadcast:0.3`: each broadcast only the new primary sent was an unpaired
    mismatch in the figures since the switch, and the watched flip was rolled back onto the
    faulty server. The old server's health is never a reason to go back to it
    (runbooks/rollback.md): a frame only the new server sent is left out since the switch,
    and still counted in the figures over a window (the readiness check's)."""
    async with start_stack(
        tmp_path,
        "drop-broadcast:1",
        comparator=True,
        switchboard=True,
        pair_timeout=3600.0,  # judged when this test says
    ) as stack:
        comparator, board = stack.live.comparator, stack.board
        prepared = await board.prepare(Route(primary="new"))
        await board.commit(prepared.token)
        await one_change_paired(stack)
        comparator.expire(time.time() + 7200)  # the old server never sent its copies
        assert comparator.counts[("broadcast", "unpaired")] >= 1
        figures = board.figures(3600.0, since_switch=True)
        assert (figures["mismatches"], figures["diverged"]) == (0, 0), figures
        everything = board.figures(3600.0)
        assert everything["mismatches"] >= 1, everything


async def test_a_frame_only_the_new_server_sent_as_the_shadow_still_counts_since_a_switch(
    tmp_path: Path,
):
    """The other way round (the old server primary for a game, as under a ramp): a frame the
    new server, the shadow, sent and the old primary did not is the new server's own, and
    counts in the figures since the switch."""
    async with start_stack(
        tmp_path,
        "drop-broadcast:1",  # the old server, primary here, sends no broadcast
        comparator=True,
        pair_timeout=3600.0,
    ) as stack:
        comparator = stack.live.comparator
        comparator.mark_epoch(time.time())  # a switch that left this game's primary old
        await one_change_paired(stack)
        comparator.expire(time.time() + 7200)
        assert comparator.counts[("broadcast", "unpaired")] >= 1
        assert comparator.excluded_since_epoch == 0
