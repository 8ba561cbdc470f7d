"""Races between sockets in the shadow order, each shown without sockets (a `ShadowOrder`
fed events in a chosen order) and through the proxy (real servers, with the proxy's reading
of one upstream socket paused to force a read order). Both failed before the fixes:

1. A refused update was placed `AFTER game.known`, the newest version the proxy had seen on
   *any* connection, not the version its own connection's primary stream shows it was refused
   at. When another connection's ACK for a newer version was read first (two sockets: the
   read order is a race), the shadow evaluated the refused update against a later state than
   the primary did. Now it is placed where its connection shows it was refused, and a change
   is not released while another connection's change is still unanswered by the primary
   (that one may have been decided first).
2. An admin `IMPORT_STATE` (path `/v1/admin`: no game id in the order) was `FREE` from the
   moment the client sent it: it went to the shadow at once, before the primary had even
   answered it, out of the game's order. Now it waits for the primary's answer; accepted
   for a game that has connections through the proxy, it is not mirrored and the game is
   not comparable (a resync copies the primary's state, the import included, in order).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson
import pytest

from compare.admin import AdminClient
from proxy.frames import UpstreamSide
from proxy.relay import MirrorProxy, Session
from proxy.sequencer import ShadowOrder
from tests.proxy.conftest import Client, Recorder, start_stack, token
from tests.proxy.test_sequencer import ack, msg, two_players, update
from tests.support import wait_until

# ----------------------------------------------------------------- without sockets


def broadcast(version: int) -> dict[str, Any]:
    """The primary's STATE broadcast of g1 (alice and bob) at `version`."""
    state = {"game_id": "g1", "version": version, "scores": {"alice": 0, "bob": 0}}
    return {"type": "STATE", "game_id": "g1", "version": version, "state": state}


class FakeShadow:
    """Takes what the order releases and answers it, oldest first, noting for each release
    which frames were still unanswered when it went (the real shadow reads each connection's
    socket on its own: a frame sent while another is unanswered may be applied before it)."""

    def __init__(self, order: ShadowOrder) -> None:
        self.order = order
        self.in_flight: list[tuple[int, str]] = []
        self.released: list[str] = []
        self.overlapping: dict[str, list[str]] = {}

    def take(self) -> None:
        for conn, _data, msg_id, _urgent in self.order.take_releases():
            assert msg_id is not None
            self.overlapping[msg_id] = [other for _, other in self.in_flight]
            self.in_flight.append((conn, msg_id))
            self.released.append(msg_id)

    def answer_all(self) -> None:
        self.take()
        while self.in_flight:
            conn, msg_id = self.in_flight.pop(0)
            self.order.shadow_frame(conn, {"type": "ACK", "re": msg_id}, 0.0)
            self.take()


@pytest.mark.parametrize(
    ("fields", "refusal"),
    [
        # waiting -> paused is refused; active -> paused (after `good`) would be accepted
        ({}, {"code": "INVALID_STATE"}),
        # refused at v3 with CONFLICT; at v4 the same frame would be accepted
        ({"expected_version": 4}, {"code": "CONFLICT", "version": 3}),
    ],
    ids=["invalid_state", "conflict"],
)
def test_a_refusal_read_after_a_newer_ack_is_placed_where_its_connection_was_refused(
    fields: dict[str, Any], refusal: dict[str, Any]
):
    order = two_players()  # g1 at v2 in the shadow, status waiting
    shadow = FakeShadow(order)
    data, body = update("u0")  # alice's v3: sent to the shadow, not answered yet
    order.client_frame(1, data, body, 0.0)
    order.primary_frame(1, ack("u0", 3), 0.0)
    shadow.take()
    assert shadow.released == ["u0"]
    # bob's `bad`, then alice's `good`; the primary refuses `bad` at v3, then commits `good` as
    # v4. Each connection's stream says so; the proxy happens to read alice's socket first.
    data, body = msg("STATE_UPDATE", "bad", updates={"status": "paused"}, **fields)
    order.client_frame(2, data, body, 0.0)
    data, body = msg("STATE_UPDATE", "good", updates={"status": "active"})
    order.client_frame(1, data, body, 0.0)
    for frame in (broadcast(3), ack("good", 4), broadcast(4)):
        order.primary_frame(1, frame, 0.0)
    for frame in (broadcast(3), {"type": "ERROR", "re": "bad", **refusal}, broadcast(4)):
        order.primary_frame(2, frame, 0.0)
    shadow.answer_all()
    # the shadow must see `bad` where the primary did: at v3, before `good` (v4)
    assert shadow.released == ["u0", "bad", "good"]


def test_an_admin_import_goes_to_the_shadow_after_what_the_primary_committed_before_it():
    order = two_players()  # g1 at v2 in the shadow
    order.add_conn(9, None)  # an admin connection (/v1/admin): no game
    order.shadow_opened(9, 0.0)
    shadow = FakeShadow(order)
    for msg_id, version in (("u0", 3), ("u1", 4)):  # alice's v3 and v4
        data, body = update(msg_id)
        order.client_frame(1, data, body, 0.0)
        order.primary_frame(1, ack(msg_id, version), 0.0)
    shadow.take()
    assert shadow.released == ["u0"]  # v3 in flight, v4 waits for its answer
    # then the admin replaces g1 on the primary (after v4): version 10
    state: dict[str, Any] = {"game_id": "g1", "status": "active", "current_player": None}
    state["version"] = 10
    state |= {"scores": {"alice": 7, "bob": 0}, "timer": {"alice": 1, "bob": 1}, "settings": {}}
    data, body = msg("IMPORT_STATE", "imp", state=state)
    order.client_frame(9, data, body, 0.0)
    order.primary_frame(9, {"type": "ACK", "re": "imp", "version": 10}, 0.0)
    shadow.answer_all()
    events = [(e.kind, e.game_id) for e in order.take_events()]
    if "imp" in shadow.released:
        # mirrored: alone (nothing of g1 in flight) and after v3 and v4, which it replaces
        after = shadow.released[shadow.released.index("imp") + 1 :]
        assert (shadow.overlapping["imp"], after) == ([], [])
    else:  # not mirrored: then the game must be known not comparable (until a resync)
        assert ("not_comparable", "g1") in events


# ----------------------------------------------------------------- through the proxy


async def joined(proxy: MirrorProxy, url: str, player: str) -> tuple[Client, Session]:
    """A client connected through the proxy, and its session (its shadow connected)."""
    before = set(proxy.sessions)
    client = await Client.open(url)
    role = "admin" if url.endswith("/v1/admin") else "player"
    answer = await client.request(type="CONNECT", id="c", token=token(player, role=role))
    assert answer["type"] == "CONNECTED"
    await wait_until(lambda: bool(set(proxy.sessions) - before), what="the session")
    (session_id,) = set(proxy.sessions) - before
    session = proxy.sessions[session_id]
    await wait_until(lambda: proxy.shadow_ready(session), what="the shadow connection")
    return client, session


def upstream(session: Session, name: str) -> UpstreamSide:
    """The session's connection to an upstream (it must be open)."""
    up = session.up[name]
    assert up is not None
    return up


def seen(recorder: Recorder, role: str, re: str) -> bool:
    """Whether the proxy has processed an answer of `role` with this `re` (the tap gets a
    frame after the order has it)."""
    return any(
        r.direction == "upstream" and r.role == role and r.msg is not None and r.msg.get("re") == re
        for r in recorder.records
    )


async def states(old_url: str, new_url: str, game: str) -> tuple[Any, Any]:
    """The game as the primary (old) and the shadow (new) hold it, read directly."""
    admin = token("checker", role="admin")
    found = []
    for url in (old_url, new_url):
        async with AdminClient(url, admin) as client:
            state = await client.get_state(game)
        assert state is not None
        found.append({k: v for k, v in state.items() if k != "updated_at"})
    return found[0], found[1]


async def test_through_the_proxy_a_refusal_read_late_is_evaluated_by_the_shadow_where_the_primary_did(  # noqa: E501
    tmp_path: Path,
):
    async with start_stack(tmp_path, answer_timeout=60.0, gap_timeout=60.0) as stack:
        proxy, recorder = stack.proxy, stack.recorder
        url = f"{proxy.url}/v1/games/race"
        alice, sa = await joined(proxy, url, "alice")
        bob, sb = await joined(proxy, url, "bob")
        await alice.recv()  # bob's join (v2)
        await wait_until(proxy.order.idle, what="the shadow to catch up")
        # alice's shadow answers are not read: v3 stays in flight on the shadow
        upstream(sa, sa.shadow).transport.pause_reading()
        answer = await alice.request(
            type="STATE_UPDATE", id="u0", updates={"score_deltas": {"alice": 1}}
        )
        assert answer == {"type": "ACK", "re": "u0", "version": 3}
        await alice.until(lambda f: f.get("type") == "STATE")
        await bob.until(lambda f: f.get("type") == "STATE" and f["version"] == 3)
        # bob's primary answers are not read: his refusal reaches the proxy after alice's v4
        upstream(sb, sb.primary).transport.pause_reading()
        await bob.send(type="STATE_UPDATE", id="bad", updates={"status": "paused"})
        registry = stack.old.metrics.registry

        def refused() -> bool:
            labels = {"path": "game", "code": "INVALID_STATE"}
            return registry.get_sample_value("stateshift_legacy_errors_total", labels) == 1.0

        await wait_until(refused, what="the primary to refuse `bad` (at v3)")
        answer = await alice.request(type="STATE_UPDATE", id="good", updates={"status": "active"})
        assert answer == {"type": "ACK", "re": "good", "version": 4}
        await wait_until(lambda: seen(recorder, "primary", "good"), what="the proxy to read v4")
        upstream(sb, sb.primary).transport.resume_reading()
        assert (await bob.until(lambda f: f.get("re") == "bad"))["code"] == "INVALID_STATE"
        await wait_until(lambda: seen(recorder, "primary", "bad"), what="the proxy to read it")
        upstream(sa, sa.shadow).transport.resume_reading()
        await wait_until(proxy.order.idle, what="the shadow to apply everything")
        primary, shadow = await states(stack.old.url, stack.new.url, "race")
        assert (primary["version"], primary["status"]) == (4, "active")
        assert shadow == primary


async def test_through_the_proxy_an_admin_import_reaches_the_shadow_in_the_games_order(
    tmp_path: Path,
):
    async with start_stack(tmp_path, answer_timeout=60.0, gap_timeout=60.0) as stack:
        proxy, recorder = stack.proxy, stack.recorder
        alice, sa = await joined(proxy, f"{proxy.url}/v1/games/imported", "alice")
        admin, sadmin = await joined(proxy, f"{proxy.url}/v1/admin", "ops")
        await wait_until(proxy.order.idle, what="the shadow to catch up")
        # alice's shadow answers are not read: v2 stays in flight, v3 waits for it
        upstream(sa, sa.shadow).transport.pause_reading()
        for msg_id, version in (("u0", 2), ("u1", 3)):
            answer = await alice.request(
                type="STATE_UPDATE", id=msg_id, updates={"score_deltas": {"alice": 1}}
            )
            assert answer == {"type": "ACK", "re": msg_id, "version": version}
            await alice.until(lambda f: f.get("type") == "STATE")
        # the primary has v2 and v3; now the admin replaces the game (a resync to v3)
        state: dict[str, Any] = {"game_id": "imported", "status": "active", "version": 3}
        state["current_player"] = None
        state |= {"scores": {"alice": 100}, "timer": {"alice": 1000}, "settings": {}}
        answer = await admin.request(type="IMPORT_STATE", id="imp", state=state)
        assert answer == {"type": "ACK", "re": "imp", "version": 3}
        admin_conn = proxy.order.conns[sadmin.id]

        def placed() -> bool:
            # the order has the primary's answer, and the import is not in flight on the
            # shadow (answered there, held back, or not mirrored)
            return seen(recorder, "primary", "imp") and not admin_conn.unanswered

        await wait_until(placed, what="the import to be placed")
        upstream(sa, sa.shadow).transport.resume_reading()
        await wait_until(proxy.order.idle, what="the shadow to apply everything")
        primary, shadow = await states(stack.old.url, stack.new.url, "imported")
        assert (primary["version"], primary["scores"]) == (3, {"alice": 100})
        flagged = any(
            n.kind == "not_comparable" and n.game_id == "imported" for n in recorder.notices
        )
        assert flagged or shadow == primary


def test_a_change_waiting_for_another_connections_primary_answer_is_not_a_gap():
    """Alice's v3 waits while bob's change is unanswered by the primary (it may have been
    decided first): a wait for an answer, not for a version nobody claimed, so the gap
    clock does not run (else a slow answer would make the game not comparable)."""
    order = two_players()  # g1 at v2 in the shadow; default gap timeout
    data, body = update("bob1")
    order.client_frame(2, data, body, 0.0)  # sent, not answered yet
    data, body = update("alice1")
    order.client_frame(1, data, body, 0.0)
    order.primary_frame(1, ack("alice1", 3), 0.0)
    assert order.take_releases() == []  # bob's change may be v3's predecessor
    order.tick(order.gap_timeout * 10)
    assert order.take_events() == []
    order.primary_frame(2, ack("bob1", 4), order.gap_timeout * 10)
    released = [orjson.loads(data)["id"] for _, data, _, _ in order.take_releases()]
    assert released == ["alice1"]  # v3 first; bob's v4 waits for its answer


def test_a_change_waits_for_an_undecided_one_no_longer_than_the_answer_timeout():
    """Bob's change is never answered where the proxy can read it (his client does not read,
    so the proxy stopped reading his primary): alice's v3 goes after `answer_timeout`, on
    the next tick, rather than wait until the comparator calls its shadow copy missing."""
    order = two_players()
    data, body = update("bob1")
    order.client_frame(2, data, body, 0.0)
    data, body = update("alice1")
    order.client_frame(1, data, body, 0.0)
    order.primary_frame(1, ack("alice1", 3), 0.0)
    order.tick(order.answer_timeout / 2)
    assert order.take_releases() == []
    order.tick(order.answer_timeout + 0.25)
    released = [orjson.loads(data)["id"] for _, data, _, _ in order.take_releases()]
    assert released == ["alice1"]
