"""Fixtures: the new server in-process on a real socket (port 0) and a real SQLite file."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import orjson
import pytest
from websockets.asyncio.client import ClientConnection, connect

from server.app import ServerSettings, StateServer
from stateshift.tokens import mint_token
from tests.support import TEST_SECRET, timeout


class Client:
    """A test client speaking JSON frames to one path."""

    def __init__(self, ws: ClientConnection) -> None:
        self.ws = ws

    async def send(self, **frame: Any) -> None:
        await self.ws.send(orjson.dumps(frame).decode())

    async def recv(self) -> dict[str, Any]:
        import asyncio

        async with asyncio.timeout(timeout()):
            raw = await self.ws.recv()
        frame = orjson.loads(raw)
        assert isinstance(frame, dict)
        return frame

    async def request(self, **frame: Any) -> dict[str, Any]:
        await self.send(**frame)
        return await self.recv()

    async def connect(self, sub: str, role: str = "player", games: tuple[str, ...] = ("*",)):
        token = mint_token(TEST_SECRET, sub, role, games)
        return await self.request(type="CONNECT", id="c", token=token)


OpenClient = Callable[..., Awaitable[Client]]


def settings(tmp_path: Path, **overrides: Any) -> ServerSettings:
    """Server settings for tests: a real file, port 0, short liveness limits."""
    values: dict[str, Any] = {
        "db": tmp_path / "state.db",
        "secret": TEST_SECRET,
        "port": 0,
        "connect_timeout": 2.0,
        "idle_timeout": 5.0,
        "ping_interval": 1.0,
    }
    values.update(overrides)
    return ServerSettings(**values)


@pytest.fixture
async def server(tmp_path: Path) -> AsyncIterator[StateServer]:
    srv = StateServer(settings(tmp_path))
    await srv.start()
    try:
        yield srv
    finally:
        await srv.stop()


@pytest.fixture
async def open_client(server: StateServer) -> AsyncIterator[OpenClient]:
    opened: list[ClientConnection] = []

    async def open_(path: str = "/v1/games/g1", url: str | None = None) -> Client:
        ws = await connect((url or server.url) + path, open_timeout=timeout())
        opened.append(ws)
        return Client(ws)

    yield open_
    for ws in opened:
        await ws.close()
