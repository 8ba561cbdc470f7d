"""The relay's session lifecycle around flips: frames in flight or held at the flip, slow
clients, a second flip, a shadow reconnecting during a commit, the primary closing under
backpressure. Real servers on loopback; waits are on conditions. The first six tests failed
before the fixes they came with (a review of the relay); the others guard behaviour that
already held."""

from __future__ import annotations

import asyncio
import contextlib
import socket
from pathlib import Path
from typing import Any

from websockets.asyncio.client import connect
from websockets.asyncio.server import ServerConnection, serve
from websockets.exceptions import ConnectionClosed

from proxy.route import Route
from proxy.switch import SwitchError
from tests.proxy.conftest import (
    Client,
    Stack,
    beats_answered_in_order,
    start_legacy,
    start_proxy,
    start_stack,
    stop_proxy,
    token,
)
from tests.support import timeout, wait_until


async def flip(stack: Stack, primary: str) -> None:
    prepared = await stack.board.prepare(Route(primary=primary))
    await stack.board.commit(prepared.token)
    assert stack.proxy.route.primary == primary


def nulls(client: Client) -> int:
    return sum(1 for frame in client.frames if "re" in frame and frame["re"] is None)


def shadow_nulls(stack: Stack, name: str) -> int:
    """`ERROR re: null` answers the tap saw from `name` as the shadow."""
    return sum(
        1
        for record in stack.recorder.records
        if record.role == "shadow"
        and record.upstream == name
        and record.msg is not None
        and "re" in record.msg
        and record.msg["re"] is None
    )


async def close(client: Client) -> None:
    with contextlib.suppress(ConnectionClosed):
        await client.ws.close()


# ----------------------------------------------------------------- answers across a flip


async def test_errors_the_slow_primary_still_owed_at_a_flip_never_reach_the_client(
    tmp_path: Path,
):
    """BUG. The mirror image of the owed-`re: null` fix: the *primary* (old, 100 ms per
    message) still owes `ERROR re: null` answers to frames without a readable id when the
    flip swaps roles. The quiesce only waits for answers with an id (`session.sent`), the
    new primary answered them all as the shadow already, and the old server's answers now
    arrive as the shadow's: the client never gets them."""
    bad = 20
    async with start_stack(tmp_path, "slow:100", switchboard=True) as stack:
        client = await Client.open(f"{stack.proxy.url}/v1/games/arena")
        assert (await client.request(type="CONNECT", id="c", token=token("p0")))["re"] == "c"
        for n in range(bad):
            await client.send(type="HEARTBEAT", id="x" * (65 + n))
        await wait_until(
            lambda: shadow_nulls(stack, "new") == bad,
            what="the shadow's answers (the frames went to both servers before the flip)",
        )
        await flip(stack, "new")
        await client.send(type="HEARTBEAT", id="last")
        await client.until(lambda frame: frame.get("re") == "last")
        assert nulls(client) == bad, [f.get("re", f.get("type")) for f in client.frames]
        await close(client)


async def test_owed_answers_after_a_flip_reach_the_client_once_the_window_times_out(
    tmp_path: Path,
):
    """BUG. The owed window (`Late.until`) is fixed at flip + answer_timeout, meant for "a
    shadow that never answers". A new primary that answers its backlog steadily but for
    longer than that (here 40 heartbeats at 100 ms each, answer_timeout 2 s) has its owed
    answers relayed to the client once the window has closed: the client gets them twice."""
    beats = [f"h{n}" for n in range(40)]
    async with start_stack(
        tmp_path, "slow:100", primary="new", switchboard=True, answer_timeout=2.0
    ) as stack:
        client = await Client.open(f"{stack.proxy.url}/v1/games/arena")
        assert (await client.request(type="CONNECT", id="c", token=token("p0")))["re"] == "c"
        await beats_answered_in_order(client, beats)
        await flip(stack, "old")
        await client.send(type="HEARTBEAT", id="last")
        await client.until(lambda frame: frame.get("re") == "last")  # after the backlog
        answered = [frame["re"] for frame in client.frames if "re" in frame]
        assert answered == ["c", *beats, "last"]
        await close(client)


async def test_a_second_flip_keeps_the_first_flips_owed_window_on_the_wrong_upstream(
    tmp_path: Path,
):
    """BUG. `flipped` sets `session.late` only when something is owed or a broadcast was
    delivered; otherwise the previous flip's window stays, now applied to the *other*
    upstream. Flip new->old while the slow old server owes `re: null` errors, flip straight
    back: the new primary's `ERROR re: null` to the client's next bad frame is taken for one
    the old server owed, and swallowed."""
    bad = 40
    async with start_stack(tmp_path, "slow:100", primary="new", switchboard=True) as stack:
        client = await Client.open(f"{stack.proxy.url}/v1/games/arena")
        assert (await client.request(type="CONNECT", id="c", token=token("p0")))["re"] == "c"
        for n in range(bad):
            await client.send(type="HEARTBEAT", id="x" * (65 + n))
        for _ in range(bad):
            await client.until(lambda frame: "re" in frame)
        await flip(stack, "old")
        await flip(stack, "new")
        (session,) = stack.proxy.sessions.values()
        assert session.primary == "new"
        await client.send(type="HEARTBEAT", id="y" * 70)  # answered `ERROR re: null`
        await client.send(type="HEARTBEAT", id="last")
        await client.until(lambda frame: frame.get("re") == "last")
        assert nulls(client) == bad + 1, [f.get("re", f.get("type")) for f in client.frames]
        await close(client)


# ----------------------------------------------------------------- held client frames


async def test_client_frames_held_for_the_primary_stay_held_after_a_flip(tmp_path: Path):
    """BUG. The old primary stops reading (its connection to the proxy is paused): the
    proxy's buffer to it fills and the client's next frames are held (`session.held`),
    `_release_held` awaiting the *old* upstream's `drain()`. A flip makes the new server
    primary; the held frames, and every frame the client sends after them, should now go
    to it. They stay held as long as the old server (now only the shadow) does not read:
    the client hangs. (A flip that refuses, because the old server still owes answers, is
    right too.)"""
    async with start_stack(tmp_path, switchboard=True) as stack:
        client = await Client.open(f"{stack.proxy.url}/v1/games/arena")
        assert (await client.request(type="CONNECT", id="c", token=token("p0")))["re"] == "c"
        (session,) = stack.proxy.sessions.values()
        (old_conn,) = stack.old._conns
        old_conn.ws.transport.pause_reading()  # the old server stops reading this client
        try:

            async def fill() -> None:
                while True:  # not JSON: answered `re: null` (no id for the quiesce to wait on)
                    await client.ws.send("x" * 60_000)

            filling = asyncio.create_task(fill())
            await wait_until(lambda: session.held is not None, what="client frames held")
            filling.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await filling
            try:
                await flip(stack, "new")
            except SwitchError:
                # Also right: the old primary still owes answers, so the flip refuses and
                # the client stays where it was (what a fix of the quiesce gives).
                assert stack.proxy.route.primary == "old"
                return
            await client.send(type="HEARTBEAT", id="after")
            answer = await client.until(lambda frame: frame.get("re") == "after")
            assert answer["type"] == "HEARTBEAT_ACK"
        finally:
            old_conn.ws.transport.resume_reading()
            client.ws.transport.abort()  # it may have sent half a frame: no closing handshake


# ----------------------------------------------------------------- held primary frames


async def slow_reader(url: str) -> Client:
    """A client on a thin pipe (a 4 KiB receive buffer) that reads only when told: what
    the proxy sends it piles up in the proxy (`session.to_client`)."""
    host, port = url.removeprefix("ws://").split("/", 1)[0].rsplit(":", 1)
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.setblocking(False)
    await asyncio.get_running_loop().sock_connect(sock, (host, int(port)))
    return Client(await connect(url, sock=sock, open_timeout=timeout(), max_queue=1, proxy=None))


def big_settings(tag: str) -> dict[str, Any]:
    """Settings that make every state (and broadcast) about 60 KB."""
    return {"settings": {f"k{n:02d}": tag * 1000 for n in range(60)}}


def is_broadcast(frame: dict[str, Any]) -> bool:
    return frame.get("type") == "STATE" and "re" not in frame


async def test_a_flip_loses_broadcasts_the_old_primary_held_for_a_slow_client(
    tmp_path: Path,
):
    """BUG. A client that does not keep up has the old primary's frames held for it, and
    its old connection paused (`_hold_for_client`): the old server's later broadcasts wait
    unread in that socket. Another client makes 60 changes; a flip then swaps roles. The
    versions the client never got from the old server are sent from the new server's
    copies (`flipped`), but only the newest SHADOW_STATES_KEPT (32) are kept: the ones
    before them reach the client from neither server (the old server's copies now arrive
    as the shadow's). Right: every version in order, or a 1012 (reconnect) with no gap
    before it."""
    changes = 60
    async with start_stack(tmp_path, switchboard=True) as stack:
        proxy = stack.proxy
        writer = await Client.open(f"{proxy.url}/v1/games/arena")
        await writer.request(type="CONNECT", id="c", token=token("writer"))
        slow = await slow_reader(f"{proxy.url}/v1/games/arena")
        assert (await slow.request(type="CONNECT", id="c", token=token("slow")))["re"] == "c"
        (session,) = [s for s in proxy.sessions.values() if s.id == max(proxy.sessions)]
        sndbuf = session.client.transport.get_extra_info("socket")
        sndbuf.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)  # thin pipe both ends
        last = 0
        for n in range(changes):
            updates = big_settings("a") if n == 0 else {"settings": {"n": str(n)}}
            await writer.send(type="STATE_UPDATE", id=f"u{n}", updates=updates)
            ack = await writer.until(lambda frame: frame.get("re") == f"u{n}")  # noqa: B023
            assert ack["type"] == "ACK", ack
            last = ack["version"]
            await writer.until(lambda frame: is_broadcast(frame) and frame["version"] == last)  # noqa: B023
        assert session.to_client is not None  # the slow client's frames are held
        await wait_until(
            lambda: any(v == last for v, _ in session.shadow_states) and proxy.order.idle(),
            what="the shadow to catch up",
        )
        await flip(stack, "new")
        code = None
        try:
            await slow.until(lambda frame: is_broadcast(frame) and frame["version"] == last)
        except ConnectionClosed:
            code = slow.ws.close_code  # also right: told to reconnect, nothing skipped
        seen = [frame["version"] for frame in slow.frames if is_broadcast(frame)]
        assert seen == list(range(seen[0], seen[-1] + 1)), seen
        assert code == 1012 or seen[-1] == last, (code, seen)
        for client in (writer, slow):
            await close(client)


# ----------------------------------------------------------------- a shadow revived at a flip


async def test_a_shadow_revived_during_a_commit_answers_the_replayed_connect_to_the_client(
    tmp_path: Path,
):
    """BUG. A revived shadow is sent the client's CONNECT again (`ShadowOrder.revive`), as
    an entry without an id: its answer (`CONNECTED`, `re` the client's id) is not tracked as
    owed. The shadow (old, 100 ms per message) is lost after PREPARE and reconnects while
    COMMIT waits for it (`_swappable`): the swap happens before it answers the replayed
    CONNECT, and that answer reaches the client as its new primary's: a second CONNECTED."""
    async with start_stack(tmp_path, "slow:100", primary="new", switchboard=True) as stack:
        proxy = stack.proxy
        client = await Client.open(f"{proxy.url}/v1/games/arena")
        assert (await client.request(type="CONNECT", id="c", token=token("p0")))["re"] == "c"
        (session,) = proxy.sessions.values()
        await wait_until(lambda: proxy.order.idle(), what="the shadow to answer the CONNECT")
        prepared = await stack.board.prepare(Route(primary="old"), hold=timeout(60))
        (old_conn,) = [c for c in stack.old._conns if c.game_id == "arena"]
        lost = session.up["old"]
        old_conn.ws.transport.abort()  # the shadow's connection drops (a crash, for it)
        await wait_until(lambda: session.up["old"] is not lost, what="the loss to be seen")
        await stack.board.commit(prepared.token)  # waits for the shadow to reconnect
        assert session.primary == "old"
        await client.send(type="HEARTBEAT", id="last")
        await client.until(lambda frame: frame.get("re") == "last")
        answered = [frame["re"] for frame in client.frames if "re" in frame]
        assert answered == ["c", "last"]
        await close(client)


# ----------------------------------------------------------------- regression tests (pass)


async def test_the_primary_closing_while_frames_are_held_for_a_slow_client_reaches_it_last(
    tmp_path: Path,
):
    """REGRESSION (passes). The old primary answers a slow client's reads and its DISCONNECT
    and closes while most answers are still held for the client: the client gets every
    answer, in order, then the primary's close code."""
    reads = 10
    async with start_stack(tmp_path, switchboard=True) as stack:
        proxy = stack.proxy
        writer = await Client.open(f"{proxy.url}/v1/games/arena")
        await writer.request(type="CONNECT", id="c", token=token("writer"))
        ack = await writer.request(type="STATE_UPDATE", id="u", updates=big_settings("b"))
        assert ack["type"] == "ACK"
        slow = await slow_reader(f"{proxy.url}/v1/games/arena")
        assert (await slow.request(type="CONNECT", id="c", token=token("slow")))["re"] == "c"
        session = proxy.sessions[max(proxy.sessions)]
        sndbuf = session.client.transport.get_extra_info("socket")
        sndbuf.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
        for n in range(reads):
            await slow.send(type="GET_STATE", id=f"g{n}")
        await slow.send(type="DISCONNECT", id="bye")
        await wait_until(lambda: session.to_client is not None, what="frames held for it")
        assert await slow.closed() == 1000
        answered = [frame["re"] for frame in slow.frames if "re" in frame]
        assert answered == ["c", *(f"g{n}" for n in range(reads)), "bye"]
        await wait_until(lambda: session.id not in proxy.sessions, what="the session to end")
        assert all(task.done() for task in session.tasks)
        assert session.id not in proxy.order.conns
        await close(writer)


async def test_a_client_closing_with_frames_held_at_the_flip_gate_ends_cleanly(tmp_path: Path):
    """REGRESSION (passes). A client sends a frame during a prepared flip (held at the gate)
    and closes: after the commit the held frame goes to the new primary, the close
    completes with the client's code, and the session leaves nothing behind."""
    async with start_stack(tmp_path, switchboard=True) as stack:
        proxy = stack.proxy
        client = await Client.open(f"{proxy.url}/v1/games/arena")
        assert (await client.request(type="CONNECT", id="c", token=token("p0")))["re"] == "c"
        (session,) = proxy.sessions.values()
        prepared = await stack.board.prepare(Route(primary="new"), hold=timeout(60))
        await client.send(type="HEARTBEAT", id="held")
        await wait_until(lambda: session.held is not None, what="the frame held at the gate")
        closing = asyncio.create_task(client.ws.close(4000, "bye"))
        await stack.board.commit(prepared.token)
        await asyncio.wait_for(closing, timeout())
        assert client.ws.close_code == 4000
        await wait_until(lambda: not proxy.sessions, what="the session to end")
        assert all(task.done() for task in session.tasks)
        assert not proxy.order.conns


async def test_a_ping_is_answered_per_hop_while_a_flip_is_prepared_and_after_it(
    tmp_path: Path,
):
    """REGRESSION (passes). Ping/pong is per hop: the proxy answers the client's ping itself,
    during a prepared flip (nothing is held) and after it."""
    async with start_stack(tmp_path, switchboard=True) as stack:
        client = await Client.open(f"{stack.proxy.url}/v1/games/arena")
        await client.request(type="CONNECT", id="c", token=token("p0"))
        prepared = await stack.board.prepare(Route(primary="new"), hold=timeout(60))
        await asyncio.wait_for(await client.ws.ping(b"during"), timeout())
        await stack.board.commit(prepared.token)
        await asyncio.wait_for(await client.ws.ping(b"after"), timeout())
        assert (await client.request(type="HEARTBEAT", id="h"))["type"] == "HEARTBEAT_ACK"
        await close(client)


async def test_a_shadow_still_connecting_at_finalize_is_closed_once_it_connects(
    tmp_path: Path,
):
    """The shadow's handshake is held open by the (fake) shadow server; mirroring is
    finalized meanwhile; when the handshake completes the proxy must not keep that
    connection for the client's life (nothing will ever use it)."""
    release = asyncio.Event()
    opened: list[ServerConnection] = []
    closed = asyncio.Event()

    async def hold(ws: ServerConnection, request: Any) -> None:
        await release.wait()

    async def handler(ws: ServerConnection) -> None:
        opened.append(ws)
        await ws.wait_closed()
        closed.set()

    old = await start_legacy(tmp_path)
    async with serve(handler, "127.0.0.1", 0, process_request=hold) as shadow:
        port = shadow.sockets[0].getsockname()[1] if shadow.sockets else 0
        under_test = await start_proxy(tmp_path, old.url, f"ws://127.0.0.1:{port}")
        try:
            client = await Client.open(f"{under_test.url}/v1/games/late")
            await client.request(type="CONNECT", id="c", token=token("p0"))
            under_test.proxy.finalize(Route(primary="old", mirroring=False))
            release.set()
            await wait_until(lambda: bool(opened), what="the shadow's handshake to complete")
            await asyncio.wait_for(closed.wait(), timeout())
            assert (await client.request(type="HEARTBEAT", id="h"))["type"] == "HEARTBEAT_ACK"
            with contextlib.suppress(ConnectionClosed):
                await client.ws.close()
        finally:
            await stop_proxy(under_test)
            await old.stop()
