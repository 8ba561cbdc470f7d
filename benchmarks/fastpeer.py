"""A fast protocol peer: the least server that answers `proxy_bench`'s load as the protocol
says, for measuring relays with upstreams that cost little.

The issue's reference figures for the proxy (nginx 16 µs of CPU per message, a naive Python
mirroring relay 41 µs) were measured with "fast protocol peers". With the real servers as
upstreams (`stateshift legacy`, `stateshift serve`: 60 to 90 µs of CPU per message each), the
2 cores are saturated by the servers, and every relay's CPU per message includes the price
of that contention (context switches, cold caches). `proxy_bench.py --peers fast` runs two
of these instead, so that the relays are measured as the reference figures were.

What it speaks: the upgrade handshake (no token check: the `sub` of the token is read, not
verified), `CONNECT` (creates the game, joins the player: a change, broadcast to the game's
other connections), `HEARTBEAT`, `STATE_UPDATE` (`scores` and `score_deltas` only; `ACK`
then the `STATE` broadcast to every connection on the game), `GET_STATE`, `DISCONNECT`,
pings, and the close handshake. Anything else is answered `ERROR INVALID_MESSAGE`. Frames
are unmasked with websockets' C helper; answers are single unfragmented text frames.

    python benchmarks/fastpeer.py [--host 127.0.0.1] [--port 0]

prints `listening on ws://HOST:PORT` and serves until SIGTERM. Loopback only.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import signal
import struct
import sys
import time
from pathlib import Path
from typing import Any, cast

import orjson
from websockets.utils import accept_key

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:  # run as a script: make `conformance` importable
    sys.path.insert(0, str(REPO))

from conformance import wire  # noqa: E402

OP_TEXT, OP_CLOSE, OP_PING, OP_PONG = 0x1, 0x8, 0x9, 0xA


def frame(opcode: int, payload: bytes) -> bytes:
    """An unmasked, final server frame."""
    n = len(payload)
    if n < 126:
        return bytes((0x80 | opcode, n)) + payload
    if n < 1 << 16:
        return bytes((0x80 | opcode, 126)) + struct.pack("!H", n) + payload
    return bytes((0x80 | opcode, 127)) + struct.pack("!Q", n) + payload


def now_text() -> str:
    """RFC 3339 UTC with milliseconds."""
    t = time.time()
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(t)) + f".{int(t * 1000) % 1000:03d}Z"


def token_subject(token: Any) -> str | None:
    """The `sub` claim of a JWT, read without checking the signature (a benchmark peer)."""
    if not isinstance(token, str) or token.count(".") != 2:
        return None
    body = token.split(".")[1]
    try:
        claims = orjson.loads(base64.urlsafe_b64decode(body + "=" * (-len(body) % 4)))
    except (ValueError, orjson.JSONDecodeError):
        return None
    sub = claims.get("sub") if isinstance(claims, dict) else None
    return sub if isinstance(sub, str) else None


class Game:
    def __init__(self, game_id: str) -> None:
        self.state: dict[str, Any] = {
            "game_id": game_id,
            "status": "waiting",
            "current_player": None,
            "scores": {},
            "timer": {},
            "settings": {},
            "version": 0,
            "updated_at": now_text(),
        }
        self.conns: list[Peer] = []

    def change(self) -> int:
        self.state["version"] += 1
        self.state["updated_at"] = now_text()
        return int(self.state["version"])

    def broadcast(self, but: Peer | None = None) -> None:
        state = self.state
        data = frame(
            OP_TEXT,
            orjson.dumps(
                {
                    "type": "STATE",
                    "game_id": state["game_id"],
                    "version": state["version"],
                    "state": state,
                }
            ),
        )
        for conn in self.conns:
            if conn is not but and conn.transport is not None:
                conn.transport.write(data)


GAMES: dict[str, Game] = {}
SESSIONS = iter(range(1, 1 << 62))


class Peer(asyncio.Protocol):
    """One connection: the handshake, then masked client frames."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.buffer = b""
        self.upgraded = False
        self.game: Game | None = None
        self.player: str | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)

    def connection_lost(self, exc: Exception | None) -> None:
        if self.game is not None and self in self.game.conns:
            self.game.conns.remove(self)
        self.transport = None

    def data_received(self, data: bytes) -> None:
        buf = self.buffer + data if self.buffer else data
        if not self.upgraded:
            head, sep, rest = buf.partition(b"\r\n\r\n")
            if not sep:
                self.buffer = buf
                return
            self._handshake(head)
            buf = rest
        pos, size = 0, len(buf)
        while size - pos >= 6:
            head1 = buf[pos]
            start, length = wire.length_field(buf, pos)
            end = start + 4 + length
            if end > size:
                break
            payload = wire.apply_mask(buf[start + 4 : end], buf[start : start + 4])
            pos = end
            self._frame(head1 & 0x0F, payload)
            if self.transport is None:
                return
        self.buffer = buf[pos:] if pos < size else b""

    def _handshake(self, head: bytes) -> None:
        assert self.transport is not None
        lines = head.decode("latin-1").split("\r\n")
        path = lines[0].split(" ")[1] if len(lines[0].split(" ")) > 1 else "/"
        headers = {
            k.strip().lower(): v.strip() for k, _, v in (h.partition(":") for h in lines[1:])
        }
        accept = accept_key(headers.get("sec-websocket-key", ""))
        self.transport.write(
            (
                "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
                f"Connection: Upgrade\r\nSec-WebSocket-Accept: {accept}\r\n\r\n"
            ).encode()
        )
        self.upgraded = True
        game_id = path.split("?")[0].removeprefix("/v1/games/")
        game = GAMES.get(game_id)
        if game is None:
            game = GAMES[game_id] = Game(game_id)
        self.game = game

    def _send(self, msg: dict[str, Any]) -> None:
        if self.transport is not None:
            self.transport.write(frame(OP_TEXT, orjson.dumps(msg)))

    def _frame(self, opcode: int, payload: bytes) -> None:
        transport = self.transport
        assert transport is not None
        if opcode == OP_PING:
            transport.write(frame(OP_PONG, payload))
        elif opcode == OP_CLOSE:
            transport.write(frame(OP_CLOSE, payload[:2] or b"\x03\xe8"))
            transport.close()
        elif opcode == OP_TEXT:
            try:
                msg = orjson.loads(payload)
            except orjson.JSONDecodeError:
                msg = None
            if isinstance(msg, dict):
                self._message(msg)
            else:
                self._send(
                    {
                        "type": "ERROR",
                        "re": None,
                        "code": "INVALID_MESSAGE",
                        "message": "not a JSON object",
                    }
                )

    def _message(self, msg: dict[str, Any]) -> None:
        kind, msg_id, game = msg.get("type"), msg.get("id"), self.game
        assert game is not None
        if kind == "HEARTBEAT":
            self._send({"type": "HEARTBEAT_ACK", "re": msg_id, "server_time": now_text()})
        elif kind == "STATE_UPDATE" and self.player is not None:
            updates = msg.get("updates")
            scores = game.state["scores"]
            if isinstance(updates, dict):
                for player, value in (updates.get("scores") or {}).items():
                    if player in scores and type(value) is int:
                        scores[player] = value
                for player, value in (updates.get("score_deltas") or {}).items():
                    if player in scores and type(value) is int:
                        scores[player] += value
            version = game.change()
            self._send({"type": "ACK", "re": msg_id, "version": version})
            game.broadcast()
        elif kind == "GET_STATE":
            state = game.state
            self._send(
                {
                    "type": "STATE",
                    "re": msg_id,
                    "game_id": state["game_id"],
                    "version": state["version"],
                    "state": state,
                }
            )
        elif kind == "CONNECT" and self.player is None:
            player = token_subject(msg.get("token")) or "anonymous"
            self.player = player
            state = game.state
            joined = player not in state["scores"]
            if joined:
                state["scores"][player] = 0
                state["timer"][player] = 60000
                game.change()
            self._send(
                {
                    "type": "CONNECTED",
                    "re": msg_id,
                    "session_id": f"s{next(SESSIONS)}",
                    "player_id": player,
                    "role": "player",
                    "state": state,
                }
            )
            if joined:
                game.broadcast(but=self)
            game.conns.append(self)
        elif kind == "DISCONNECT":
            self._send({"type": "DISCONNECTED", "re": msg_id})
            if self.transport is not None:
                self.transport.write(frame(OP_CLOSE, b"\x03\xe8"))
                self.transport.close()
        else:
            self._send(
                {
                    "type": "ERROR",
                    "re": msg_id,
                    "code": "INVALID_MESSAGE",
                    "message": "not served by the fast peer",
                }
            )


async def serve(host: str, port: int) -> None:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(Peer, host, port)
    bound = server.sockets[0].getsockname()[1]
    print(f"listening on ws://{host}:{bound}", flush=True)
    stop = loop.create_future()
    loop.add_signal_handler(signal.SIGTERM, stop.set_result, None)
    loop.add_signal_handler(signal.SIGINT, stop.set_result, None)
    await stop
    server.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n", 1)[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    args = parser.parse_args()
    if args.host not in ("127.0.0.1", "::1", "localhost"):
        parser.error("loopback only")
    try:
        import uvloop
    except ImportError:  # pragma: no cover
        asyncio.run(serve(args.host, args.port))
    else:
        uvloop.run(serve(args.host, args.port))


if __name__ == "__main__":
    main()
