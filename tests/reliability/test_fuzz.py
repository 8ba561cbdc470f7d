"""Bad input, generated and mutated by hypothesis: the new server, and the proxy in front of
both servers, answer every message with a documented frame; nothing crashes, closes with
1011 or hangs. Each test sends well over 10,000 messages over real sockets."""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import ClientConnection, connect

from stateshift.tokens import mint_token
from tests.support import TEST_SECRET, ServerProcess, proxy_args, timeout

TYPES = ["CONNECT", "HEARTBEAT", "STATE_UPDATE", "GET_STATE", "LIST_GAMES", "IMPORT_STATE"]
ANSWERS = {"HEARTBEAT_ACK", "ACK", "STATE", "ERROR", "GAMES", "CONNECTED"}
CODES = {
    "BAD_MESSAGE",
    "UNKNOWN_TYPE",
    "UNAUTHENTICATED",
    "FORBIDDEN",
    "NOT_FOUND",
    "CONFLICT",
    "INVALID_STATE",
    "RATE_LIMITED",
}
UPDATE_KEYS = ["status", "current_player", "scores", "score_deltas", "timer", "settings"]
FAST = ["--rate", "1000000", "--burst", "1000000"]
EXAMPLES = 1250  # x ~9 messages each (after the ones too big to send)

json_leaf = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=20),
)
json_value = st.recursive(
    json_leaf,
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=12,
)
player = st.sampled_from(["fuzzer", "ghost", "", "bad id", "x" * 70])
update_value = st.one_of(
    json_value,
    st.sampled_from(["waiting", "active", "paused", "finished", "over"]),
    st.dictionaries(player, st.integers(min_value=-(2**65), max_value=2**65), max_size=3),
    st.dictionaries(st.text(max_size=10), st.one_of(st.none(), st.text(max_size=30)), max_size=3),
)
message = st.fixed_dictionaries(
    {},
    optional={
        "type": st.one_of(st.sampled_from(TYPES), st.text(max_size=12), json_value),
        "id": st.one_of(st.text(min_size=1, max_size=70), json_value),
        "updates": st.one_of(
            st.dictionaries(st.sampled_from(UPDATE_KEYS), update_value), json_value
        ),
        "expected_version": st.one_of(st.integers(min_value=-5, max_value=2**66), json_value),
        "game_id": st.one_of(st.sampled_from(["fuzz", "nope", "bad id"]), json_value),
        "after": json_value,
        "limit": st.one_of(st.integers(min_value=-3, max_value=2000), json_value),
        "state": json_value,
        "token": st.one_of(st.text(max_size=30), json_value),
    },
)


def encode(msg: dict[str, Any]) -> str:
    return json.dumps(msg)  # stdlib: integers of any size, as a client may send them


def mutate(text: str, data: st.DataObject) -> str | bytes:
    """A valid-looking frame damaged: truncated, a byte flipped, or sent as binary."""
    how = data.draw(st.sampled_from(["truncate", "flip", "binary", "garbage"]))
    raw = text.encode()
    if how == "truncate" and raw:
        return raw[: data.draw(st.integers(0, len(raw) - 1))].decode(errors="replace")
    if how == "flip" and raw:
        at = data.draw(st.integers(0, len(raw) - 1))
        flipped = raw[:at] + bytes([raw[at] ^ data.draw(st.integers(1, 255))]) + raw[at + 1 :]
        return flipped.decode(errors="replace")
    if how == "binary":
        return raw
    return data.draw(st.text(max_size=40))


class Oracle:
    """One authenticated connection; checks every answer against the documented set."""

    def __init__(self, url: str, path: str, role: str) -> None:
        self.url, self.path, self.role = url, path, role
        self.sent = 0
        self.exits = contextlib.ExitStack()
        self.ws = self._open()

    def _open(self) -> ClientConnection:
        ws = self.exits.enter_context(
            connect(
                self.url + self.path,
                open_timeout=timeout(),
                proxy=None,
                max_size=2**22,
                ping_interval=None,  # keepalive pings draw from `random` in a thread
            )
        )
        tok = mint_token(TEST_SECRET, "fuzzer", self.role, ["*"])
        ws.send(orjson.dumps({"type": "CONNECT", "id": "c", "token": tok}).decode())
        answer = orjson.loads(ws.recv(timeout=timeout()))
        assert answer["type"] == "CONNECTED", answer
        return ws

    def send(self, frame: str | bytes) -> None:
        self.sent += 1
        self.ws.send(frame)
        # Every message gets exactly one direct answer (broadcasts may come in between).
        while True:
            try:
                raw = self.ws.recv(timeout=timeout())
            except ConnectionClosed as exc:
                code = exc.rcvd.code if exc.rcvd else None
                assert code != 1011, f"server error close after {frame!r}"
                raise AssertionError(f"connection closed ({code}) after {frame!r}") from exc
            answer = orjson.loads(raw)
            assert answer.get("type") in ANSWERS, answer
            if answer["type"] == "STATE" and "re" not in answer:
                continue  # a broadcast of an accepted change
            if answer["type"] == "ERROR":
                assert answer["code"] in CODES, answer
                assert answer.get("code") != "INTERNAL", (frame, answer)
            return


@pytest.fixture(scope="module")
def new_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    tmp = tmp_path_factory.mktemp("fuzz-new")
    server = ServerProcess(["serve", "--port", "0", "--db", str(tmp / "s.db"), *FAST], tmp / "log")
    url = server.start()
    yield url
    assert server.proc is not None
    assert server.proc.poll() is None, f"the server died:\n{server.output()}"
    server.stop()


@pytest.fixture(scope="module")
def proxied(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    tmp = tmp_path_factory.mktemp("fuzz-proxy")
    old = ServerProcess(
        ["legacy", "--port", "0", "--data", str(tmp / "old.jsonl"), *FAST], tmp / "old.log"
    )
    new = ServerProcess(
        ["serve", "--port", "0", "--db", str(tmp / "new.db"), *FAST], tmp / "new.log"
    )
    old_url, new_url = old.start(), new.start()
    proxy = ServerProcess(
        proxy_args(old_url, new_url, tmp / "proxy.db", "--sweep-interval", "0"),
        tmp / "proxy.log",
    )
    url = proxy.start()
    yield url
    for process in (proxy, old, new):
        assert process.proc is not None
        assert process.proc.poll() is None, f"a process died:\n{process.output()}"
        process.stop()


def fuzz(oracle_factory: Any) -> None:
    oracles: dict[str, Oracle] = {}
    # Failures are kept, not raised inside hypothesis: the connection carries state between
    # examples, so hypothesis could not replay one faithfully.
    failures: list[AssertionError] = []

    @settings(
        max_examples=EXAMPLES,
        deadline=None,
        derandomize=True,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
        database=None,
        # The connection carries state between examples: shrinking could not replay a
        # failure faithfully, so report the first one as it happened.
        phases=[Phase.generate],
        report_multiple_bugs=False,
    )
    @given(st.data())
    def run(data: st.DataObject) -> None:
        # Draw everything first: sending uses `random` (WebSocket masks), which hypothesis
        # forbids between draws.
        path = data.draw(st.sampled_from(["game", "admin"]))
        frames = []
        for msg in data.draw(st.lists(message, min_size=6, max_size=16)):
            if msg.get("type") == "DISCONNECT":
                # a valid goodbye ends the connection the examples share (hypothesis also
                # draws strings it finds in the loaded modules: DISCONNECT is one of them)
                continue
            text = encode(msg)
            frame = mutate(text, data) if data.draw(st.integers(0, 4)) == 0 else text
            if not isinstance(frame, str) or len(frame.encode()) <= 65_536:
                frames.append(frame)
        if failures:
            return  # the first failure is the finding; the connection is no longer usable
        oracle = oracles.get(path) or oracles.setdefault(path, oracle_factory(path))
        for frame in frames:
            try:
                oracle.send(frame)
            except AssertionError as exc:
                failures.append(exc)
                return

    try:
        run()
    finally:
        for oracle in oracles.values():
            oracle.exits.close()
    if failures:
        raise failures[0]
    total = sum(o.sent for o in oracles.values())
    assert total >= 10_000, total


@pytest.mark.slow
def test_the_new_server_answers_every_fuzzed_message_with_a_documented_frame(new_server: str):
    fuzz(
        lambda path: Oracle(
            new_server,
            "/v1/games/fuzz" if path == "game" else "/v1/admin",
            "player" if path == "game" else "admin",
        )
    )


@pytest.mark.slow
def test_the_proxy_relays_every_fuzzed_message_without_harm(proxied: str):
    fuzz(
        lambda path: Oracle(
            proxied,
            "/v1/games/fuzz" if path == "game" else "/v1/admin",
            "player" if path == "game" else "admin",
        )
    )


def test_oversized_frames_close_1009_at_and_over_the_limit(tmp_path: Path):
    server = ServerProcess(
        ["serve", "--port", "0", "--db", str(tmp_path / "s.db")], tmp_path / "log"
    )
    url = server.start()
    try:
        oracle = Oracle(url, "/v1/games/big", "player")
        exact = '{"type":"HEARTBEAT","id":"h","pad":"' + "x" * (65_536 - 38) + '"}'
        assert len(exact.encode()) == 65_536
        oracle.send(exact)  # at the limit: answered
        with pytest.raises(AssertionError, match=r"closed \(1009\)"):
            oracle.send(exact + " ")
        oracle.exits.close()
    finally:
        server.stop()
