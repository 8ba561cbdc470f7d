"""The interplay of the shadow order's waits with flips, slow clients and the comparator
(from a review). The first five tests failed before their fixes:

1. `test_a_claim_behind_an_undecided_earlier_version_moves_before_the_pair_timeout` and
   its end-to-end form `test_through_the_proxy_a_slow_clients_change_makes_no_false_unpaired`:
   a claim blocked because the version before it is not placed (`head.at > released + 1`)
   while another connection's change is undecided never sets `GameOrder.deferred`, and
   `_update_gap` keeps the gap clock stopped while it is undecided: once the undecided
   head times out nothing pumps the game again, so it waits forever (until some other event
   of the game) and the comparator reports the primary's frames `unpaired`.
2. `test_a_frame_only_the_servers_can_read_does_not_keep_flips_from_quiescing`: a frame
   orjson refuses but the servers read (an integer literal too long for a double, note 30)
   is counted `Session.nameless`; the primary answers it with its id, never `re: null`:
   the count stays at 1 and every later flip fails its quiesce.
3. `test_a_flip_after_an_imported_version_jump_does_not_close_a_client_that_missed_nothing`:
   an admin import jumps the game's version; the shadow's copy (a resync) is read before
   the primary's, and the flip takes the jump for missed versions: 1012.

   Also `test_the_proxy_reads_the_id_of_a_frame_the_servers_read` (the root, pure).

The last one guards behaviour that held already: an import through the proxy is resynced
and the game compared again.
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any

import orjson
from websockets.exceptions import ConnectionClosed

from compare.admin import AdminClient
from proxy.relay import parse
from proxy.route import Route
from proxy.switch import SwitchError
from tests.proxy.conftest import Client, start_stack, token
from tests.proxy.test_ordering_races import joined, upstream
from tests.proxy.test_sequencer import ack, ids, two_players, update
from tests.support import timeout, wait_until

#: the comparator's default pairing timeout (compare/pairing.py `Pairer`)
PAIR_TIMEOUT = 10.0


def is_broadcast(frame: dict[str, Any], version: int | None = None) -> bool:
    return (
        frame.get("type") == "STATE"
        and "re" not in frame
        and (version is None or frame.get("version") == version)
    )


async def close(client: Client) -> None:
    with contextlib.suppress(ConnectionClosed):
        await client.ws.close()


async def primary_version(url: str, game: str) -> int:
    async with AdminClient(url, token("checker", role="admin")) as admin:
        state = await admin.get_state(game)
    return -1 if state is None else int(state["version"])


# ----------------------------------------------------------------- (a) the claim wait


def test_a_claim_behind_an_undecided_earlier_version_moves_before_the_pair_timeout():
    """Bob's change is committed first (v3) but its answer is not read (his client does
    not read: the proxy paused his primary); alice's v4 is read. Alice's claim waits for v3,
    which nobody placed yet: the gap clock is held while bob's change is undecided, and
    after `answer_timeout` nothing pumps the game again. Right: the order moves (the claim
    goes, or the game is not comparable) before the comparator's pairing timeout."""
    order = two_players()  # g1 at v2 in the shadow; answer and gap timeouts 5 s
    data, body = update("bob1")
    order.client_frame(2, data, body, 0.0)  # committed as v3; the answer stays unread
    data, body = update("alice1")
    order.client_frame(1, data, body, 0.05)
    order.primary_frame(1, ack("alice1", 4), 0.1)
    assert order.take_releases() == []
    moved_at = None
    now = 0.1
    while now < 3 * PAIR_TIMEOUT and moved_at is None:
        now += 0.25  # the relay's tick
        order.tick(now)
        released = ids(order.take_releases())
        events = [(e.kind, e.game_id) for e in order.take_events()]
        if released or ("not_comparable", "g1") in events:
            moved_at = now
    assert moved_at is not None, "alice's v4 waits forever (no gap clock, no pump)"
    assert moved_at < PAIR_TIMEOUT, moved_at


async def test_through_the_proxy_a_slow_clients_change_makes_no_false_unpaired(tmp_path: Path):
    """End to end: bob's primary is not read (what `_hold_for_client` does for a client
    that does not read); his change is v3, alice's v4. Alice's shadow copy never goes, and
    the comparator calls the primary's frames unpaired (a finding against the new server)
    instead of the game being not comparable."""
    async with start_stack(
        # the order gives up on bob's change after ~1.25 s; pairs wait far longer
        tmp_path,
        comparator=True,
        pair_timeout=timeout(20),
        answer_timeout=0.5,
        gap_timeout=0.5,
    ) as stack:
        proxy, comparator = stack.proxy, stack.live.comparator
        url = f"{proxy.url}/v1/games/race"
        alice, _ = await joined(proxy, url, "alice")
        bob, sb = await joined(proxy, url, "bob")
        await alice.until(lambda f: is_broadcast(f, 2))
        await wait_until(proxy.order.idle, what="the shadow to catch up")
        bob_primary = upstream(sb, sb.primary)
        bob_primary.transport.pause_reading()
        try:
            await bob.send(type="STATE_UPDATE", id="ub", updates={"score_deltas": {"bob": 1}})

            async def committed() -> bool:
                return await primary_version(stack.old.url, "race") == 3

            await wait_until(committed, what="the primary to commit bob's v3")
            await alice.send(type="STATE_UPDATE", id="ua", updates={"score_deltas": {"alice": 1}})
            answer = await alice.until(lambda f: f.get("re") == "ua")
            assert answer["version"] == 4

            def decided() -> bool:
                return (
                    comparator.counts[("answer", "unpaired")] > 0
                    or comparator.counts[("broadcast", "unpaired")] > 0
                    or "race" in comparator.not_comparable
                    or "race" in comparator.diverged
                )

            await wait_until(decided, within=timeout(60), what="the comparator to judge the game")
            unpaired = {k: v for k, v in comparator.counts.items() if k[1] == "unpaired"}
            assert not unpaired, (unpaired, comparator.not_comparable)
        finally:
            bob_primary.transport.resume_reading()
        for client in (alice, bob):
            await close(client)


# ----------------------------------------------------------------- (b) Session.nameless


async def test_a_frame_only_the_servers_can_read_does_not_keep_flips_from_quiescing(
    tmp_path: Path,
):
    """Note 30: any integer literal is an integer. orjson refuses one too long for a
    double, so the proxy counts the frame as without a readable id (`Session.nameless`);
    the servers read it (stdlib fallback) and answer it with its id, never `re: null`: the
    count never drops, and every later flip fails its quiesce."""
    async with start_stack(tmp_path, switchboard=True) as stack:
        client = await Client.open(f"{stack.proxy.url}/v1/games/arena")
        assert (await client.request(type="CONNECT", id="c", token=token("p0")))["re"] == "c"
        await client.ws.send('{"type":"HEARTBEAT","id":"big","pad":' + "9" * 400 + "}")
        answer = await client.until(lambda f: "re" in f)
        assert (answer["type"], answer["re"]) == ("HEARTBEAT_ACK", "big")
        await client.request(type="HEARTBEAT", id="after")  # read after "big"'s answer
        (session,) = stack.proxy.sessions.values()
        await wait_until(lambda: not stack.proxy._later, what="the bookkeeping")
        try:
            prepared = await stack.board.prepare(Route(primary="new"))
        except SwitchError as exc:
            raise AssertionError(
                f"flip refused: {exc.message} (nameless {session.nameless})"
            ) from exc
        await stack.board.commit(prepared.token)
        await close(client)


# ----------------------------------------------------------------- (c) 1012 at a flip


async def test_a_flip_after_an_imported_version_jump_does_not_close_a_client_that_missed_nothing(
    tmp_path: Path,
):
    """An admin import through the proxy jumps the game from v2 to v10 (not mirrored,
    the game resynced). The primary's v10 broadcast to alice is not read yet (the proxy
    reads each socket on its own; forced here by pausing it), the shadow's (the resync's)
    is. At the flip, `flipped` sees v10 > delivered + 1 and closes alice 1012, though she
    missed nothing: v10 follows v2 on the primary too (the shadow's copy is the one to
    relay)."""
    async with start_stack(tmp_path, comparator=True, resync=True, switchboard=True) as stack:
        proxy, comparator = stack.proxy, stack.live.comparator
        alice, sa = await joined(proxy, f"{proxy.url}/v1/games/jump", "alice")
        answer = await alice.request(
            type="STATE_UPDATE", id="u1", updates={"score_deltas": {"alice": 1}}
        )
        assert answer["version"] == 2
        await alice.until(lambda f: is_broadcast(f, 2))
        await wait_until(lambda: sa.delivered == 2 and proxy.order.idle(), what="v2 settled")
        admin, _ = await joined(proxy, f"{proxy.url}/v1/admin", "ops")
        alice_primary = upstream(sa, "old")
        alice_primary.transport.pause_reading()
        try:
            state: dict[str, Any] = {"game_id": "jump", "status": "active", "version": 10}
            state |= {"current_player": None, "settings": {}}
            state |= {"scores": {"alice": 50}, "timer": {"alice": 1000}}
            answer = await admin.request(type="IMPORT_STATE", id="imp", state=state)
            assert answer == {"type": "ACK", "re": "imp", "version": 10}
            await wait_until(
                lambda: (
                    comparator.resyncs >= 1
                    and "jump" not in comparator.not_comparable
                    and any(v == 10 for v, _ in sa.shadow_states)
                ),
                what="the resync (the shadow's v10 read)",
            )
            prepared = await stack.board.prepare(Route(primary="new"))
            await stack.board.commit(prepared.token)
        finally:
            alice_primary.transport.resume_reading()
        try:
            frame = await alice.until(lambda f: is_broadcast(f, 10))
        except ConnectionClosed:
            raise AssertionError(f"alice closed {alice.ws.close_code}") from None
        assert frame["state"]["scores"] == {"alice": 50}
        for client in (alice, admin):
            await close(client)


# ----------------------------------------------------------------- (d) import -> resync


async def test_an_import_through_the_proxy_is_resynced_and_the_game_compared_again(
    tmp_path: Path,
):
    """An accepted IMPORT_STATE through the proxy for a game with
    connections here: the comparator hears `not_comparable` (reason `import`), resyncs the
    game, and compares its later changes again (matches, no finding)."""
    async with start_stack(tmp_path, comparator=True, resync=True) as stack:
        proxy, comparator = stack.proxy, stack.live.comparator
        alice, _ = await joined(proxy, f"{proxy.url}/v1/games/imp", "alice")
        admin, _ = await joined(proxy, f"{proxy.url}/v1/admin", "ops")
        state: dict[str, Any] = {"game_id": "imp", "status": "active", "version": 7}
        state |= {"current_player": None, "settings": {}}
        state |= {"scores": {"alice": 5}, "timer": {"alice": 1000}}
        assert (await admin.request(type="IMPORT_STATE", id="imp", state=state))["version"] == 7
        await wait_until(
            lambda: comparator.resyncs >= 1 and "imp" not in comparator.not_comparable,
            what="the resync",
        )
        assert comparator.floor["imp"] == 7
        before = comparator.counts[("answer", "match")]
        await alice.send(type="STATE_UPDATE", id="u", updates={"score_deltas": {"alice": 1}})
        answer = await alice.until(lambda f: f.get("re") == "u")
        assert answer["version"] == 8
        await wait_until(
            lambda: (
                comparator.counts[("answer", "match")] > before
                and comparator.counts[("broadcast", "match")] > 0
            ),
            what="the change compared",
        )
        assert comparator.store.count() == 0
        assert "imp" not in comparator.diverged
        for client in (alice, admin):
            await close(client)


def test_the_proxy_reads_the_id_of_a_frame_the_servers_read():
    """(Bug 2 at its root, pure.) `relay.parse` is orjson only: a frame with an integer
    literal too long for a double is None to the proxy (counted `nameless`, and its shadow
    copy owed as a `re: null` answer), while both servers read it and answer with its id."""
    raw = b'{"type":"HEARTBEAT","id":"big","pad":' + b"9" * 400 + b"}"
    with contextlib.suppress(orjson.JSONDecodeError):
        orjson.loads(raw)
        raise AssertionError("orjson reads it now: the premise no longer holds")
    msg = parse(True, raw)
    assert msg is not None
    assert msg.get("id") == "big"
