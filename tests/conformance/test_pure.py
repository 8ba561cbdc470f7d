"""Pure helpers of the suite: WebSocket framing, forged tokens, the protocol's shapes."""

from __future__ import annotations

import jwt
import pytest

from conformance import tokens, wire
from conformance.shapes import is_timestamp, state_problems, transition_accepted


@pytest.mark.parametrize("size", [0, 5, 125, 126, 65535, 65536, 70000])
def test_a_client_frame_decodes_back_to_its_payload(size: int) -> None:
    payload = bytes(i % 251 for i in range(size))
    data = wire.encode_frame(wire.OP_TEXT, payload, mask=b"\x01\x02\x03\x04")
    frame, used = wire.decode_frame(data + b"rest")
    assert frame == wire.Frame(wire.OP_TEXT, payload)
    assert used == len(data)
    assert wire.decode_frame(data[:-1]) == (None, 0)


def test_a_server_close_frame_gives_its_code() -> None:
    frame, _ = wire.decode_frame(b"\x88\x02\x11\x38")  # unmasked close, code 0x1138
    assert frame is not None
    assert frame.close_code() == 4408
    assert wire.decode_frame(b"\x88\x00")[0] == wire.Frame(wire.OP_CLOSE, b"")


def test_upgrade_request_and_status_line() -> None:
    request = wire.upgrade_request("h", 1, "/v1/admin", key=b"0123456789abcdef")
    assert request.startswith(b"GET /v1/admin HTTP/1.1\r\n")
    assert b"Sec-WebSocket-Key: MDEyMzQ1Njc4OWFiY2RlZg==\r\n" in request
    assert request.endswith(b"\r\n\r\n")
    assert wire.status_code(b"HTTP/1.1 101 Switching Protocols\r\n\r\n") == 101
    assert wire.status_code(b"garbage") == 0


def test_signed_tokens_verify_with_pyjwt_and_forgeries_do_not() -> None:
    secret = "s" * 64
    payload = tokens.claims("alice", "observer", ["g1"], now=1_000_000_000.0)
    good = tokens.sign(payload, secret)
    decoded = jwt.decode(good, secret, algorithms=["HS256"], options={"verify_exp": False})
    assert decoded == payload
    assert jwt.get_unverified_header(tokens.sign(payload, secret, "HS512"))["alg"] == "HS512"
    assert jwt.get_unverified_header(tokens.unsigned(payload))["alg"] == "none"
    assert tokens.unsigned(payload).endswith(".")
    with pytest.raises(jwt.InvalidSignatureError):
        jwt.decode(tokens.sign(payload, secret + "x"), secret, algorithms=["HS256"])
    assert "exp" not in tokens.drop(payload, "exp")


def test_timestamps_need_utc_and_milliseconds() -> None:
    assert is_timestamp("2026-11-26T10:00:00.123Z")
    assert is_timestamp("2026-11-26T10:00:00.123+00:00")
    assert not is_timestamp("2026-11-26T10:00:00Z")
    assert not is_timestamp("2026-11-26T10:00:00.123456Z")
    assert not is_timestamp("2026-11-26T10:00:00.123+01:00")
    assert not is_timestamp(5)


def test_transition_table() -> None:
    accepted = {
        (a, b)
        for a in ("waiting", "active", "paused", "finished")
        for b in ("waiting", "active", "paused", "finished")
        if transition_accepted(a, b)
    }
    assert accepted == {
        ("waiting", "waiting"),
        ("waiting", "active"),
        ("active", "active"),
        ("active", "paused"),
        ("active", "finished"),
        ("paused", "paused"),
        ("paused", "active"),
        ("paused", "finished"),
    }


def test_state_problems_names_each_problem() -> None:
    good = {
        "game_id": "g",
        "status": "waiting",
        "current_player": None,
        "scores": {"a": 0},
        "timer": {"a": 60000},
        "settings": {},
        "version": 1,
        "updated_at": "2026-11-26T10:00:00.123Z",
    }
    assert state_problems(good, "g") == []
    bad = {**good, "version": True, "timer": {"b": 1}, "current_player": "z", "extra": 1}
    problems = " | ".join(state_problems(bad, "h"))
    for words in ("version", "keys differ", "current_player", "unexpected keys", "game_id"):
        assert words in problems
