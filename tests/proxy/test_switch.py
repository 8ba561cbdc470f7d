"""Flip and rollback on one proxy under load: no client disconnected, no update lost or
doubled, both servers equal at the end; a failed flip changes nothing."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from websockets.exceptions import ConnectionClosed

from compare.admin import AdminClient
from compare.rules import defaults
from proxy.admin import CommandError, ControlPlane
from proxy.frames import ClientSide
from proxy.relay import Late, MirrorProxy, Session
from proxy.route import Route
from proxy.state import ProxyState
from proxy.switch import Switchboard, SwitchError
from stateshift.tokens import mint_token
from tests.proxy.conftest import (
    Client,
    Stack,
    beats_answered_in_order,
    proxy_settings,
    start_legacy,
    start_new,
    start_stack,
    token,
)
from tests.support import TEST_SECRET, timeout, wait_until


@pytest.fixture
async def stack(tmp_path: Path) -> AsyncIterator[Stack]:
    async with start_stack(tmp_path, tap=False, switchboard=True) as stack:
        yield stack


async def player(url: str, name: str, acked: dict[str, int], stop: asyncio.Event) -> None:
    client = await Client.open(f"{url}/v1/games/arena")
    await client.request(type="CONNECT", id="c", token=token(name))
    n = 0
    while not stop.is_set():
        n += 1
        await client.send(type="STATE_UPDATE", id=f"u{n}", updates={"score_deltas": {name: 1}})
        wanted = f"u{n}"
        answer = await client.until(lambda frame: frame.get("re") == wanted)  # noqa: B023
        assert answer["type"] == "ACK", answer
        acked[name] += 1
        await client.request(type="HEARTBEAT", id=f"h{n}")
    await client.request(type="DISCONNECT", id="bye")
    assert await client.closed() == 1000  # never closed by anyone but itself


async def scores(url: str, game_id: str = "arena") -> dict:
    async with AdminClient(url, mint_token(TEST_SECRET, "ops", "admin")) as admin:
        state = await admin.get_state(game_id)
    assert state is not None
    return state


async def test_flips_and_rollbacks_under_load_lose_nothing_and_close_nothing(stack: Stack):
    names = [f"p{n}" for n in range(6)]
    acked = dict.fromkeys(names, 0)
    stop = asyncio.Event()
    players = [asyncio.create_task(player(stack.proxy.url, n, acked, stop)) for n in names]
    await wait_until(lambda: min(acked.values()) >= 3, within=timeout(20), what="traffic")
    for cycle in range(5):
        for target in ("new", "old"):
            before = sum(acked.values())
            route = Route(primary=target)
            prepared = await stack.board.prepare(route)
            await stack.board.commit(prepared.token)
            assert stack.proxy.route.primary == target

            def progressed(before: int = before) -> bool:
                return sum(acked.values()) >= before + 6

            await wait_until(
                progressed,
                within=timeout(20),
                what=f"traffic after the switch to {target} (cycle {cycle})",
            )
    stop.set()
    await asyncio.wait_for(asyncio.gather(*players), timeout(30))
    await wait_until(lambda: stack.proxy.order.idle(), what="the shadow to catch up")
    old_state, new_state = await scores(stack.old.url), await scores(stack.new.url)
    assert old_state["scores"] == new_state["scores"] == acked  # exactly once on both
    assert old_state["version"] == new_state["version"]
    history = await stack.state.history(5)
    assert history == []  # prepare/commit called directly: the control commands record


async def test_a_flip_that_cannot_verify_changes_nothing(stack: Stack):
    client = await Client.open(f"{stack.proxy.url}/v1/games/arena")
    await client.request(type="CONNECT", id="c", token=token("p0"))
    await stack.new.stop()  # the shadow dies before the flip
    await wait_until(
        lambda: all(s.up.get("new") is None for s in stack.proxy.sessions.values()),
        what="the shadow connection to drop",
    )
    with pytest.raises(SwitchError):
        await stack.board.prepare(Route(primary="new"))
    assert stack.proxy.route.primary == "old"
    assert stack.proxy.gate.is_set()
    answer = await client.request(type="HEARTBEAT", id="still-here")
    assert answer["type"] == "HEARTBEAT_ACK"
    with contextlib.suppress(ConnectionClosed):
        await client.ws.close()


async def test_a_rollback_first_resyncs_a_diverged_game_from_the_current_primary(tmp_path: Path):
    """The way back must not be blocked by a divergence: the shadow (old) gets the primary's
    (new) copy of the game, then the roles swap; nothing the primary acknowledged is lost."""
    async with start_stack(
        tmp_path, "score-delta-off-by-one", primary="new", comparator=True, switchboard=True
    ) as stack:
        old, new, proxy, board = stack.old, stack.new, stack.proxy, stack.board
        client = await Client.open(f"{proxy.url}/v1/games/arena")
        await client.request(type="CONNECT", id="c", token=token("p0"))
        ack = await client.request(type="STATE_UPDATE", id="u", updates={"score_deltas": {"p0": 5}})
        assert ack["type"] == "ACK"
        await wait_until(lambda: proxy.order.idle(), what="the shadow to catch up")
        assert (await scores(old.url))["scores"] != (await scores(new.url))["scores"]
        with pytest.raises(SwitchError):  # a plain flip back refuses unequal states
            await board.prepare(Route(primary="old"))
        prepared = await board.prepare(Route(primary="old"), resync=True)
        await board.commit(prepared.token)
        assert proxy.route.primary == "old"
        answer = await client.request(type="GET_STATE", id="g")
        assert answer["state"]["scores"] == {"p0": 5}  # the new server's acknowledged value
        assert (await scores(old.url))["version"] == (await scores(new.url))["version"]


async def test_answers_the_old_shadow_still_owed_never_reach_the_client_after_a_flip(
    tmp_path: Path,
):
    """The old server, shadow here, answers each message 100 ms late, one after the other. A
    flip waits for the shadow's answers to changes (the joining CONNECT), not to heartbeats:
    twenty heartbeats sent at once are answered by the old server over two seconds, most of
    them after the swap, when it is the primary. The client had every answer from the
    previous primary already; it must not get a second one."""
    beats = [f"h{n}" for n in range(20)]
    async with start_stack(tmp_path, "slow:100", primary="new", switchboard=True) as stack:
        client = await Client.open(f"{stack.proxy.url}/v1/games/arena")
        assert (await client.request(type="CONNECT", id="c", token=token("p0")))["re"] == "c"
        await beats_answered_in_order(client, beats)
        prepared = await stack.board.prepare(Route(primary="old"))
        owed = [msg_id for c in stack.proxy.order.conns.values() for msg_id, _ in c.unanswered]
        await stack.board.commit(prepared.token)
        assert stack.proxy.route.primary == "old"
        await client.send(type="HEARTBEAT", id="last")
        await client.until(lambda frame: frame.get("re") == "last")  # after every late answer
        answered = [frame["re"] for frame in client.frames if "re" in frame]
        assert answered == ["c", *beats, "last"]
        assert owed  # the flip did straddle answers of the old server (unless it took 2 s)
        with contextlib.suppress(ConnectionClosed):
            await client.ws.close()


async def test_owed_answers_and_broadcasts_are_recognised_once_then_frames_are_not_parsed(
    tmp_path: Path,
):
    proxy = MirrorProxy(proxy_settings(tmp_path / "p.db", "ws://x", "ws://y"), Route())
    session = Session(
        id=1,
        client=ClientSide.__new__(ClientSide),  # not read by what is tested here
        path="/v1/games/g",
        game_id="g",
        headers=[],
        subprotocols=[],
        primary="new",
    )

    def owed(**frame: Any) -> bool:
        return proxy._owed(session, True, orjson.dumps(frame))

    def window() -> Late | None:
        return session.late

    session.late = Late({"h1": 1, "u1": 1, None: 2}, 5, time.monotonic() + timeout(60))
    assert owed(type="HEARTBEAT_ACK", re="h1")
    assert not owed(type="HEARTBEAT_ACK", re="h1")  # owed once
    assert not owed(type="ACK", re="u7", version=7)  # a new request's answer
    assert not owed(type="ERROR", re=["u1"], code="BAD_MESSAGE")  # not an id: relayed as is
    assert owed(type="ERROR", re=None, code="BAD_MESSAGE")  # two errors `re: null` owed
    assert owed(type="STATE", game_id="g", version=5)  # broadcast before the flip
    assert owed(type="ERROR", re=None, code="BAD_MESSAGE")
    assert not owed(type="ERROR", re=None, code="BAD_MESSAGE")  # a new bad frame's
    assert owed(type="ACK", re="u1", version=4)
    assert window() is not None  # a broadcast up to version 5 may still come
    assert not owed(type="STATE", game_id="g", version=6)
    assert window() is None  # nothing owed any more: frames are relayed unparsed

    session.late = Late({"h2": 1}, None, time.monotonic() - 1)  # its shadow never answered
    assert not owed(type="HEARTBEAT_ACK", re="h2")
    assert window() is None


async def test_a_commit_never_moves_a_client_onto_an_upstream_it_has_no_connection_to(
    stack: Stack,
):
    """The shadow goes away between PREPARE and COMMIT: the commit fails (after waiting a
    little for a reconnection) and the client stays, answered, on the primary it had."""
    client = await Client.open(f"{stack.proxy.url}/v1/games/arena")
    await client.request(type="CONNECT", id="c", token=token("p0"))
    prepared = await stack.board.prepare(Route(primary="new"), hold=timeout(60))
    await stack.new.stop()
    await wait_until(
        lambda: all(s.up.get("new") is None for s in stack.proxy.sessions.values()),
        what="the shadow connection to drop",
    )
    stack.board.quiesce_timeout = 0.5  # how long the commit waits for it to come back
    with pytest.raises(SwitchError) as failed:
        await stack.board.commit(prepared.token)
    assert failed.value.reason == "shadow"
    assert stack.proxy.route.primary == "old"
    assert stack.proxy.gate.is_set()
    assert (await client.request(type="HEARTBEAT", id="h"))["type"] == "HEARTBEAT_ACK"
    with contextlib.suppress(ConnectionClosed):
        await client.ws.close()


async def test_a_frame_with_an_unreadable_id_does_not_keep_a_flip_from_quiescing(stack: Stack):
    """Both servers answer it `re: null` (note 2): no answer will ever carry its id."""
    client = await Client.open(f"{stack.proxy.url}/v1/games/arena")
    await client.request(type="CONNECT", id="c", token=token("p0"))
    answer = await client.request(type="HEARTBEAT", id="x" * 65)
    assert (answer["type"], answer["re"]) == ("ERROR", None)
    prepared = await stack.board.prepare(Route(primary="new"))
    await stack.board.commit(prepared.token)
    assert stack.proxy.route.primary == "new"
    assert (await client.request(type="HEARTBEAT", id="h"))["type"] == "HEARTBEAT_ACK"
    with contextlib.suppress(ConnectionClosed):
        await client.ws.close()


async def test_roles_swap_only_once_the_route_is_saved(tmp_path: Path):
    """A slow save (a busy disk) must not open a window where the new primary's owed answers
    reach the client: the swap and what it owes are decided together, after the save."""
    beats = [f"h{n}" for n in range(20)]
    async with start_stack(tmp_path, "slow:100", primary="new", switchboard=True) as stack:
        real_save = stack.state.save_route

        async def slow_save(route: Route) -> None:
            assert stack.proxy.sessions  # the client is there to be swapped
            assert all(s.primary == "new" for s in stack.proxy.sessions.values())
            await asyncio.sleep(1.0)
            await real_save(route)

        stack.state.save_route = slow_save  # type: ignore[method-assign]
        client = await Client.open(f"{stack.proxy.url}/v1/games/arena")
        await client.request(type="CONNECT", id="c", token=token("p0"))
        await beats_answered_in_order(client, beats)
        prepared = await stack.board.prepare(Route(primary="old"))
        await stack.board.commit(prepared.token)
        await client.send(type="HEARTBEAT", id="last")
        await client.until(lambda frame: frame.get("re") == "last")
        answered = [frame["re"] for frame in client.frames if "re" in frame]
        assert answered == ["c", *beats, "last"]
        with contextlib.suppress(ConnectionClosed):
            await client.ws.close()


async def test_finalize_is_refused_inside_a_prepared_switch(tmp_path: Path):
    async with start_stack(tmp_path, primary="new", tap=False, switchboard=True) as stack:
        board = stack.board
        prepared = await board.prepare(Route(primary="old"), hold=timeout(60))
        with pytest.raises(CommandError, match="prepared"):
            await board._finalize("ops", {"confirm": True})
        assert stack.proxy.route.mirroring
        await board.abort(prepared.token)
        answer = await board._finalize("ops", {"confirm": True})
        assert answer["route"]["mirroring"] is False


async def test_a_switch_does_not_change_mirroring(stack: Stack):
    with pytest.raises(SwitchError) as failed:
        await stack.board.prepare(Route(primary="new", mirroring=False))
    assert failed.value.reason == "mirroring"
    assert stack.proxy.gate.is_set()


async def test_two_proxies_flipped_one_after_the_other_lose_no_broadcast(tmp_path: Path):
    """P1 commits first and its client updates the game on the new server, which broadcasts
    the version at once, also to P2's connection to it (still P2's shadow then); the old
    server broadcasts it later (it gets P1's shadow copy, and answers slowly). If P2 commits
    in between, its client must still get that version, once."""
    old = await start_legacy(tmp_path, "slow:500")
    new = await start_new(tmp_path)
    boards, proxies, planes = [], [], []
    try:
        for name in ("p1", "p2"):
            settings = proxy_settings(tmp_path / f"{name}.db", old.url, new.url)
            state = ProxyState(settings.state_path)
            proxy = MirrorProxy(settings, Route(primary="old"))
            await proxy.start()
            control = ControlPlane(proxy, state, TEST_SECRET, port=0)
            await control.start()
            proxies.append(proxy)
            planes.append(control)
            boards.append(Switchboard(proxy, control, state, defaults()))
        p1, p2 = proxies
        a = await Client.open(f"{p1.url}/v1/games/arena")
        b = await Client.open(f"{p2.url}/v1/games/arena")
        await a.request(type="CONNECT", id="ca", token=token("pa"))
        await b.request(type="CONNECT", id="cb", token=token("pb"))
        await wait_until(lambda: p1.order.idle() and p2.order.idle(), what="shadows in step")
        first = await boards[0].prepare(Route(primary="new"))
        second = await boards[1].prepare(Route(primary="new"))
        await boards[0].commit(first.token)
        await a.send(type="STATE_UPDATE", id="u1", updates={"score_deltas": {"pa": 1}})
        version = (await a.until(lambda frame: frame.get("re") == "u1"))["version"]
        (session,) = p2.sessions.values()
        await wait_until(
            lambda: any(v == version for v, _ in session.shadow_states),
            what="the new server's broadcast to reach P2 as its shadow's",
        )
        await boards[1].commit(second.token)

        def broadcast(frame: dict) -> bool:
            return frame.get("type") == "STATE" and "re" not in frame

        await b.until(lambda frame: broadcast(frame) and frame["version"] == version)
        await a.send(type="STATE_UPDATE", id="u2", updates={"score_deltas": {"pa": 1}})
        after = (await a.until(lambda frame: frame.get("re") == "u2"))["version"]
        await b.until(lambda frame: broadcast(frame) and frame["version"] == after)
        seen = [frame["version"] for frame in b.frames if broadcast(frame)]
        assert seen.count(version) == 1, seen
        assert seen == sorted(seen), seen
        for client in (a, b):
            with contextlib.suppress(ConnectionClosed):
                await client.ws.close()
    finally:
        for board, control, proxy in zip(boards, planes, proxies, strict=False):
            await board.stop()
            await control.stop()
            await proxy.stop()
        await new.stop()
        await old.stop()


async def test_errors_without_an_id_the_old_shadow_still_owed_never_reach_the_client(
    tmp_path: Path,
):
    """As above, with frames whose id is unreadable: both servers answer each `ERROR` with
    `re: null`. Those the old server still owed at the flip (the client had them from the
    new server) must not reach the client once the old server is its primary."""
    async with start_stack(tmp_path, "slow:100", primary="new", switchboard=True) as stack:
        client = await Client.open(f"{stack.proxy.url}/v1/games/arena")
        assert (await client.request(type="CONNECT", id="c", token=token("p0")))["re"] == "c"
        bad = 20
        for n in range(bad):
            await client.send(type="HEARTBEAT", id="x" * (65 + n))
        for _ in range(bad):
            answer = await client.until(lambda frame: "re" in frame)
            assert (answer["type"], answer["re"]) == ("ERROR", None)
        prepared = await stack.board.prepare(Route(primary="old"))
        await stack.board.commit(prepared.token)
        assert stack.proxy.route.primary == "old"
        await client.send(type="HEARTBEAT", id="last")
        await client.until(lambda frame: frame.get("re") == "last")  # after every late answer
        nulls = [frame for frame in client.frames if "re" in frame and frame["re"] is None]
        assert len(nulls) == bad
        with contextlib.suppress(ConnectionClosed):
            await client.ws.close()


async def test_a_game_path_whose_game_exists_on_neither_server_does_not_refuse_a_flip(
    stack: Stack,
):
    """A client connected to `/v1/games/not-yet` that has not sent its CONNECT: the game is
    on neither server, which is equal. The verification called it 'missing on the old
    server' and refused the flip (`unequal`) for as long as such a client waited. After the
    flip its CONNECT creates the game on the new primary and, in order, on the shadow."""
    client = await Client.open(f"{stack.proxy.url}/v1/games/not-yet")
    await wait_until(lambda: len(stack.proxy.sessions) == 1, what="the session")
    (session,) = stack.proxy.sessions.values()
    await wait_until(lambda: stack.proxy.shadow_ready(session), what="its shadow connection")
    prepared = await stack.board.prepare(Route(primary="new"))
    await stack.board.commit(prepared.token)
    assert stack.proxy.route.primary == "new"
    joined = await client.request(type="CONNECT", id="c", token=token("p0"))
    assert joined["type"] == "CONNECTED", joined
    await wait_until(lambda: stack.proxy.order.idle(), what="the shadow to catch up")
    old_state = await scores(stack.old.url, "not-yet")
    new_state = await scores(stack.new.url, "not-yet")
    assert old_state["version"] == new_state["version"]
    await client.ws.close()
