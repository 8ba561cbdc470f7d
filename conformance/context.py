"""What a check gets: the server URL, the secret, the expected limits and connection helpers.

One `CheckContext` per check run: it gives the check unique game ids (so checks never
interfere and may run concurrently against one server) and closes every connection the
check opened when it ends.
"""

from __future__ import annotations

import secrets
from contextlib import AsyncExitStack
from typing import Any

from conformance import tokens
from conformance.client import Conn, HandshakeRefused, RawConn
from conformance.config import SuiteConfig
from conformance.registry import ConformanceFailure
from conformance.shapes import state_problems


class CheckContext:
    """Per-check access to the server under test."""

    def __init__(self, url: str, secret: str, config: SuiteConfig) -> None:
        self.base = url.rstrip("/")
        self.secret = secret
        self.config = config
        self.stack = AsyncExitStack()
        self.run_id = secrets.token_hex(4)
        self._n = 0

    async def aclose(self) -> None:
        """Close what the check opened."""
        await self.stack.aclose()

    # names

    def game_id(self, prefix: str = "cf") -> str:
        """A game id no other check (or run) uses."""
        self._n += 1
        return f"{prefix}-{self.run_id}-{self._n}-{secrets.token_hex(3)}"

    def game_url(self, game_id: str) -> str:
        """`ws://HOST:PORT/v1/games/{game_id}`."""
        return f"{self.base}/v1/games/{game_id}"

    @property
    def admin_url(self) -> str:
        """`ws://HOST:PORT/v1/admin`."""
        return f"{self.base}/v1/admin"

    # tokens

    def token(
        self, sub: str = "alice", role: str = "player", games: Any = ("*",), ttl: float = 3600.0
    ) -> str:
        """A valid HS256 token signed with the shared secret."""
        return tokens.sign(tokens.claims(sub, role, games, ttl), self.secret)

    def sign(
        self, payload: dict[str, Any], algorithm: str = "HS256", secret: str | None = None
    ) -> str:
        """Sign arbitrary claims (for forged tokens)."""
        return tokens.sign(payload, self.secret if secret is None else secret, algorithm)

    # connections

    async def open(self, url: str) -> Conn:
        """Open a WebSocket (no CONNECT yet); it is closed when the check ends."""
        try:
            conn = await Conn.open(url, self.config.answer_timeout)
        except HandshakeRefused as exc:
            raise ConformanceFailure(
                f"expected an upgrade at {url}, got HTTP {exc.status}"
            ) from exc
        self.stack.push_async_callback(conn.aclose)
        return conn

    async def open_raw(self, url: str) -> RawConn:
        """A raw connection that never answers pings; dropped when the check ends."""
        conn = await RawConn.open(url, self.config.answer_timeout)
        self.stack.callback(conn.close)
        return conn

    async def handshake_status(self, path: str) -> int:
        """The HTTP status a WebSocket upgrade of `path` gets (101 when accepted)."""
        try:
            conn = await Conn.open(self.base + path, self.config.answer_timeout)
        except HandshakeRefused as exc:
            return exc.status
        await conn.aclose()
        return 101

    async def connect(self, conn: Conn, token: str) -> dict[str, Any]:
        """Send CONNECT and return the `CONNECTED` answer (checked for its fields)."""
        mid = await conn.send_msg("CONNECT", token=token)
        msg = await conn.recv_type("CONNECTED", re=mid, what=f"CONNECTED answering CONNECT {mid}")
        for field in ("session_id", "player_id", "role"):
            if not isinstance(msg.get(field), str):
                raise ConformanceFailure(f"CONNECTED.{field} should be a string: {msg!r}")
        return msg

    async def game(
        self,
        game_id: str,
        sub: str = "alice",
        role: str = "player",
        games: Any = ("*",),
    ) -> tuple[Conn, dict[str, Any]]:
        """Open the game's path and CONNECT: (connection, the CONNECTED state)."""
        conn = await self.open(self.game_url(game_id))
        connected = await self.connect(conn, self.token(sub, role, games))
        state = connected.get("state")
        problems = state_problems(state, game_id)
        if problems:
            raise ConformanceFailure(f"CONNECTED.state for {game_id}: {'; '.join(problems)}")
        assert isinstance(state, dict)
        return conn, state

    async def admin(self, sub: str = "ops") -> Conn:
        """An authenticated admin connection."""
        conn = await self.open(self.admin_url)
        await self.connect(conn, self.token(sub, "admin"))
        return conn

    async def new_game(self, *players: str) -> tuple[str, list[Conn], dict[str, Any]]:
        """A fresh game joined by `players` in order (join broadcasts consumed).

        Returns (game id, one connection per player, the last CONNECTED state).
        """
        game_id = self.game_id()
        conns: list[Conn] = []
        state: dict[str, Any] = {}
        for player in players or ("alice",):
            conn, state = await self.game(game_id, player)
            for earlier in conns:
                await expect_state(earlier, game_id, state["version"], "join broadcast")
            conns.append(conn)
        return game_id, conns, state


async def expect_state(
    conn: Conn, game_id: str, version: int, what: str = "STATE broadcast", re: Any = ...
) -> dict[str, Any]:
    """The next message must be `STATE` of `game_id` at `version` (a broadcast: no `re`)."""
    msg = await conn.recv(what=f"{what} (STATE of {game_id} at version {version})")
    if msg.get("type") != "STATE":
        raise ConformanceFailure(f"expected {what} (STATE version {version}), got {msg!r}")
    if re is ...:
        if "re" in msg:
            raise ConformanceFailure(f"a STATE broadcast must not carry `re`: {msg!r}")
    elif msg.get("re") != re:
        raise ConformanceFailure(f"expected STATE with re={re!r}, got {msg!r}")
    problems = state_problems(msg.get("state"), game_id)
    if msg.get("game_id") != game_id:
        problems.append(f"STATE.game_id is {msg.get('game_id')!r}, expected {game_id!r}")
    if msg.get("version") != version or isinstance(msg.get("version"), bool):
        problems.append(f"STATE.version is {msg.get('version')!r}, expected {version}")
    state = msg.get("state")
    if isinstance(state, dict) and state.get("version") != msg.get("version"):
        problems.append("STATE.version differs from STATE.state.version")
    if problems:
        raise ConformanceFailure(f"{what}: {'; '.join(problems)}")
    assert isinstance(state, dict)
    return state


async def update(conn: Conn, game_id: str, version: int, **fields: Any) -> dict[str, Any]:
    """Send an accepted STATE_UPDATE: expect `ACK {version}` then the `STATE` broadcast."""
    ack = await conn.request("STATE_UPDATE", "ACK", **fields)
    if ack.get("version") != version or isinstance(ack.get("version"), bool):
        raise ConformanceFailure(f"ACK.version: expected {version}, got {ack.get('version')!r}")
    return await expect_state(conn, game_id, version, "STATE broadcast after the ACK")


async def get_state(conn: Conn, game_id: str, /, **fields: Any) -> dict[str, Any]:
    """GET_STATE: check the answer's fields and return its state."""
    mid = await conn.send_msg("GET_STATE", **fields)
    msg = await conn.recv_type("STATE", re=mid, what=f"STATE answering GET_STATE {mid}")
    problems = state_problems(msg.get("state"), game_id)
    if msg.get("game_id") != game_id:
        problems.append(f"STATE.game_id is {msg.get('game_id')!r}, expected {game_id!r}")
    state = msg.get("state")
    if isinstance(state, dict) and state.get("version") != msg.get("version"):
        problems.append("STATE.version differs from STATE.state.version")
    if problems:
        raise ConformanceFailure(f"GET_STATE answer: {'; '.join(problems)}")
    assert isinstance(state, dict)
    return state
