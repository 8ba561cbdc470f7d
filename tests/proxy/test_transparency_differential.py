"""Differential transparency: a client script run directly against a server and through the
mirroring proxy (that same kind of server primary, the other one shadow, healthy or faulty)
gives the client the same transcript: the same frames in the same order, the same close code
and reason, the same handshake refusals.

Hypothesis generates the scripts: one to three clients on one or two games (and the admin
path, a missing game, paths the servers refuse), each sending CONNECT with good and bad
tokens, valid and invalid STATE_UPDATEs, GET_STATE, HEARTBEAT, LIST_GAMES, IMPORT_STATE,
DISCONNECT, malformed JSON, text that is not UTF-8, unknown types, unreadable ids, binary,
oversized and fragmented messages, and closing with various codes. A script is
deterministic: one client acts at a time and waits for the direct answer to its message;
then every open client sends a HEARTBEAT and reads up to its answer (a barrier: every
broadcast the step caused is in front of it, since each server writes a change's broadcasts
before it reads the next message). Only documented volatile fields are masked (`session_id`,
`updated_at`, `server_time`), and each run's game ids are mapped back to placeholders.

The servers and proxies are subprocesses started once for the module; every run (direct or
proxied) uses game ids of its own, ordered after every earlier run's, so runs never see one
another (`LIST_GAMES` is always asked `after` the run's prefix). Rates, the CONNECT deadline
and the idle close are lifted: they are timing, and timing never decides the outcome here.
The shadows: the new server (with the proxy's sweeps and resyncs against it), the old server
healthy and with each of its faults (garbage, dropped broadcasts, logic divergence, early
closes, slowness with a tiny shadow buffer, refused auth, a stall, a crash), and nothing.

Differences already known are not generated; `test_known_transparency_differences` pins each
one as a strict xfail, with its minimal script.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import time
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jwt
import pytest
from hypothesis import HealthCheck, given, note, settings
from hypothesis import strategies as st
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from stateshift.tokens import mint_token
from tests.support import TEST_SECRET, ServerProcess, proxy_args, timeout

#: documented volatile fields (DESIGN.md, "Noise"; the comparator's shipped rules)
VOLATILE = frozenset({"session_id", "updated_at", "server_time"})
#: no rate limit, no CONNECT deadline, no idle close: timing never decides an answer
UNTIMED = (
    *("--rate", "1000000", "--burst", "1000000"),
    *("--connect-timeout", "3600", "--idle-timeout", "3600"),
)
EXAMPLES = 500

# --------------------------------------------------------------------------- the stack


@dataclass(frozen=True)
class Setup:
    """One proxy configuration: which server kind is primary, and what the shadow is."""

    name: str
    primary: str  # "old" | "new": the kind of server the direct run talks to
    shadow: str  # a key of `SHADOWS`, or "down"
    extra: tuple[str, ...] = ()


#: shadow servers of their own (never a primary anywhere): name -> stateshift arguments
SHADOWS: dict[str, list[str]] = {
    "new-shadow": ["serve"],
    "old-noisy": [
        "legacy",
        *("--fault", "garbage:0.3", "--fault", "drop-broadcast:0.4"),
        *("--fault", "score-delta-off-by-one", "--fault", "reorder-settings"),
        *("--fault", "clock-skew:-7000"),
    ],
    "old-closing": ["legacy", "--fault", "close-early:3", "--fault", "slow:15"],
    "old-refusing": ["legacy", "--fault", "refuse-auth"],
    "old-stalling": ["legacy", "--fault", "stall-after:40"],
    "old-crashing": ["legacy", "--fault", "crash-after:25"],
}

SETUPS = [
    # the new server shadow: sweeps and resyncs run against it (it is no primary elsewhere)
    Setup("old>new", "old", "new-shadow", ("--resync", "--sweep-interval", "1")),
    # the healthy old server (also the old primary of the direct runs) as the shadow
    Setup("new>old", "new", "old-primary", ("--shadow-coalesce-ms", "2")),
    Setup("new>old[noisy]", "new", "old-noisy", ("--resync",)),
    Setup("new>old[closing,slow]", "new", "old-closing", ("--shadow-buffer", "4")),
    Setup("new>old[refuse-auth]", "new", "old-refusing"),
    Setup("new>old[stall-after]", "new", "old-stalling", ("--answer-timeout", "1")),
    Setup("new>old[crash-after]", "new", "old-crashing"),
    Setup("old>down", "old", "down"),
    Setup("new>down", "new", "down"),
]

#: nothing listens there: a shadow that is down for good
DOWN_URL = "ws://127.0.0.1:9"


@dataclass
class Stack:
    direct: dict[str, str]  # "old"/"new" -> URL of the primary servers
    proxies: dict[str, str]  # setup name -> proxy URL
    processes: list[tuple[ServerProcess, bool]]  # (process, must still be alive at the end)


def _server(args: list[str], tmp: Path, name: str) -> ServerProcess:
    kind, *rest = args
    store = ["--db", str(tmp / f"{name}.db")] if kind == "serve" else ["--data", str(tmp / name)]
    return ServerProcess([kind, "--port", "0", *store, *UNTIMED, *rest], tmp / f"{name}.log")


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    tmp = tmp_path_factory.mktemp("differential")
    servers = {"old-primary": _server(["legacy"], tmp, "old-primary")}
    servers["new-primary"] = _server(["serve"], tmp, "new-primary")
    for name, args in SHADOWS.items():
        servers[name] = _server(args, tmp, name)
    started: list[tuple[ServerProcess, bool]] = []
    proxies: dict[str, ServerProcess] = {}
    try:
        with ThreadPoolExecutor(max_workers=len(servers)) as pool:
            urls = dict(zip(servers, pool.map(lambda s: s.start(), servers.values()), strict=True))
        started += [(s, name in ("old-primary", "new-primary")) for name, s in servers.items()]
        direct = {"old": urls["old-primary"], "new": urls["new-primary"]}
        for n, setup in enumerate(SETUPS):
            shadow = DOWN_URL if setup.shadow == "down" else urls[setup.shadow]
            old, new = (
                (direct["old"], shadow) if setup.primary == "old" else (shadow, direct["new"])
            )
            args = proxy_args(old, new, tmp / f"proxy{n}.db", "--primary", setup.primary)
            if "--sweep-interval" not in setup.extra:
                args += ["--sweep-interval", "0"]
            proxies[setup.name] = ServerProcess([*args, *setup.extra], tmp / f"proxy{n}.log")
        with ThreadPoolExecutor(max_workers=len(proxies)) as pool:
            proxy_urls = list(pool.map(lambda p: p.start(), proxies.values()))
        started += [(p, True) for p in proxies.values()]
        yield Stack(direct, dict(zip(proxies, proxy_urls, strict=True)), started)
        for process, must_live in started:
            assert process.proc is not None
            if must_live:
                assert process.proc.poll() is None, f"a process died:\n{process.output()}"
    finally:
        for process in [*proxies.values(), *servers.values()]:
            process.stop()


# --------------------------------------------------------------------------- scripts

#: placeholders, replaced in every string (exactly equal) by the run's values
GAME_A, GAME_B, GAME_Z, PREFIX = "@a", "@b", "@z", "@p"


@dataclass(frozen=True)
class Tok:
    """A token, minted when the script runs (so that its game ids are the run's)."""

    kind: str  # ok | expired | forged | garbage | unknown-role | no-exp | no-games
    sub: str
    role: str
    games: tuple[str, ...]


@dataclass(frozen=True)
class Msg:
    """A JSON object (with placeholders and `Tok`s), sent as one text frame."""

    obj: dict[str, Any]


@dataclass(frozen=True)
class Raw:
    """A text frame sent as it is (malformed JSON, not an object, ...)."""

    text: str


@dataclass(frozen=True)
class Binary:
    data: bytes


@dataclass(frozen=True)
class Big:
    """A HEARTBEAT padded to exactly `size` bytes (text), or `size` bytes (binary)."""

    size: int
    binary: bool


@dataclass(frozen=True)
class Fragmented:
    """A HEARTBEAT padded to `size` bytes, sent as a message of `pieces` fragments."""

    size: int
    pieces: int
    binary: bool


@dataclass(frozen=True)
class NotUtf8:
    """A text frame whose bytes are not UTF-8."""

    data: bytes


@dataclass(frozen=True)
class Close:
    """The client closes with this code and reason."""

    code: int
    reason: str


Action = Msg | Raw | Binary | Big | Fragmented | NotUtf8 | Close


@dataclass(frozen=True)
class Script:
    #: each client's path: "a", "b", "z" (a game nobody creates first), "a?q" (a query),
    #: "admin", "404id" (a game id too long), "404path" (no such path)
    paths: tuple[str, ...]
    steps: tuple[tuple[int, Action], ...]

    def messages(self) -> int:
        return len(self.steps)


PLAYERS = ["alice", "bob", "carol"]
player_ref = st.sampled_from([*PLAYERS, "alice", "bob", "zed", "bad id", ""])
number = st.one_of(
    st.integers(-50, 50),
    st.sampled_from([0, 60_000, 86_400_000, 86_400_001, 10**9, 10**9 + 1, -(10**9) - 1, 2**70, -1]),
)
odd_value: st.SearchStrategy[Any] = st.sampled_from([None, True, 1.5, "7", [], {}, "x"])
setting_key = st.sampled_from(["initial_time_ms", "initial_time_ms", "k1", "k2", "bad key", ""])
setting_value = st.one_of(
    st.sampled_from(["0", "5000", "86400000", "86400001", "-1", "007", " 5", "x", "", None]),
    st.just("s" * 1025),
    st.sampled_from([3, True]),
)
update_pair = st.one_of(
    st.tuples(
        st.just("status"),
        st.sampled_from(["waiting", "active", "active", "paused", "finished", "over", 3, None]),
    ),
    st.tuples(st.just("current_player"), st.sampled_from([*PLAYERS, "zed", None, 5])),
    st.tuples(st.just("scores"), st.dictionaries(player_ref, number, max_size=2)),
    st.tuples(st.just("score_deltas"), st.dictionaries(player_ref, number, max_size=2)),
    st.tuples(st.just("timer"), st.dictionaries(player_ref, number, max_size=2)),
    st.tuples(st.just("settings"), st.dictionaries(setting_key, setting_value, max_size=2)),
    st.tuples(st.sampled_from(["bogus", "version"]), odd_value),
    st.tuples(
        st.sampled_from(["scores", "timer", "settings", "score_deltas"]),
        st.one_of(odd_value, st.just({"alice": "1"}), st.just({"alice": 1.0})),
    ),
)
#: changes that are usually accepted (players who usually joined, values in range)
likely_pair = st.one_of(
    st.tuples(st.just("status"), st.sampled_from(["active", "active", "paused", "finished"])),
    st.tuples(st.just("current_player"), st.sampled_from(["alice", "bob", None])),
    st.tuples(
        st.just("scores"), st.dictionaries(st.sampled_from(["alice", "bob"]), st.integers(-9, 9))
    ),
    st.tuples(
        st.just("score_deltas"),
        st.dictionaries(st.sampled_from(["alice", "bob"]), st.integers(-9, 9)),
    ),
    st.tuples(
        st.just("timer"),
        st.dictionaries(st.sampled_from(["alice", "bob"]), st.integers(0, 100_000)),
    ),
    st.tuples(
        st.just("settings"),
        st.dictionaries(
            st.sampled_from(["k1", "k2", "initial_time_ms"]),
            st.sampled_from(["v", "w", "30000", None]),
            min_size=1,
            max_size=2,
        ),
    ),
)
updates = st.one_of(
    st.lists(likely_pair, min_size=1, max_size=3).map(dict),
    st.lists(likely_pair, min_size=1, max_size=3).map(dict),
    st.lists(update_pair, min_size=1, max_size=3).map(dict),
    st.sampled_from([{}, [], "status", None, 5]),
)
expected_version = st.one_of(st.integers(0, 8), st.sampled_from([None, "3", 2.0, True, 2**70]))
game_slot = st.sampled_from([GAME_A, GAME_A, GAME_B, GAME_Z])


@st.composite
def tokens(draw: st.DrawFn, path: str) -> Tok:
    kind = draw(
        st.sampled_from(
            ["ok"] * 8 + ["expired", "forged", "garbage", "unknown-role", "no-exp", "no-games"]
        )
    )
    sub = draw(st.sampled_from([*PLAYERS, "alice", "bad id"]))
    admin_path = path == "admin"
    role = draw(
        st.sampled_from(
            ["admin"] * 6 + ["player"] if admin_path else ["player"] * 6 + ["observer", "admin"]
        )
    )
    own = GAME_B if path == "b" else GAME_Z if path == "z" else GAME_A
    games = draw(st.sampled_from([("*",), ("*",), (own,), (GAME_B if own != GAME_B else GAME_A,)]))
    return Tok(kind, sub, role, games)


@st.composite
def connects(draw: st.DrawFn, path: str, mid: str) -> Msg:
    how = draw(st.integers(0, 9))
    if how == 0:
        return Msg({"type": "CONNECT", "id": mid})  # no token
    if how == 1:
        return Msg({"type": "CONNECT", "id": mid, "token": draw(odd_value)})
    return Msg({"type": "CONNECT", "id": mid, "token": draw(tokens(path))})


def _import_state(slot: str, version: int, status: str, score: int) -> dict[str, Any]:
    state: dict[str, Any] = {
        "game_id": slot,
        "status": status,
        "current_player": "alice" if score % 2 else None,
        "scores": {"alice": score},
        "timer": {"alice": 1000},
        "settings": {"k1": "v"},
        "version": version,
    }
    if version % 2:
        state["updated_at"] = "2026-01-02T03:04:05.678Z"
    return state


@st.composite
def game_messages(draw: st.DrawFn, path: str, mid: str, primary: str) -> Action:
    kind = draw(
        st.sampled_from(
            ["update"] * 8
            + ["connect"] * 2
            + ["heartbeat", "get", "get", "disconnect", "list", "unknown", "badid"]
            + ["raw", "binary", "big", "close", "import", "fragmented", "utf8"]
        )
    )
    return draw(_message(kind, path, mid, primary))


@st.composite
def admin_messages(draw: st.DrawFn, path: str, mid: str, primary: str) -> Action:
    kind = draw(
        st.sampled_from(
            ["list"] * 4
            + ["get"] * 3
            + ["import"] * 3
            + ["heartbeat", "update", "connect", "disconnect", "unknown", "badid", "raw"]
            + ["binary", "big", "close", "fragmented"]
        )
    )
    return draw(_message(kind, path, mid, primary))


@st.composite
def _message(draw: st.DrawFn, kind: str, path: str, mid: str, primary: str) -> Action:
    if kind == "connect":
        return draw(connects(path, mid))
    if kind == "heartbeat":
        return Msg({"type": "HEARTBEAT", "id": mid})
    if kind == "update":
        obj: dict[str, Any] = {"type": "STATE_UPDATE", "id": mid, "updates": draw(updates)}
        if draw(st.integers(0, 3)) == 0:
            obj["expected_version"] = draw(expected_version)
        return Msg(obj)
    if kind == "get":
        obj = {"type": "GET_STATE", "id": mid}
        if draw(st.integers(0, 5)) > 0:
            obj["game_id"] = draw(st.one_of(game_slot, st.sampled_from(["bad id", 5])))
        return Msg(obj)
    if kind == "disconnect":
        return Msg({"type": "DISCONNECT", "id": mid})
    if kind == "list":
        obj = {"type": "LIST_GAMES", "id": mid}
        # never without a bounded `after`: other runs' games would show
        obj["after"] = draw(st.sampled_from([PREFIX, PREFIX, GAME_A, "zzzz", "bad id", 5]))
        if draw(st.booleans()):
            obj["limit"] = draw(st.sampled_from([1, 2, 3, 1000, 0, 1001, "2", None]))
        return Msg(obj)
    if kind == "import":
        state = _import_state(
            draw(game_slot),
            draw(st.integers(1, 6)),
            draw(st.sampled_from(["waiting", "active", "finished", "lost"])),
            draw(st.integers(-2, 5)),
        )
        if draw(st.integers(0, 4)) == 0:
            state.pop(draw(st.sampled_from(sorted(state))))
        return Msg({"type": "IMPORT_STATE", "id": mid, "state": state})
    if kind == "unknown":
        typ = draw(st.sampled_from(["FLY", "ACK", "STATE", "connect", 5, None, ""]))
        return Msg({"type": typ, "id": mid})
    if kind == "badid":
        obj = {"type": draw(st.sampled_from(["HEARTBEAT", "GET_STATE", "CONNECT", "NOPE"]))}
        bad = draw(st.sampled_from(["<missing>", 7, "", "x" * 65, None, ["m"]]))
        if bad != "<missing>":
            obj["id"] = bad
        if draw(st.booleans()):
            obj["id2"] = "ignored"
        return Msg(obj)
    if kind == "raw":
        return Raw(
            draw(
                st.sampled_from(
                    [
                        "this is not json",
                        '{"type": "HEARTBEAT", "id": "' + mid + '"',
                        "[1, 2, 3]",
                        "42",
                        '"a string"',
                        "",
                        '{"type": "HEARTBEAT", "id": "\\ud800"}',
                        '{"type": "HEARTBEAT", "id": "x", "id": "' + mid + '"}',
                        '{"type": "HEARTBEAT", "id": "' + mid + '", "n": 1' + "0" * 30 + "}",
                        '{"type": "GET_STATE", "id": "' + mid + '"}   ',
                    ]
                )
            )
        )
    if kind == "binary":
        data = draw(
            st.sampled_from(
                [b"\x00\x01", b"", json.dumps({"type": "HEARTBEAT", "id": mid}).encode()]
            )
        )
        return Binary(data)
    if kind == "big":
        size = draw(st.sampled_from([65_536, 65_536, 65_537, 70_000, 200_000]))
        return Big(size, draw(st.integers(0, 3)) == 0)
    if kind == "fragmented":
        # more than websockets' 4096 fragments: both servers and the proxy close 1009 at once
        # (the new server once answered the message's tail and what followed it first:
        # tests/server/test_failing_connection.py)
        # (websockets' client ends a fragmented message with an empty final frame: 4095
        # pieces are 4096 frames, the most a message may have)
        pieces = draw(st.sampled_from([2, 3, 7, 4095, 4096, 4097]))
        # within the frame limit: a longer one is re-framed by the proxy (KNOWN_DEFECTS)
        size = draw(st.sampled_from([max(pieces, 100), 65_536]))
        return Fragmented(size, pieces, draw(st.integers(0, 4)) == 0)
    if kind == "utf8":
        return NotUtf8(
            draw(
                st.sampled_from(
                    [
                        b"\xff\xfe",
                        b'{"type": "HEARTBEAT", "id": "\xc3"}',
                        b'{"type": "HEARTBEAT", "id": "'
                        + mid.encode()
                        + b'", "x": "\xed\xa0\x80"}',
                    ]
                )
            )
        )
    assert kind == "close", kind
    code = draw(st.sampled_from([1000, 1000, 1001, 1003, 1008, 1011, 3000, 4000, 4401, 4999]))
    reason = draw(st.sampled_from(["", "bye", "ünïcödé", "r" * 100]))
    return Close(code, reason)


@st.composite
def scripts(draw: st.DrawFn, primary: str) -> Script:
    two_games = draw(st.booleans())
    clients = draw(st.integers(1, 3))
    choices = ["a"] * 6 + ["z", "admin", "admin", "a?q", "404id", "404path"]
    if two_games:
        choices += ["b"] * 4
    paths = tuple(draw(st.sampled_from(choices)) for _ in range(clients))
    # the first client usually plays in game a: most scripts then have a game to act on
    if paths[0] not in ("a", "b") and draw(st.integers(0, 2)) > 0:
        paths = ("a", *paths[1:])
    steps: list[tuple[int, Action]] = []
    started: set[int] = set()
    for n in range(draw(st.integers(3, 20))):
        who = draw(st.integers(0, clients - 1))
        path = paths[who]
        mid = draw(st.sampled_from([f"m{n}", f"m{n}", f"m{n}", "same", "ïd-" + "x" * 60]))
        if who not in started and draw(st.integers(0, 4)) > 0:
            # a client's first message is usually a CONNECT with a plausible token
            tok = Tok(
                "ok",
                "root" if path == "admin" else draw(st.sampled_from(["alice", "bob", "carol"])),
                "admin"
                if path == "admin"
                else draw(st.sampled_from(["player"] * 5 + ["observer"])),
                ("*",),
            )
            action: Action = Msg({"type": "CONNECT", "id": mid, "token": tok})
        elif path == "admin":
            action = draw(admin_messages(path, mid, primary))
        else:
            action = draw(game_messages(path, mid, primary))
        started.add(who)
        steps.append((who, action))
    return Script(paths, tuple(steps))


# --------------------------------------------------------------------------- running


@dataclass
class Run:
    """One run's values for the placeholders."""

    prefix: str

    def ids(self) -> dict[str, str]:
        p = self.prefix
        return {GAME_A: f"{p}a", GAME_B: f"{p}b", GAME_Z: f"{p}z", PREFIX: p}

    def token(self, tok: Tok) -> str:
        ids = self.ids()
        games = [ids.get(g, g) for g in tok.games]
        now = time.time()
        claims: dict[str, Any] = {"sub": tok.sub, "role": tok.role, "games": games}
        claims["iat"], claims["exp"] = int(now), int(now + 3600)
        if tok.kind == "ok":
            return mint_token(TEST_SECRET, tok.sub, tok.role, games)
        if tok.kind == "expired":
            return mint_token(TEST_SECRET, tok.sub, tok.role, games, now=now - 7200)
        if tok.kind == "forged":
            return mint_token(
                "a-secret-neither-server-knows-about-at-all", tok.sub, tok.role, games
            )
        if tok.kind == "garbage":
            return "not.a.jwt"
        if tok.kind == "unknown-role":
            claims["role"] = "superuser"
        elif tok.kind == "no-exp":
            del claims["exp"]
        elif tok.kind == "no-games":
            del claims["games"]
        return jwt.encode(claims, TEST_SECRET, algorithm="HS256")

    def fill(self, value: Any) -> Any:
        if isinstance(value, Tok):
            return self.token(value)
        if isinstance(value, str):
            return self.ids().get(value, value)
        if isinstance(value, dict):
            return {k: self.fill(v) for k, v in value.items()}
        if isinstance(value, list):
            return [self.fill(v) for v in value]
        return value

    def path(self, path: str) -> str:
        ids = self.ids()
        if path == "admin":
            return "/v1/admin"
        if path == "404id":
            return "/v1/games/" + "g" * 65
        if path == "404path":
            return "/v1/elsewhere"
        if path == "a?q":
            return f"/v1/games/{ids[GAME_A]}?client=differential"
        return f"/v1/games/{ids['@' + path]}"

    def normalise(self, raw: str | bytes) -> Any:
        """A received frame as compared: the run's ids as placeholders, volatile fields
        masked; what is not a JSON object is kept as it came."""
        if isinstance(raw, bytes):
            return ("binary", raw.replace(self.prefix.encode(), PREFIX.encode()).hex())
        text = raw.replace(self.prefix, PREFIX)
        try:
            frame = json.loads(text)
        except ValueError:
            return ("text", text)
        return _mask(frame)


def _mask(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: ("<volatile>" if k in VOLATILE else _mask(v)) for k, v in value.items()}
    if isinstance(value, list):
        return [_mask(v) for v in value]
    return value


def padded(size: int) -> str:
    """A HEARTBEAT of exactly `size` bytes (at least 40)."""
    head = '{"type":"HEARTBEAT","id":"big","pad":"'
    frame = head + "x" * (size - len(head) - 2) + '"}'
    assert len(frame.encode()) == size
    return frame


@dataclass
class Peer:
    """One client of a script, and everything it saw."""

    path: str
    ws: ClientConnection | None = None
    events: list[Any] = field(default_factory=list)
    #: refused, closed, or given up (no answer in time): it acts no more
    done: bool = False


class Runner:
    def __init__(self, base: str, run: Run, script: Script) -> None:
        self.base, self.run, self.script = base, run, script
        self.peers = [Peer(run.path(p)) for p in script.paths]
        self.sent = 0

    async def go(self) -> list[list[Any]]:
        try:
            for n, (who, action) in enumerate(self.script.steps):
                peer = self.peers[who]
                if peer.done:
                    continue
                if peer.ws is None and not await self.open(peer):
                    continue
                if isinstance(action, Close):
                    await self.close(peer, action.code, action.reason)
                else:
                    await self.send(peer, action)
                    await self.read(peer, lambda f: not isinstance(f, dict) or "re" in f)
                await self.barrier(f"sync{n}")
            for peer in self.peers:
                if peer.ws is not None and not peer.done:
                    await self.close(peer, 1000, "")
        finally:
            for peer in self.peers:
                if peer.ws is not None and peer.ws.transport is not None:
                    peer.ws.transport.abort()
        return [peer.events for peer in self.peers]

    async def open(self, peer: Peer) -> bool:
        try:
            peer.ws = await connect(
                self.base + peer.path,
                open_timeout=timeout(),
                proxy=None,
                ping_interval=None,
                max_size=2**22,
            )
        except InvalidStatus as exc:
            body = exc.response.body.decode(errors="replace").replace(self.run.prefix, PREFIX)
            peer.events.append(("refused", exc.response.status_code, body))
            peer.done = True
            return False
        return True

    async def send(self, peer: Peer, action: Action) -> None:
        assert peer.ws is not None
        frame: str | bytes
        if isinstance(action, Msg):
            frame = json.dumps(self.run.fill(action.obj))
        elif isinstance(action, Raw):
            frame = action.text
        elif isinstance(action, Binary):
            frame = action.data
        elif isinstance(action, NotUtf8):
            await self.put(peer, action.data, text=True)
            return
        elif isinstance(action, Fragmented):
            whole = padded(action.size).encode()
            cut = [len(whole) * n // action.pieces for n in range(action.pieces + 1)]
            parts = [whole[a:b] for a, b in itertools.pairwise(cut)]
            await self.put(peer, parts, text=not action.binary)
            return
        else:
            assert isinstance(action, Big)
            frame = b"\x00" * action.size if action.binary else padded(action.size)
        await self.put(peer, frame)

    async def put(self, peer: Peer, frame: Any, text: bool | None = None) -> None:
        assert peer.ws is not None
        self.sent += 1
        with contextlib.suppress(ConnectionClosed):  # the close is read next
            await peer.ws.send(frame, text=text)

    async def read(self, peer: Peer, stop: Callable[[Any], bool]) -> None:
        """Record frames until one satisfies `stop`, the connection closes, or nothing
        comes within the (generous) bound: that is recorded too, and the peer given up."""
        ws = peer.ws
        assert ws is not None
        try:
            async with asyncio.timeout(timeout()):
                while True:
                    frame = self.run.normalise(await ws.recv())
                    peer.events.append(("frame", frame))
                    if stop(frame):
                        return
        except ConnectionClosed:
            rcvd = ws.protocol.close_rcvd
            reason = (ws.close_reason or "").replace(self.run.prefix, PREFIX)
            peer.events.append(("closed", ws.close_code, reason, rcvd is not None))
            peer.done = True
        except TimeoutError:
            peer.events.append(("no answer within the bound",))
            peer.done = True

    async def barrier(self, sync: str) -> None:
        """Every open client asks for a heartbeat and reads up to its answer: whatever the
        step caused on its connection is recorded before the next step."""
        for peer in self.peers:
            if peer.ws is None or peer.done:
                continue
            await self.put(peer, json.dumps({"type": "HEARTBEAT", "id": sync}))
            await self.read(peer, lambda f: isinstance(f, dict) and f.get("re") == sync)

    async def close(self, peer: Peer, code: int, reason: str) -> None:
        ws = peer.ws
        assert ws is not None
        async with asyncio.timeout(timeout()):
            await ws.close(code, reason)
        rcvd = ws.protocol.close_rcvd
        peer.events.append(("closed by client", ws.close_code, ws.close_reason, rcvd is not None))
        peer.done = True


RUNS = itertools.count(1)
TOTALS = {"examples": 0, "messages": 0, "frames": 0}
#: what the compared transcripts held (frame type and error code, closes): shown with -s
SEEN: Counter[str] = Counter()


def tally(transcript: list[list[Any]]) -> None:
    for events in transcript:
        for event in events:
            if event[0] == "frame":
                frame = event[1]
                if isinstance(frame, dict):
                    what = str(frame.get("type"))
                    if what == "ERROR":
                        what += f" {frame.get('code')}"
                    elif what == "STATE" and "re" not in frame:
                        what += " broadcast"
                else:
                    what = f"non-JSON {frame[0]}"
                SEEN[what] += 1
            else:
                SEEN[f"{event[0]} {event[1] if len(event) > 1 else ''}".strip()] += 1


def run_script(base: str, script: Script) -> list[list[Any]]:
    run = Run(f"t{next(RUNS):05d}")
    runner = Runner(base, run, script)
    transcript = asyncio.run(runner.go())
    TOTALS["messages"] += runner.sent
    TOTALS["frames"] += sum(1 for events in transcript for e in events if e[0] == "frame")
    return transcript


def describe(script: Script) -> str:
    lines = [f"paths: {script.paths}"]
    lines += [f"  client {who}: {action}" for who, action in script.steps]
    return "\n".join(lines)


@settings(
    max_examples=EXAMPLES,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(case=st.sampled_from(SETUPS).flatmap(lambda s: st.tuples(st.just(s), scripts(s.primary))))
def check(stack: Stack, case: tuple[Setup, Script]) -> None:
    setup, script = case
    note(f"setup {setup.name}\n{describe(script)}")
    direct = run_script(stack.direct[setup.primary], script)
    proxied = run_script(stack.proxies[setup.name], script)
    note(f"direct:  {direct}\nproxied: {proxied}")
    TOTALS["examples"] += 1
    tally(proxied)
    for client, (mine, theirs) in enumerate(zip(direct, proxied, strict=True)):
        for n, (a, b) in enumerate(itertools.zip_longest(mine, theirs)):
            assert a == b, (
                f"{setup.name}: client {client} event {n} differs\n  direct:  {a}\n  proxied: {b}"
            )


@pytest.mark.slow
def test_a_client_sees_the_same_transcript_directly_and_through_the_proxy(stack: Stack) -> None:
    started = time.monotonic()
    check(stack)
    print(  # shown with -s: what ran
        f"\n{TOTALS['examples']} examples, {TOTALS['messages']} scripted messages, "
        f"{TOTALS['frames']} frames compared, {time.monotonic() - started:.1f} s\n"
        + ", ".join(f"{what}: {n}" for what, n in sorted(SEEN.items()))
    )
    assert TOTALS["examples"] >= EXAMPLES // 2


# --------------------------------------------------------------------------- known defects

#: minimal scripts the property above does not generate, because they show a difference
#: between the direct and the proxied transcript that is already known (see each reason)
ALICE = Msg({"type": "CONNECT", "id": "c", "token": Tok("ok", "alice", "player", ("*",))})
KNOWN_DEFECTS = [
    pytest.param(
        setup,
        action,
        marks=pytest.mark.xfail(strict=True, reason=reason),
        id=f"{setup}-{name}",
    )
    for setup in ("old>new", "new>old")
    for name, action, reason in [
        (
            "text-frame-over-1MiB",
            Big(1_100_000, binary=False),
            "proxy: a client frame over the proxy's own limit (1 MiB) is closed by the proxy, "
            "1009 'frame with 1100000 bytes exceeds limit of 1048576 bytes', not the "
            "primary's '... exceeds limit of 65536 bytes'",
        ),
        (
            "fragmented-over-64KiB",
            Fragmented(65_537, 3, binary=False),
            "proxy: a fragmented message over 65,536 bytes reaches the primary re-framed as "
            "one frame: its 1009 reason is 'frame with 65537 bytes exceeds limit ...', not "
            "'frame with 21846 bytes after reading 43691 bytes exceeds limit ...'",
        ),
    ]
]


@pytest.mark.parametrize(("setup_name", "action"), KNOWN_DEFECTS)
def test_known_transparency_differences(stack: Stack, setup_name: str, action: Action) -> None:
    setup = next(s for s in SETUPS if s.name == setup_name)
    script = Script(("a",), ((0, ALICE), (0, action)))
    direct = run_script(stack.direct[setup.primary], script)
    proxied = run_script(stack.proxies[setup.name], script)
    assert proxied == direct
