"""Fixtures for the legacy server's tests: an in-process server on port 0 and JSON clients."""

from __future__ import annotations

import asyncio
import itertools
import json
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from legacy.faults import parse_faults
from legacy.service import Config, LegacyServer
from stateshift.tokens import mint_token
from tests.support import TEST_SECRET, timeout


def token(
    sub: str = "alice", role: str = "player", games: Sequence[str] = ("*",), **kw: Any
) -> str:
    """A token signed with the test secret."""
    return mint_token(TEST_SECRET, sub, role, games, **kw)


class Client:
    """A test client speaking JSON over one WebSocket connection."""

    def __init__(self, ws: ClientConnection) -> None:
        self.ws = ws
        self._ids = itertools.count(1)
        self.connected: dict[str, Any] = {}  # the CONNECTED answer, when opened connected

    async def send(self, type_: str, **fields: Any) -> str:
        """Send a message with a fresh id; return the id."""
        mid = f"m{next(self._ids)}"
        await self.ws.send(json.dumps({"type": type_, "id": mid, **fields}))
        return mid

    async def recv(self) -> dict[str, Any]:
        """The next frame, decoded (fails the test if none comes in time)."""
        frame = await asyncio.wait_for(self.ws.recv(), timeout())
        message: dict[str, Any] = json.loads(frame)
        return message

    async def ask(self, type_: str, **fields: Any) -> dict[str, Any]:
        """Send a message and return the next frame, checking it answers the message."""
        mid = await self.send(type_, **fields)
        answer = await self.recv()
        assert answer.get("re") == mid, answer
        return answer

    async def close_code(self) -> int | None:
        """Read (and drop) frames until the server closes the connection; return the close code."""

        async def drain() -> None:
            try:
                while True:
                    await self.ws.recv()
            except ConnectionClosed:
                pass

        await asyncio.wait_for(drain(), timeout())
        return self.ws.close_code


Start = Callable[..., Awaitable[LegacyServer]]
Open = Callable[..., Awaitable[Client]]


@pytest.fixture
def log_path(tmp_path: Path) -> Path:
    return tmp_path / "legacy.jsonl"


@pytest.fixture
async def start(log_path: Path) -> AsyncIterator[Start]:
    """Start in-process legacy servers (port 0, the test log); stopped at teardown."""
    servers: list[LegacyServer] = []

    async def starter(*faults: str, **settings: Any) -> LegacyServer:
        config = replace(
            Config(data=log_path, secret=TEST_SECRET, port=0),
            faults=parse_faults(faults),
            **settings,
        )
        server = LegacyServer(config)
        await server.start()
        servers.append(server)
        return server

    yield starter
    for server in servers:
        await server.stop()


@pytest.fixture
async def server(start: Start) -> LegacyServer:
    """A healthy legacy server."""
    return await start()


@pytest.fixture
async def open_client() -> AsyncIterator[Open]:
    """Open clients: `await open_client(server, path, sub=…, role=…)` CONNECTs unless sub=None."""
    clients: list[Client] = []

    async def opener(
        server: LegacyServer,
        path: str = "/v1/games/g1",
        *,
        sub: str | None = "alice",
        role: str = "player",
        expect: str = "CONNECTED",
    ) -> Client:
        # No flow control: a test may leave frames unread without stalling the closing handshake.
        ws = await connect(
            server.url + path, open_timeout=timeout(), ping_interval=None, max_queue=None
        )
        client = Client(ws)
        clients.append(client)
        if sub is not None:
            answer = await client.ask("CONNECT", token=token(sub, role))
            assert answer["type"] == expect, answer
            client.connected = answer
        return client

    yield opener
    for client in clients:
        await client.ws.close()
