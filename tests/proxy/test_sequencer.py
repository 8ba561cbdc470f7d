"""Shadow ordering without sockets: frames reach the shadow in the primary's commit order."""

from __future__ import annotations

from typing import Any

import orjson

from proxy.sequencer import ShadowOrder


def msg(type_: str, id_: str, **fields: Any) -> tuple[bytes, dict[str, Any]]:
    """A client frame (the order keeps it as opaque bytes) and its parsed form."""
    body = {"type": type_, "id": id_, **fields}
    return orjson.dumps(body), body


def update(id_: str) -> tuple[bytes, dict[str, Any]]:
    return msg("STATE_UPDATE", id_, updates={"score_deltas": {"a": 1}})


def ack(re: str, version: int) -> dict[str, Any]:
    return {"type": "ACK", "re": re, "version": version}


def connected(re: str, player: str, version: int, players: list[str]) -> dict[str, Any]:
    state = {"version": version, "scores": dict.fromkeys(players, 0)}
    return {"type": "CONNECTED", "re": re, "player_id": player, "state": state}


def ids(releases: list[tuple[int, bytes, str | None, bool]]) -> list[tuple[int, str]]:
    return [(conn, orjson.loads(data)["id"]) for conn, data, _, _ in releases]


def opened(order: ShadowOrder, conn: int) -> None:
    """Connection `conn` on g1, its shadow open."""
    order.add_conn(conn, "g1")
    order.shadow_opened(conn, 0.0)


def joined(
    order: ShadowOrder, conn: int, msg_id: str, player: str, version: int, players: list[str]
) -> None:
    """`player` sends CONNECT `msg_id` on `conn`; the primary answers it at `version`."""
    data, body = msg("CONNECT", msg_id, token="t")
    order.client_frame(conn, data, body, 0.0)
    order.primary_frame(conn, connected(msg_id, player, version, players), 0.0)


def two_players() -> ShadowOrder:
    """Connections 1 (alice) and 2 (bob) on g1 at version 2, shadows open, CONNECTs done."""
    order = ShadowOrder()
    for conn in (1, 2):
        opened(order, conn)
    joined(order, 1, "c1", "alice", 1, ["alice"])
    joined(order, 2, "c2", "bob", 2, ["alice", "bob"])
    releases = order.take_releases()
    assert ids(releases) == [(1, "c1")]  # bob's join waits for the shadow's answer to v1
    order.shadow_frame(1, {"type": "CONNECTED", "re": "c1"}, 0.0)
    assert ids(order.take_releases()) == [(2, "c2")]
    order.shadow_frame(2, {"type": "CONNECTED", "re": "c2"}, 0.0)
    return order


def test_updates_reach_the_shadow_in_primary_version_order_not_arrival_order():
    order = two_players()
    # alice's update arrives first at the proxy, but the primary commits bob's first
    for conn, id_ in ((1, "ua"), (2, "ub")):
        data, body = update(id_)
        order.client_frame(conn, data, body, 0.0)
    order.primary_frame(1, ack("ua", 4), 0.0)
    assert order.take_releases() == []  # v4 waits for v3
    order.primary_frame(2, ack("ub", 3), 0.0)
    assert ids(order.take_releases()) == [(2, "ub")]
    order.shadow_frame(2, {"type": "ACK", "re": "ub", "version": 3}, 0.0)
    assert ids(order.take_releases()) == [(1, "ua")]
    order.shadow_frame(1, {"type": "ACK", "re": "ua", "version": 4}, 0.0)
    assert order.idle()


def test_a_refused_update_goes_at_its_place_one_at_a_time():
    order = two_players()
    data, body = update("good")
    order.client_frame(1, data, body, 0.0)
    data, body = update("bad")
    order.client_frame(2, data, body, 0.0)
    order.primary_frame(2, {"type": "ERROR", "re": "bad", "code": "INVALID_STATE"}, 0.0)
    # refused at version 2 (what the primary had): before alice's v3
    assert ids(order.take_releases()) == [(2, "bad")]
    order.primary_frame(1, ack("good", 3), 0.0)
    assert order.take_releases() == []  # the refused one is still in flight on the shadow
    order.shadow_frame(2, {"type": "ERROR", "re": "bad", "code": "INVALID_STATE"}, 0.0)
    assert ids(order.take_releases()) == [(1, "good")]


def test_rate_limited_frames_are_never_mirrored_and_heartbeats_flow_freely():
    order = two_players()
    data, body = msg("HEARTBEAT", "h")
    order.client_frame(1, data, body, 0.0)
    assert ids(order.take_releases()) == [(1, "h")]
    data, body = update("limited")
    order.client_frame(1, data, body, 0.0)
    order.primary_frame(1, {"type": "ERROR", "re": "limited", "code": "RATE_LIMITED"}, 0.0)
    assert order.take_releases() == []
    assert order.idle()


def test_frames_of_one_connection_keep_their_order():
    order = two_players()
    data, body = update("u")
    order.client_frame(1, data, body, 0.0)
    order.client_frame(1, b"not json", None, 0.0)  # free, but behind the update
    assert order.take_releases() == []
    order.primary_frame(1, ack("u", 3), 0.0)
    assert [conn for conn, _, _, _ in order.take_releases()] == [1, 1]


def test_a_shadow_not_yet_open_holds_its_frames():
    order = ShadowOrder()
    order.add_conn(1, "g1")
    data, body = msg("CONNECT", "c", token="t")
    order.client_frame(1, data, body, 0.0)
    order.primary_frame(1, connected("c", "alice", 1, ["alice"]), 0.0)
    assert order.take_releases() == []
    order.shadow_opened(1, 0.1)
    assert ids(order.take_releases()) == [(1, "c")]


def test_a_version_nobody_claimed_is_a_gap_after_the_timeout():
    order = two_players()
    data, body = update("late")
    order.client_frame(1, data, body, 0.0)
    order.primary_frame(1, ack("late", 5), 0.0)  # v3 and v4 were made elsewhere
    assert order.take_releases() == []
    order.tick(1.0)
    assert order.take_releases() == []
    order.tick(10.0)
    assert ids(order.take_releases()) == [(1, "late")]
    events = order.take_events()
    assert [(e.kind, e.reason, e.game_id) for e in events] == [("not_comparable", "gap", "g1")]


def test_a_shadow_that_never_answers_is_declared_stalled_and_the_game_moves_on():
    order = two_players()
    for conn, id_, version in ((1, "a", 3), (2, "b", 4)):
        data, body = update(id_)
        order.client_frame(conn, data, body, 0.0)
        order.primary_frame(conn, ack(id_, version), 0.0)
    assert ids(order.take_releases()) == [(1, "a")]
    order.tick(10.0)  # conn 1's shadow did not answer
    assert ids(order.take_releases()) == [(2, "b")]
    reasons = {(e.kind, e.reason) for e in order.take_events()}
    assert reasons == {("drop", "stall"), ("not_comparable", "stall")}


def test_overflow_drops_the_connections_shadow_and_frees_the_game():
    order = ShadowOrder(max_buffer=3)
    order.add_conn(1, "g1")  # shadow never opens
    for n in range(3):
        data, body = update(f"u{n}")
        assert order.client_frame(1, data, body, 0.0)
    data, body = update("u3")
    assert not order.client_frame(1, data, body, 0.0)
    (event,) = [e for e in order.take_events() if e.kind == "drop"]
    assert (event.reason, event.frames) == ("overflow", 3)
    order.primary_frame(1, ack("u0", 7), 0.0)
    assert order.take_releases() == []  # nothing is ever sent for a dead shadow


def test_a_reconnect_is_not_a_join_and_waits_for_the_version_it_saw():
    order = two_players()
    opened(order, 3)
    joined(order, 3, "again", "alice", 2, ["alice", "bob"])
    assert ids(order.take_releases()) == [(3, "again")]
    order.shadow_frame(3, {"type": "CONNECTED", "re": "again"}, 0.0)
    assert order.idle()


def test_after_a_resync_changes_in_the_copy_are_not_sent_but_connects_are():
    order = two_players()
    data, body = update("old-change")
    order.client_frame(1, data, body, 0.0)
    order.hold("g1")
    order.primary_frame(1, ack("old-change", 3), 0.0)
    assert order.take_releases() == []  # held while the resync reads the primary
    opened(order, 3)
    joined(order, 3, "late", "carol", 3, ["alice", "bob", "carol"])
    order.resume("g1", 3, 0.0)  # the shadow now holds the primary's version 3
    assert ids(order.take_releases()) == [(3, "late")]  # the update is in the copy; not resent
    events = order.take_events()
    assert [(e.kind, e.reason) for e in events] == [("not_mirrored", "old-change")]


def test_releases_say_which_copies_hold_their_games_order():
    order = ShadowOrder()
    opened(order, 1)
    joined(order, 1, "c1", "alice", 1, ["alice"])
    data, body = msg("HEARTBEAT", "h1")
    order.client_frame(1, data, body, 0.0)
    urgent = {orjson.loads(data)["id"]: flag for _, data, _, flag in order.take_releases()}
    assert urgent == {"c1": True, "h1": False}
    order.shadow_frame(1, {"type": "CONNECTED", "re": "c1"}, 0.0)
    data, body = update("u1")
    order.client_frame(1, data, body, 0.0)
    order.primary_frame(1, ack("u1", 2), 0.0)
    data, body = msg("GET_STATE", "s1")
    order.client_frame(1, data, body, 0.0)
    order.primary_frame(1, {"type": "STATE", "re": "s1", "version": 2}, 0.0)
    assert [flag for _, _, _, flag in order.take_releases()] == [True]  # s1 waits for u1
    order.shadow_frame(1, {"type": "ACK", "re": "u1", "version": 2}, 0.0)
    # a read placed at version 2: a change from another connection must not overtake it
    assert [(orjson.loads(d)["id"], f) for _, d, _, f in order.take_releases()] == [("s1", True)]


def test_what_the_old_shadow_owed_at_a_flip_is_not_waited_for():
    order = ShadowOrder(answer_timeout=5.0)
    opened(order, 1)
    data, body = msg("HEARTBEAT", "h1")
    order.client_frame(1, data, body, 0.0)
    assert ids(order.take_releases()) == [(1, "h1")]
    # its answer will come from the new primary, which the relay keeps from the client
    assert order.roles_swapped(1) == ["h1"]
    order.tick(60.0)
    assert order.take_events() == []  # not declared a stall
    assert order.pending(1) == 0


def test_errors_re_null_the_old_shadow_owed_at_a_flip_are_counted_once_each():
    """Frames without a readable id are answered `re: null`: the ones the shadow has not
    answered at a flip are owed (the client had them from the previous primary); the ones
    it answered are not, and a replayed CONNECT (answered with its own id) never is."""
    order = ShadowOrder(answer_timeout=5.0)
    opened(order, 1)
    for raw in (b"not json", b'{"type":"HEARTBEAT"}', b'{"type":"HEARTBEAT","id":""}'):
        order.client_frame(1, raw, orjson.loads(raw) if raw.startswith(b"{") else None, 0.0)
    assert len(order.take_releases()) == 3
    order.shadow_frame(1, {"type": "ERROR", "re": None, "code": "BAD_MESSAGE"}, 0.0)
    assert order.roles_swapped(1) == [None, None]
    assert order.roles_swapped(1) == []  # owed once
    order.shadow_lost(1, "crash", 0.0)
    order.revive(1, b'{"type":"CONNECT","id":"c","token":"t"}', 0.0)
    assert len(order.take_releases()) == 1
    assert order.roles_swapped(1) == []


def test_a_frame_with_an_unreadable_id_is_not_waited_for():
    """Such a frame is answered `re: null` (note 2): waiting for its id would declare the
    shadow stalled, and keep a flip from ever finding the proxy quiet."""
    order = two_players()
    for bad_id in ("", "x" * 65):
        data, body = update(bad_id)
        order.client_frame(1, data, body, 0.0)
    assert [conn for conn, _, _, _ in order.take_releases()] == [1, 1]  # free: nothing to place
    order.tick(60.0)
    assert order.take_events() == []
    assert order.idle()
    assert order.pending(1) == 0


def test_a_gap_before_a_read_moves_the_order_to_the_reads_version():
    """A version made by a connection whose shadow is gone: a read placed after it (AFTER 3)
    must not wait for it for ever."""
    order = two_players()
    order.shadow_lost(1, "crash", 0.0)
    order.take_events()
    data, body = msg("GET_STATE", "s")
    order.client_frame(2, data, body, 0.0)
    order.primary_frame(2, {"type": "STATE", "re": "s", "version": 3}, 0.0)  # v3: by conn 1
    assert order.take_releases() == []
    order.tick(10.0)
    assert ids(order.take_releases()) == [(2, "s")]
    assert [(e.kind, e.reason) for e in order.take_events()] == [("not_comparable", "gap")]


def test_versions_made_while_a_connections_shadow_is_gone_are_skipped_not_gaps():
    order = two_players()
    order.shadow_lost(1, "crash", 0.0)
    order.take_events()
    data, body = update("ua")  # sent while conn 1's shadow is gone
    order.client_frame(1, data, body, 0.0)
    order.primary_frame(1, ack("ua", 3), 0.0)
    data, body = update("ub")
    order.client_frame(2, data, body, 0.0)
    order.primary_frame(2, ack("ub", 4), 0.0)
    assert ids(order.take_releases()) == [(2, "ub")]  # at once: v3 will never come
    assert order.take_events() == []


def test_a_version_claimed_by_a_frame_lost_with_its_shadow_is_skipped():
    """The shadow is lost while a frame waits for the primary's answer: the version that
    answer makes is skipped when it arrives."""
    order = two_players()
    data, body = update("ua")
    order.client_frame(1, data, body, 0.0)
    order.shadow_lost(1, "crash", 0.0)
    order.take_events()
    data, body = update("ub")
    order.client_frame(2, data, body, 0.0)
    order.primary_frame(2, ack("ub", 4), 0.0)
    assert order.take_releases() == []  # v3 is not placed yet
    order.primary_frame(1, ack("ua", 3), 0.0)
    assert ids(order.take_releases()) == [(2, "ub")]


def test_an_id_used_twice_places_each_frame_by_its_own_answer():
    """Answers come in the order of the requests: a HEARTBEAT_ACK for the first `x` must
    not place the STATE_UPDATE `x` sent after it."""
    order = two_players()
    data, body = msg("HEARTBEAT", "x")
    order.client_frame(1, data, body, 0.0)
    data, body = update("x")
    order.client_frame(1, data, body, 0.0)
    assert ids(order.take_releases()) == [(1, "x")]  # the heartbeat
    order.primary_frame(1, {"type": "HEARTBEAT_ACK", "re": "x"}, 0.0)
    assert order.take_releases() == []  # the update still waits for its own answer
    data, body = update("y")
    order.client_frame(2, data, body, 0.0)
    order.primary_frame(2, ack("y", 3), 0.0)
    order.primary_frame(1, ack("x", 4), 0.0)
    assert ids(order.take_releases()) == [(2, "y")]  # v3 first, then v4
    order.shadow_frame(2, {"type": "ACK", "re": "y", "version": 3}, 0.0)
    assert ids(order.take_releases()) == [(1, "x")]


def test_the_shadows_answer_to_an_earlier_frame_with_the_same_id_does_not_free_the_game():
    order = two_players()
    data, body = msg("GET_STATE", "x")
    order.client_frame(1, data, body, 0.0)
    order.primary_frame(1, {"type": "STATE", "re": "x", "version": 2}, 0.0)
    data, body = update("x")
    order.client_frame(1, data, body, 0.0)
    order.primary_frame(1, ack("x", 3), 0.0)
    assert [flag for _, _, _, flag in order.take_releases()] == [True, True]  # read, update
    data, body = update("y")
    order.client_frame(2, data, body, 0.0)
    order.primary_frame(2, ack("y", 4), 0.0)
    order.shadow_frame(1, {"type": "STATE", "re": "x", "version": 2}, 0.0)  # the read's
    assert order.take_releases() == []  # the shadow has not applied v3 yet
    order.shadow_frame(1, {"type": "ACK", "re": "x", "version": 3}, 0.0)
    assert ids(order.take_releases()) == [(2, "y")]
