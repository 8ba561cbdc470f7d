"""The per-connection protocol core, fed frames without sockets or an event loop."""

from __future__ import annotations

import json
from typing import Any

import jwt
import pytest

from legacy.session import Context, Outcome, RateLimiter, Session
from legacy.store import Games
from tests.legacy.conftest import token
from tests.support import TEST_SECRET

NOW_MS = 1_764_151_200_123  # 2025-11-26T10:00:00.123Z


def context(**kw: Any) -> Context:
    return Context(games=Games(), secret=TEST_SECRET, clock_ms=lambda: NOW_MS, **kw)


def frame(type_: str, mid: str = "1", **fields: Any) -> str:
    return json.dumps({"type": type_, "id": mid, **fields})


def answer(outcome: Outcome) -> dict[str, Any]:
    assert outcome.reply is not None
    decoded: dict[str, Any] = json.loads(outcome.reply)
    return decoded


def connected(ctx: Context, sub: str = "alice", role: str = "player", game: str | None = "g1"):
    session = Session(ctx, game, 0.0)
    outcome = session.handle(frame("CONNECT", token=token(sub, role)), 0.0)
    assert answer(outcome)["type"] == "CONNECTED", answer(outcome)
    return session, outcome


def code(outcome: Outcome) -> str | None:
    return answer(outcome).get("code")


def test_first_player_creates_the_game_at_version_1_in_one_record() -> None:
    ctx = context()
    session, outcome = connected(ctx)
    body = answer(outcome)
    assert body["state"]["version"] == 1
    assert body["state"]["scores"] == {"alice": 0}
    assert body["state"]["updated_at"] == "2025-11-26T10:00:00.123Z"
    assert body["player_id"] == "alice"
    assert body["role"] == "player"
    assert outcome.record is not None
    assert outcome.subscribe == "g1"
    assert session.identity is not None


def test_a_returning_player_does_not_join_again() -> None:
    ctx = context()
    connected(ctx)
    _, again = connected(ctx)
    assert again.record is None
    assert answer(again)["state"]["version"] == 1


def test_envelope_checks_come_in_the_order_of_note_1() -> None:
    session = Session(context(), "g1", 0.0)
    assert answer(session.handle(b"{}", 0.0))["re"] is None
    assert code(session.handle("{", 0.0)) == "BAD_MESSAGE"
    assert answer(session.handle("[1]", 0.0)) == {
        "type": "ERROR",
        "re": None,
        "code": "BAD_MESSAGE",
        "message": "a message must be a JSON object",
    }
    assert answer(session.handle('{"type":"HEARTBEAT","id":""}', 0.0))["re"] is None
    assert code(session.handle('{"id":"x"}', 0.0)) == "BAD_MESSAGE"
    assert code(session.handle(frame("NOPE"), 0.0)) == "UNKNOWN_TYPE"
    refused = session.handle(frame("HEARTBEAT", "h"), 0.0)
    assert (code(refused), answer(refused)["re"], refused.close) == ("UNAUTHENTICATED", "h", None)


def test_bad_tokens_close_4401_and_missing_rights_4403() -> None:
    ctx = context()
    cases: dict[str, tuple[dict[str, Any], int]] = {
        "no token": ({}, 4401),
        "not a string": ({"token": 5}, 4401),
        "wrong secret": (
            {
                "token": jwt.encode(
                    {"sub": "a", "role": "player", "exp": 2**40, "games": ["*"]}, "x" * 32
                )
            },
            4401,
        ),
        "expired": ({"token": token(ttl=-10)}, 4401),
        "alg none": (
            {
                "token": jwt.encode(
                    {"sub": "a", "role": "player", "exp": 2**40, "games": ["*"]},
                    None,
                    algorithm="none",
                )
            },
            4401,
        ),
        "no exp": (
            {"token": jwt.encode({"sub": "a", "role": "player", "games": ["*"]}, TEST_SECRET)},
            4401,
        ),
        "unknown role": (
            {
                "token": jwt.encode(
                    {"sub": "a", "role": "king", "exp": 2**40, "games": ["*"]}, TEST_SECRET
                )
            },
            4401,
        ),
        "bad sub": ({"token": token("a b")}, 4401),
        "other game": ({"token": token(games=["g2"])}, 4403),
    }
    for name, (fields, close) in cases.items():
        outcome = Session(ctx, "g1", 0.0).handle(frame("CONNECT", **fields), 0.0)
        assert outcome.close == close, name
    admin_path = Session(ctx, None, 0.0).handle(frame("CONNECT", token=token()), 0.0)
    assert (code(admin_path), admin_path.close) == ("FORBIDDEN", 4403)


def test_observers_and_admins_need_an_existing_game() -> None:
    ctx = context()
    for role in ("observer", "admin"):
        outcome = Session(ctx, "g1", 0.0).handle(frame("CONNECT", token=token("o", role)), 0.0)
        assert (code(outcome), outcome.close) == ("NOT_FOUND", 4404)
    connected(ctx)
    _, viewer = connected(ctx, "o", "observer")
    assert viewer.record is None
    assert "o" not in answer(viewer)["state"]["scores"]


def test_the_65th_player_is_forbidden() -> None:
    ctx = context()
    for i in range(64):
        connected(ctx, f"p{i}")
    outcome = Session(ctx, "g1", 0.0).handle(frame("CONNECT", token=token("late")), 0.0)
    assert (code(outcome), outcome.close) == ("FORBIDDEN", 4403)


def test_update_then_ack_and_broadcast_with_the_new_version() -> None:
    ctx = context()
    session, _ = connected(ctx)
    outcome = session.handle(frame("STATE_UPDATE", "u", updates={"status": "active"}), 0.0)
    assert answer(outcome) == {"type": "ACK", "re": "u", "version": 2}
    assert outcome.broadcast is not None
    game_id, data = outcome.broadcast
    broadcast = json.loads(data)
    assert (game_id, broadcast["type"], broadcast["version"]) == ("g1", "STATE", 2)
    assert "re" not in broadcast
    assert broadcast["state"]["status"] == "active"


def test_update_checks_shape_then_rights_then_version_then_rules() -> None:
    ctx = context()
    player, _ = connected(ctx)
    observer, _ = connected(ctx, "o", "observer")
    bad = {"scores": {"alice": "x"}}
    assert code(observer.handle(frame("STATE_UPDATE", updates=bad), 0.0)) == "BAD_MESSAGE"
    assert code(observer.handle(frame("STATE_UPDATE", updates={"status": "x"}), 0.0)) == "FORBIDDEN"
    conflict = player.handle(
        frame("STATE_UPDATE", updates={"status": "x"}, expected_version=9), 0.0
    )
    assert answer(conflict)["code"] == "CONFLICT"
    assert answer(conflict)["version"] == 1
    invalid = player.handle(frame("STATE_UPDATE", updates={"status": "x"}, expected_version=1), 0.0)
    assert code(invalid) == "INVALID_STATE"
    for version in ("1", 1.0, True):
        ill = player.handle(
            frame("STATE_UPDATE", updates={"status": "x"}, expected_version=version), 0.0
        )
        assert code(ill) == "BAD_MESSAGE"


def test_a_huge_integer_literal_is_an_integer_out_of_range() -> None:
    """Note 30: orjson reads it as a float; the exact re-read keeps it an integer."""
    session, _ = connected(context())
    huge = (
        '{"type":"STATE_UPDATE","id":"u","updates":{"scores":{"alice":100000000000000000000000}}}'
    )
    assert code(session.handle(huge, 0.0)) == "INVALID_STATE"
    fraction = '{"type":"STATE_UPDATE","id":"u","updates":{"scores":{"alice":1e3}}}'
    far = '{"type":"STATE_UPDATE","id":"u","updates":{},"expected_version":1' + "0" * 30 + "}"
    assert code(session.handle(far, 0.0)) == "BAD_MESSAGE", "shape first: updates is empty"
    far = far.replace('"updates":{}', '"updates":{"status":"active"}')
    assert code(session.handle(far, 0.0)) == "CONFLICT"
    assert code(session.handle(fraction, 0.0)) == "BAD_MESSAGE"


@pytest.mark.parametrize("digits", [400, 5000])
def test_integer_literals_no_double_or_python_int_holds_are_integers_too(digits: int) -> None:
    """Note 30, however many digits: orjson refuses past a double's range, Python's int()
    past 4,300 digits; neither makes the frame 'not JSON'. NaN stays refused."""
    session, _ = connected(context())
    body = '{"type":"STATE_UPDATE","id":"u","updates":{"scores":{"alice":-' + "9" * digits
    assert code(session.handle(body + "}}}", 0.0)) == "INVALID_STATE"
    far = '{"type":"STATE_UPDATE","id":"v","updates":{"status":"active"},"expected_version":'
    assert code(session.handle(far + "9" * digits + "}", 0.0)) == "CONFLICT"
    nan = '{"type":"HEARTBEAT","id":"h","n":NaN}'
    assert code(session.handle(nan, 0.0)) == "BAD_MESSAGE"


def test_paths_limit_the_messages() -> None:
    ctx = context()
    player, _ = connected(ctx)
    assert code(player.handle(frame("LIST_GAMES"), 0.0)) == "FORBIDDEN"
    assert code(player.handle(frame("IMPORT_STATE", state={}), 0.0)) == "FORBIDDEN"
    admin, _ = connected(ctx, "ops", "admin", game=None)
    assert code(admin.handle(frame("STATE_UPDATE", updates={"status": "active"}), 0.0)) == (
        "BAD_MESSAGE"
    )
    assert code(admin.handle(frame("GET_STATE"), 0.0)) == "BAD_MESSAGE"
    assert code(admin.handle(frame("GET_STATE", game_id="nope"), 0.0)) == "NOT_FOUND"
    state = answer(admin.handle(frame("GET_STATE", game_id="g1"), 0.0))
    assert (state["type"], state["game_id"], state["version"]) == ("STATE", "g1", 1)
    assert code(player.handle(frame("CONNECT", token=token()), 0.0)) == "BAD_MESSAGE"


def test_list_games_pages_and_validates() -> None:
    ctx = context()
    for game in ("g3", "g1", "g2"):
        connected(ctx, game=game)
    admin, _ = connected(ctx, "ops", "admin", game=None)
    page = answer(admin.handle(frame("LIST_GAMES", limit=2), 0.0))
    assert page["games"] == [{"game_id": "g1", "version": 1}, {"game_id": "g2", "version": 1}]
    assert page["next"] == "g2"
    last = answer(admin.handle(frame("LIST_GAMES", after="g2"), 0.0))
    assert (last["games"], last["next"]) == ([{"game_id": "g3", "version": 1}], None)
    for bad in ({"limit": 0}, {"limit": 1001}, {"limit": "5"}, {"after": 3}, {"after": "a b"}):
        assert code(admin.handle(frame("LIST_GAMES", **bad), 0.0)) == "BAD_MESSAGE", bad


def test_import_replaces_state_and_version_and_broadcasts() -> None:
    ctx = context()
    player, _ = connected(ctx)
    admin, _ = connected(ctx, "ops", "admin", game=None)
    state = {
        "game_id": "g1",
        "status": "paused",
        "current_player": None,
        "scores": {"z": 1},
        "timer": {"z": 2},
        "settings": {},
        "version": 99,
    }
    outcome = admin.handle(frame("IMPORT_STATE", state=state), 0.0)
    assert answer(outcome) == {"type": "ACK", "re": "1", "version": 99}
    assert outcome.record is not None
    assert outcome.broadcast is not None
    got = answer(player.handle(frame("GET_STATE"), 0.0))["state"]
    assert got == {**state, "updated_at": "2025-11-26T10:00:00.123Z"}


def test_disconnect_answers_then_closes_1000() -> None:
    session, _ = connected(context())
    outcome = session.handle(frame("DISCONNECT", "d"), 0.0)
    assert (answer(outcome), outcome.close) == ({"type": "DISCONNECTED", "re": "d"}, 1000)


def test_heartbeat_states_the_server_time_with_the_clock_skew() -> None:
    session, _ = connected(context(skew_ms=-123))
    ack = answer(session.handle(frame("HEARTBEAT", "h"), 0.0))
    assert ack == {"type": "HEARTBEAT_ACK", "re": "h", "server_time": "2025-11-26T10:00:00.000Z"}


def test_decision_faults() -> None:
    refused = Session(context(refuse_auth=True), "g1", 0.0).handle(
        frame("CONNECT", token=token()), 0
    )
    assert (code(refused), refused.close, refused.fault) == ("UNAUTHENTICATED", 4401, "refuse-auth")

    session, _ = connected(context(delta_bias=1))
    outcome = session.handle(frame("STATE_UPDATE", updates={"score_deltas": {"alice": 1}}), 0.0)
    assert outcome.fault == "score-delta-off-by-one"
    assert answer(session.handle(frame("GET_STATE"), 0.0))["state"]["scores"] == {"alice": 2}

    ctx = context(reorder_settings=True)
    session, _ = connected(ctx)
    session.handle(frame("STATE_UPDATE", updates={"settings": {"a": "1", "b": "2", "c": "3"}}), 0)
    raw = session.handle(frame("GET_STATE"), 0.0).reply
    assert raw is not None
    assert raw.index(b'"c"') < raw.index(b'"b"') < raw.index(b'"a"')
    state = ctx.games.get("g1")
    assert state is not None
    assert list(state["settings"]) == ["a", "b", "c"], "only the wire order changes"


def test_rate_limiter_bucket_and_abuse_window() -> None:
    limiter = RateLimiter(rate=10.0, burst=2.0, now=0.0)
    assert limiter.take(0.0) == 0
    assert limiter.take(0.0) == 0
    assert limiter.take(0.0) == 100
    assert limiter.take(0.05) == 50
    assert limiter.take(0.2) == 0
    assert not any(limiter.refuse(1.0) for _ in range(200))
    assert limiter.refuse(1.0)
    assert not RateLimiter(1.0, 1.0, 0.0).refuse(0.0)


def test_over_the_rate_answers_rate_limited_then_closes_4429() -> None:
    session = Session(context(rate=1.0, burst=1.0), "g1", 0.0)
    assert code(session.handle(frame("HEARTBEAT", "a"), 0.0)) == "UNAUTHENTICATED"
    limited = answer(session.handle(frame("HEARTBEAT", "b"), 0.0))
    assert (limited["code"], limited["re"], limited["retry_after_ms"]) == (
        "RATE_LIMITED",
        "b",
        1000,
    )
    assert answer(session.handle(b"binary", 0.0))["re"] is None
    outcomes = [session.handle("x", 0.0) for _ in range(199)]
    assert outcomes[-1].close == 4429
    assert outcomes[-1].reply is None
    assert all(o.close is None for o in outcomes[:-1])
