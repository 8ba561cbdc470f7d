"""The mirroring proxy's per-frame Python work alone, without sockets: a steady A/B figure.

`proxy_bench` and `proxy_breakdown` measure the proxy's CPU time under real load on loopback,
which on this shared 2-core machine drifts by 15 to 25 % between runs. This script replays the
same frames straight into the relay's callbacks (`_client_frame`, `_upstream_frame`, `settle`,
the tap and a live `StateComparator`), with transports that only count writes, and reports the
process CPU time per client message: what a change to the relay's, the order's, the tap's or
the comparator's Python costs, to within a few per cent, in a few seconds (uvloop, three
loop turns per message, as under load). Socket reads, frame scanning and the kernel's share
are not in it (see `proxy_breakdown`).

    .venv/bin/python benchmarks/proxy_hotpath.py [--messages 200000] [--rounds 5]

The load is proxy_bench's: 10 clients, each on its own game, 1 message in 10 a
`STATE_UPDATE` (answered by an `ACK` and a `STATE` broadcast), the rest `HEARTBEAT`s; both
upstreams answer the same (their `server_time`s differ).
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import orjson
import uvloop
from prometheus_client import CollectorRegistry

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from websockets.client import ClientProtocol
from websockets.protocol import OPEN
from websockets.server import ServerProtocol
from websockets.uri import parse_uri

from compare.comparator import StateComparator
from compare.rules import defaults
from compare.store import FindingStore
from proxy.frames import ClientSide, UpstreamSide
from proxy.relay import MirrorProxy, ProxySettings, Session
from proxy.route import Route
from proxy.tap import Tap

CLIENTS = 10
UPDATE_EVERY = 10
#: a session, its client frame, the primary's answers, the shadow's answers (payload, raw)
Script = tuple[Session, tuple[bytes, bytes], list[tuple[bytes, bytes]], list[tuple[bytes, bytes]]]


class Transport(asyncio.Transport):
    """Takes writes and forgets them."""

    writes = 0

    def write(self, data: bytes | bytearray | memoryview) -> None:
        Transport.writes += 1

    def is_closing(self) -> bool:
        return False

    def get_write_buffer_size(self) -> int:
        return 0


def opened(protocol: Any) -> Any:
    protocol.state = OPEN
    return protocol


class Client(ClientSide):
    """What the relay reads of a client connection on its frame path (real classes, not
    duck types: compiled modules check the types they are given)."""

    def __init__(self) -> None:  # no super().__init__: nothing but these is read
        self.transport = Transport()
        self.protocol = opened(ServerProtocol())
        self.paused = False


class Upstream(UpstreamSide):
    """The same for an upstream connection."""

    def __init__(self) -> None:
        self.transport = Transport()
        self.protocol = opened(ClientProtocol(parse_uri("ws://127.0.0.1:9/")))
        self.paused = False


def frame(body: dict[str, Any], masked: bool = False) -> tuple[bytes, bytes]:
    """(payload, raw frame bytes) of a small text frame (the mask is not applied: the relay
    forwards the bytes it is given)."""
    payload = orjson.dumps(body)
    head = bytes((0x81, len(payload) | (0x80 if masked else 0)))
    return payload, head + (b"\0\0\0\0" if masked else b"") + payload


def stamp(n: int) -> str:
    return f"2026-11-26T12:00:{n % 60:02d}.{n % 1000:03d}Z"


class Replay:
    def __init__(self, proxy: MirrorProxy) -> None:
        self.proxy = proxy
        self.sessions: list[Session] = []
        self.versions: list[int] = []

    async def open(self) -> None:
        proxy = self.proxy
        for n in range(CLIENTS):
            game = f"g{n}"
            session = Session(
                id=n + 1,
                client=Client(),
                path=f"/v1/games/{game}",
                game_id=game,
                headers=[],
                subprotocols=[],
                primary="old",
            )
            session.up = {"old": Upstream(), "new": Upstream()}
            session.sent = {"old": {}, "new": {}}
            proxy.sessions[session.id] = session
            proxy.order.add_conn(session.id, game)
            proxy.order.shadow_opened(session.id, time.monotonic())
            self.sessions.append(session)
            self.versions.append(1)
            state = {"version": 1, "status": "waiting", "scores": {f"p{n}": 0}}
            await self.exchange(
                session,
                {"type": "CONNECT", "id": "c", "token": "t"},
                [{"type": "CONNECTED", "re": "c", "player_id": f"p{n}", "state": state}],
            )

    async def exchange(self, session: Session, request: dict[str, Any], answers: list[Any]) -> None:
        await self.play(self.script(session, request, answers))

    @staticmethod
    def script(session: Session, request: dict[str, Any], answers: list[Any]) -> Script:
        """The frames of one request and its answers, encoded beforehand."""
        return (
            session,
            frame(request, masked=True),
            [frame(answer) for answer in answers],
            [frame(answer | {"server_time": answer["server_time"][:-2] + "9Z"})
             if "server_time" in answer else frame(answer) for answer in answers],
        )  # fmt: skip

    async def play(self, script: Script) -> None:
        """The relay's callbacks as the event loop would call them: the client's frame,
        the primary's answers, the shadow's answers, each in its own loop turn (which
        ends with the relay's `settle`)."""
        proxy = self.proxy
        session, (payload, raw), primary, shadow = script
        proxy._client_frame(session, True, payload, raw)
        await asyncio.sleep(0)
        for payload, raw in primary:
            proxy._upstream_frame(session, "old", True, payload, raw)
        await asyncio.sleep(0)
        for payload, raw in shadow:
            proxy._upstream_frame(session, "new", True, payload, raw)
        await asyncio.sleep(0)

    def message(self, n: int) -> Script:
        index = n % CLIENTS
        session = self.sessions[index]
        mid = f"m{n}"
        if n // CLIENTS % UPDATE_EVERY == 0:
            self.versions[index] += 1
            version = self.versions[index]
            state = {"version": version, "status": "active", "scores": {f"p{index}": version}}
            return self.script(
                session,
                {"type": "STATE_UPDATE", "id": mid, "updates": {"score_deltas": {"p": 1}}},
                [
                    {"type": "ACK", "re": mid, "version": version},
                    {"type": "STATE", "game_id": f"g{index}", "version": version, "state": state},
                ],
            )
        return self.script(
            session,
            {"type": "HEARTBEAT", "id": mid},
            [{"type": "HEARTBEAT_ACK", "re": mid, "server_time": stamp(n)}],
        )


async def measure(messages: int, tmp: Path) -> float:
    settings = ProxySettings(
        old_url="ws://127.0.0.1:9", new_url="ws://127.0.0.1:9", secret="x" * 32,
        state_path=tmp / "proxy.db", shadow_coalesce=0.0,
    )  # fmt: skip
    tap = Tap()
    proxy = MirrorProxy(settings, Route(), tap=tap)
    comparator = StateComparator(tap, defaults(), FindingStore(tmp / "f.db"), CollectorRegistry())
    comparator.start()
    replay = Replay(proxy)
    await replay.open()
    for n in range(1000):  # warm-up
        await replay.play(replay.message(n))
    scripts = [replay.message(n) for n in range(1000, 1000 + messages)]
    play = replay.play
    started = time.process_time()
    for script in scripts:
        await play(script)
    spent = time.process_time() - started
    status = comparator.status()["comparisons"]
    matched = status["answer"]["match"] + status["broadcast"]["match"]
    wrong = sum(status[k][r] for k in ("answer", "broadcast") for r in ("mismatch", "unpaired"))
    assert wrong == 0, status  # every pair compared, and equal
    assert matched >= messages, status
    await comparator.stop()
    return 1e6 * spent / messages


async def main(args: argparse.Namespace) -> None:
    figures = []
    with tempfile.TemporaryDirectory(prefix="stateshift-hotpath-") as name:
        for round_no in range(args.rounds):
            (Path(name) / str(round_no)).mkdir()
            figure = await measure(args.messages, Path(name) / str(round_no))
            figures.append(figure)
            print(f"round {round_no + 1}: {figure:.2f} µs of CPU per client message", flush=True)
    print(f"median: {statistics.median(figures):.2f} µs (min {min(figures):.2f})")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n", 1)[0])
    parser.add_argument("--messages", type=int, default=200_000)
    parser.add_argument("--rounds", type=int, default=5)
    uvloop.run(main(parser.parse_args()))
