"""Fixtures for proxy tests: real upstream servers on loopback (the new server and the
reference old server, in-process or as subprocesses for crash faults), the proxy in-process,
and a small client that records transcripts."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
import pytest
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from legacy.faults import parse_faults
from legacy.service import Config, LegacyServer
from proxy.admin import ControlPlane
from proxy.relay import MirrorProxy, ProxySettings
from proxy.route import Route
from proxy.state import ProxyState
from proxy.tap import Tap, TapNotice, TapRecord
from server.app import ServerSettings, StateServer
from stateshift.tokens import mint_token
from tests.support import TEST_SECRET, timeout

#: fields that legitimately differ between runs and servers
VOLATILE = frozenset({"session_id", "updated_at", "server_time", "message"})


def normalise(frame: Any, game_ids: dict[str, str] | None = None) -> Any:
    """A frame without its volatile fields (game ids mapped to stable names)."""
    if isinstance(frame, dict):
        out = {}
        for key, value in frame.items():
            if key in VOLATILE:
                continue
            if key == "game_id" and game_ids is not None and isinstance(value, str):
                value = game_ids.setdefault(value, f"game{len(game_ids)}")
            out[key] = normalise(value, game_ids)
        return out
    if isinstance(frame, list):
        return [normalise(item, game_ids) for item in frame]
    return frame


async def start_new(tmp_path: Path, name: str = "new") -> StateServer:
    server = StateServer(ServerSettings(db=tmp_path / f"{name}.db", secret=TEST_SECRET, port=0))
    await server.start()
    return server


async def start_legacy(tmp_path: Path, *faults: str, name: str = "old") -> LegacyServer:
    server = LegacyServer(
        Config(
            data=tmp_path / f"{name}.jsonl", secret=TEST_SECRET, port=0, faults=parse_faults(faults)
        )
    )
    await server.start()
    return server


@dataclass
class Recorder:
    """A tap consumer that keeps every record (and notice) for assertions."""

    tap: Tap
    records: list[TapRecord] = field(default_factory=list)
    notices: list[TapNotice] = field(default_factory=list)
    task: asyncio.Task[None] | None = None

    async def run(self) -> None:
        while True:
            for item in await self.tap.batch():
                if isinstance(item, TapRecord):
                    self.records.append(item)
                else:
                    self.notices.append(item)

    def broadcasts(self, role: str, game_id: str) -> dict[int, dict[str, Any]]:
        """version -> state of every STATE broadcast seen from `role` for a game."""
        seen: dict[int, dict[str, Any]] = {}
        for record in self.records:
            msg = record.msg
            if (
                record.direction == "upstream"
                and record.role == role
                and msg is not None
                and msg.get("type") == "STATE"
                and "re" not in msg
                and msg.get("game_id") == game_id
            ):
                seen[msg["version"]] = msg["state"]
        return seen


@dataclass
class ProxyUnderTest:
    proxy: MirrorProxy
    control: ControlPlane
    recorder: Recorder
    state: ProxyState

    @property
    def url(self) -> str:
        return self.proxy.url


async def start_proxy(
    tmp_path: Path,
    old_url: str,
    new_url: str,
    primary: str = "old",
    mirroring: bool = True,
    **overrides: Any,
) -> ProxyUnderTest:
    settings = ProxySettings(
        old_url=old_url,
        new_url=new_url,
        secret=TEST_SECRET,
        state_path=tmp_path / "proxy-state.db",
        port=0,
        admin_port=0,
        primary=primary,
        **overrides,
    )
    state = ProxyState(settings.state_path)
    route = state.load_route(Route(primary=primary, mirroring=mirroring))
    tap = Tap()
    proxy = MirrorProxy(settings, route, tap=tap)
    await proxy.start()
    control = ControlPlane(proxy, state, TEST_SECRET, port=0)
    await control.start()
    recorder = Recorder(tap)
    recorder.task = asyncio.create_task(recorder.run())
    return ProxyUnderTest(proxy, control, recorder, state)


async def stop_proxy(under_test: ProxyUnderTest) -> None:
    await under_test.control.stop()
    await under_test.proxy.stop()
    if under_test.recorder.task is not None:
        under_test.recorder.task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await under_test.recorder.task


class Client:
    """A client that records every frame it receives and how the connection closed."""

    def __init__(self, ws: ClientConnection) -> None:
        self.ws = ws
        self.frames: list[dict[str, Any]] = []

    @classmethod
    async def open(cls, url: str, **kwargs: Any) -> Client:
        return cls(await connect(url, open_timeout=timeout(), proxy=None, **kwargs))

    async def send(self, **frame: Any) -> None:
        await self.ws.send(orjson.dumps(frame).decode())

    async def recv(self) -> dict[str, Any]:
        async with asyncio.timeout(timeout()):
            raw = await self.ws.recv()
        frame = orjson.loads(raw)
        self.frames.append(frame)
        return frame

    async def request(self, **frame: Any) -> dict[str, Any]:
        await self.send(**frame)
        return await self.recv()

    async def until(self, predicate: Callable[[dict[str, Any]], bool]) -> dict[str, Any]:
        while True:
            frame = await self.recv()
            if predicate(frame):
                return frame

    async def closed(self) -> int | None:
        """Read until the connection closes; return the close code."""
        with contextlib.suppress(ConnectionClosed):
            while True:
                await self.recv()
        return self.ws.close_code


def token(sub: str, role: str = "player", games: tuple[str, ...] = ("*",)) -> str:
    return mint_token(TEST_SECRET, sub, role, games)


@pytest.fixture
async def new_server(tmp_path: Path) -> AsyncIterator[StateServer]:
    server = await start_new(tmp_path)
    yield server
    await server.stop()


@pytest.fixture
async def old_server(tmp_path: Path) -> AsyncIterator[LegacyServer]:
    server = await start_legacy(tmp_path)
    yield server
    await server.stop()


@pytest.fixture
async def mirror(
    tmp_path: Path, old_server: LegacyServer, new_server: StateServer
) -> AsyncIterator[ProxyUnderTest]:
    """The proxy with the old server primary and the new server shadow."""
    under_test = await start_proxy(tmp_path, old_server.url, new_server.url)
    yield under_test
    await stop_proxy(under_test)
