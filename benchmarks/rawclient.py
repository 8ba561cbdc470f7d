"""Lean WebSocket clients for the benchmarks' load (`server_bench`, `proxy_bench`).

websockets' asyncio client costs a task, a future and its frame parser per message: with a
closed loop of 100 players, the client processes took a whole core of the 2 the servers
under test share with them. These clients write the handshake and their frames by hand
(conformance/wire.py) and are driven from `data_received`: the answer to one message sends
the next. They speak only what the benchmarks need: the handshake, `CONNECT`, text frames,
pings, the server's close.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable
from typing import Any, cast

import orjson

from benchmarks.common import mark_cpu, now_ns, wait_plan
from conformance import wire
from stateshift.tokens import mint_token

#: how a STATE broadcast's text begins (the server writes `type` first)
STATE_PREFIX = b'{"type":"STATE",'


class RawClient(asyncio.Protocol):
    """A lean client for the benchmarks' load: the WebSocket handshake and `CONNECT` written
    by hand (conformance/wire.py), then every segment read from the socket is timestamped as
    it arrives (`data_received`, before any parsing) and its complete frames go to
    `_message`. Pings are answered. No websockets per-frame parser, message queue or task
    wake-up: so that the clients sharing the 2 cores with the server cost little, and the
    figures measure the server more than the client library."""

    def __init__(self, token: str) -> None:
        self.token = token
        self.buffer = b""
        self.upgraded = False
        self.transport: asyncio.Transport | None = None
        self.connected: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.closed = asyncio.get_running_loop().create_future()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass

    def data_received(self, data: bytes) -> None:
        got = now_ns()
        buf = self.buffer + data if self.buffer else data
        if not self.upgraded:
            head, sep, rest = buf.partition(b"\r\n\r\n")
            if not sep:
                self.buffer = buf
                return
            if wire.status_code(head) != 101:
                self._fail(f"handshake refused: {head[:80]!r}")
                return
            self.upgraded = True
            assert self.transport is not None
            connect_msg = orjson.dumps({"type": "CONNECT", "id": "c", "token": self.token})
            self.transport.write(wire.encode_frame(wire.OP_TEXT, connect_msg))
            buf = rest
        # Server frames are never masked: a 2-byte header, then 2 or 8 bytes of length.
        pos, size = 0, len(buf)
        while size - pos >= 2:
            start, length = wire.length_field(buf, pos)
            end = start + length
            if end > size:
                break
            opcode = buf[pos] & 0x0F
            if opcode == wire.OP_TEXT:
                self._message(buf, start, end, got)
            elif opcode == wire.OP_PING and self.transport is not None:
                self.transport.write(wire.encode_frame(wire.OP_PONG, buf[start:end]))
            elif opcode == wire.OP_CLOSE and self.transport is not None:
                self.transport.close()
            pos = end
        self.buffer = buf[pos:] if pos < size else b""

    def _message(self, buf: bytes, start: int, end: int, got: int) -> None:
        """A text frame, `buf[start:end]`, read at `got` (ns); the base handles CONNECTED."""
        body = orjson.loads(buf[start:end])
        if body.get("re") == "c":
            if body.get("type") == "CONNECTED":
                if not self.connected.done():
                    self.connected.set_result(None)
            else:
                self._fail(f"CONNECT refused: {body}")

    def _fail(self, why: str) -> None:
        if not self.connected.done():
            self.connected.set_exception(RuntimeError(why))
        if self.transport is not None:
            self.transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.connected.done():
            self.connected.set_exception(RuntimeError(f"connection lost: {exc}"))
        if not self.closed.done():
            self.closed.set_result(None)


async def open_raw(url: str, game: str, make: Callable[[], RawClient]) -> RawClient:
    """Connect a `RawClient` to a game and wait until its `CONNECT` is accepted."""
    host, port = url.removeprefix("ws://").rsplit(":", 1)
    transport, proto = await asyncio.get_running_loop().create_connection(make, host, int(port))
    transport.write(wire.upgrade_request(host, int(port), f"/v1/games/{game}"))
    await asyncio.wait_for(proto.connected, 60)
    return proto


class RawPlayer(RawClient):
    """A closed-loop player driven from its own `data_received`: the answer to one message
    sends the next (no task, no future per message). Every `update_every`-th message is a
    `STATE_UPDATE` (a `score_deltas` on itself), the others `HEARTBEAT`s; frames are masked
    with a fixed per-connection key; broadcasts are skipped unparsed. Answers go to `tally`:
    `answered` (in the window), `latencies_ns`, `errors` (by code).

    Paced (`interval_ns` > 0): one message per interval at most, on a fixed schedule (the
    first at a random phase), still one at a time; a message whose slot passed while the
    previous one was unanswered leaves at once, and its latency counts from its slot, not
    from when it left (no coordinated omission: a slow answer delays the messages behind it,
    and their latencies show it)."""

    def __init__(
        self,
        token: str,
        player: str,
        update_every: int,
        tally: dict[str, Any],
        interval_ns: int = 0,
    ) -> None:
        super().__init__(token)
        self.interval_ns = interval_ns
        self.slot = 0
        self.update = b'","updates":{"score_deltas":{"' + player.encode() + b'":1}}}'
        self.update_every = update_every
        self.key = os.urandom(4)
        self.tally = tally
        self.seq = 0
        self.mid = ""
        self.sent = 0
        self.start = self.end = 0

    def begin(self, start: int, end: int) -> None:
        """Send the first message; count answers received in [start, end); stop at end."""
        self.start, self.end = start, end
        if self.interval_ns:
            self.slot = now_ns() + int.from_bytes(os.urandom(4)) % self.interval_ns
            self._next()
        else:
            self._send()

    def _next(self) -> None:
        """Paced: send at the current slot (now, when it has passed)."""
        delay = self.slot - now_ns()
        if delay > 0:
            asyncio.get_running_loop().call_later(delay / 1e9, self._send)
        else:
            self._send()

    def _send(self) -> None:
        self.sent = self.slot if self.interval_ns else now_ns()
        if self.sent >= self.end or self.transport is None or self.transport.is_closing():
            return
        self.seq += 1
        self.mid = str(self.seq)
        if self.seq % self.update_every == 0:
            payload = b'{"type":"STATE_UPDATE","id":"' + self.mid.encode() + self.update
        else:
            payload = b'{"type":"HEARTBEAT","id":"' + self.mid.encode() + b'"}'
        self.transport.write(wire.encode_frame(wire.OP_TEXT, payload, self.key))

    def _message(self, buf: bytes, start: int, end: int, got: int) -> None:
        if not self.connected.done():
            super()._message(buf, start, end, got)
            return
        if buf.startswith(STATE_PREFIX, start):
            return
        body = orjson.loads(buf[start:end])
        if body.get("re") != self.mid:
            return
        if body.get("type") == "ERROR":
            errors = self.tally["errors"]
            code = str(body.get("code"))
            errors[code] = errors.get(code, 0) + 1
        elif self.start <= got < self.end:
            self.tally["answered"] += 1
        if self.sent >= self.start and got < self.end:
            self.tally["latencies_ns"].append(got - self.sent)
        if self.interval_ns:
            self.slot += self.interval_ns
            self._next()
        else:
            self._send()


async def raw_closed_loop(
    urls: list[str],
    secret: str,
    clients: list[tuple[str, str]],
    update_every: int,
    *,
    ready: Any,
    go: Any,
    interval_ns: int = 0,
) -> dict[str, Any]:
    """A client process's share of a closed-loop load: `RawPlayer`s for `(game, player)`
    against each server of `urls` (the same players against each: the concurrent A/B),
    started at the plan's warm-up instant, measured over its window (paced at one message
    per `interval_ns` per player when it is not 0). Returns one tally per server
    (`per_server`) and the process's CPU time over the window (`cpu_s`)."""
    tallies: list[dict[str, Any]] = [
        {"answered": 0, "latencies_ns": [], "errors": {}} for _ in urls
    ]

    def player(game: str, name: str, tally: dict[str, Any]) -> Callable[[], RawClient]:
        token = mint_token(secret, name, "player", [game])
        return lambda: RawPlayer(token, name, update_every, tally, interval_ns)

    opened = [
        proto
        for url, tally in zip(urls, tallies, strict=True)
        for proto in await asyncio.gather(
            *(open_raw(url, game, player(game, n, tally)) for game, n in clients)
        )
    ]
    ready.put(("ready", len(opened)))
    warm, start, end = await wait_plan(go)
    cpu_marks: list[float] = []
    marker = asyncio.create_task(mark_cpu((start, end), cpu_marks))
    await asyncio.sleep(max(0.0, (warm - now_ns()) / 1e9))
    for proto in opened:
        cast(RawPlayer, proto).begin(start, end)
    await marker
    await asyncio.sleep(1.0)  # the last answers
    for proto in opened:
        if proto.transport is not None:
            proto.transport.close()
    return {"per_server": tallies, "cpu_s": cpu_marks[1] - cpu_marks[0]}


async def raw_closed_loop_one(
    url: str,
    secret: str,
    clients: list[tuple[str, str]],
    update_every: int,
    *,
    ready: Any,
    go: Any,
    interval_ns: int = 0,
) -> dict[str, Any]:
    """`raw_closed_loop` against one server: its tally, with the process's `cpu_s`."""
    result = await raw_closed_loop(
        [url], secret, clients, update_every, ready=ready, go=go, interval_ns=interval_ns
    )
    return {**result["per_server"][0], "cpu_s": result["cpu_s"]}
