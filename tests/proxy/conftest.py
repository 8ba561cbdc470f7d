"""Fixtures for proxy tests: real upstream servers on loopback (the new server and the
reference old server, in-process or as subprocesses for crash faults), the proxy in-process,
and a small client that records transcripts."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import orjson
import pytest
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from compare.live import LiveComparison
from compare.rules import defaults
from compare.store import FindingStore
from legacy.faults import parse_faults
from legacy.service import Config, LegacyServer
from proxy.admin import ControlPlane
from proxy.relay import MirrorProxy, ProxySettings
from proxy.route import Route
from proxy.state import ProxyState
from proxy.switch import Switchboard
from proxy.tap import Tap, TapNotice, TapRecord
from server.app import ServerSettings, StateServer
from stateshift.tokens import mint_token
from tests.support import TEST_SECRET, timeout

T = TypeVar("T")

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


async def beats_answered_in_order(client: Client, beats: list[str]) -> None:
    """Send one `HEARTBEAT` per id at once, then read their answers: in the order sent."""
    for beat in beats:
        await client.send(type="HEARTBEAT", id=beat)
    for beat in beats:
        assert (await client.until(lambda frame: "re" in frame))["re"] == beat


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
    settings = proxy_settings(
        tmp_path / "proxy-state.db", old_url, new_url, primary=primary, **overrides
    )
    state = ProxyState(settings.state_path)
    route = state.load_route(Route(primary=primary, mirroring=mirroring))
    tap = Tap()
    proxy = MirrorProxy(settings, route, tap=tap)
    await proxy.start()
    control = ControlPlane(proxy, state, TEST_SECRET, port=0)
    await control.start()
    recorder = start_recorder(tap)
    return ProxyUnderTest(proxy, control, recorder, state)


async def stop_proxy(under_test: ProxyUnderTest) -> None:
    await under_test.control.stop()
    await under_test.proxy.stop()
    await stop_recorder(under_test.recorder)


def proxy_settings(state_path: Path, old_url: str, new_url: str, **overrides: Any) -> ProxySettings:
    """Settings for a proxy under test: the test secret, free ports for relay and admin."""
    return ProxySettings(
        old_url=old_url,
        new_url=new_url,
        secret=TEST_SECRET,
        state_path=state_path,
        port=0,
        admin_port=0,
        **overrides,
    )


def start_recorder(tap: Tap) -> Recorder:
    """A `Recorder` reading `tap` in a task of its own."""
    recorder = Recorder(tap)
    recorder.task = asyncio.create_task(recorder.run())
    return recorder


async def stop_recorder(recorder: Recorder) -> None:
    if recorder.task is not None:
        recorder.task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await recorder.task


def _wired(piece: T | None, how: str) -> T:
    assert piece is not None, f"the stack was started without it: start_stack({how})"
    return piece


@dataclass
class Stack:
    """What `start_stack` started: the servers, the proxy with its control plane and state,
    and the optional pieces (reached through `recorder`, `live` and `board`)."""

    old: LegacyServer
    new: StateServer
    proxy: MirrorProxy
    control: ControlPlane
    state: ProxyState
    _recorder: Recorder | None = None
    _live: LiveComparison | None = None
    _board: Switchboard | None = None

    @property
    def recorder(self) -> Recorder:
        """Everything the proxy's tap saw."""
        return _wired(self._recorder, "tap=True, comparator=False")

    @property
    def live(self) -> LiveComparison:
        """The comparator, wired to the proxy and its control plane."""
        return _wired(self._live, "comparator=True")

    @property
    def board(self) -> Switchboard:
        """The switchboard (flip, rollback) on the control plane."""
        return _wired(self._board, "switchboard=True")


@contextlib.asynccontextmanager
async def start_stack(
    tmp_path: Path,
    *faults: str,
    primary: str = "old",
    tap: bool = True,
    comparator: bool = False,
    switchboard: bool = False,
    resync: bool = False,
    pair_timeout: float | None = None,
    **proxy_overrides: Any,
) -> AsyncIterator[Stack]:
    """The in-process stack, stopped (newest first) on exit: the old server (with `faults`),
    the new server, the proxy (`primary` first, mirroring; its route not persisted) and its
    control plane.

    - `tap`: the proxy has a tap; a `Recorder` reads it unless the comparator does.
    - `comparator`: a `LiveComparison` (no periodic sweep), resyncing diverged games when
      `resync`, with its own default pair timeout unless `pair_timeout` is given.
    - `switchboard`: a `Switchboard`, wired as `stateshift proxy` wires it (the comparator's
      figures and its resync, when there is a comparator).
    """
    async with contextlib.AsyncExitStack() as exits:
        old = await start_legacy(tmp_path, *faults)
        exits.push_async_callback(old.stop)
        new = await start_new(tmp_path)
        exits.push_async_callback(new.stop)
        settings = proxy_settings(tmp_path / "proxy.db", old.url, new.url, **proxy_overrides)
        state = ProxyState(settings.state_path)
        proxy = MirrorProxy(settings, Route(primary=primary), tap=Tap() if tap else None)
        await proxy.start()
        exits.push_async_callback(proxy.stop)
        control = ControlPlane(proxy, state, TEST_SECRET, port=0)
        await control.start()
        exits.push_async_callback(control.stop)
        stack = Stack(old, new, proxy, control, state)
        if comparator:
            timing = {} if pair_timeout is None else {"pair_timeout": pair_timeout}
            findings = FindingStore(tmp_path / "findings.db")
            live = LiveComparison(
                proxy, control, defaults(), findings, resync=resync, sweep_interval=None, **timing
            )
            live.start()
            exits.push_async_callback(live.stop)
            stack._live = live
        elif proxy.tap is not None:
            stack._recorder = start_recorder(proxy.tap)
            exits.push_async_callback(stop_recorder, stack._recorder)
        if switchboard:
            board = Switchboard(
                proxy,
                control,
                state,
                defaults(),
                stack._live.comparator if stack._live is not None else None,
                resync=stack._live.resync_now if stack._live is not None else None,
            )
            board.start()
            exits.push_async_callback(board.stop)
            stack._board = board
        yield stack


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


@contextlib.asynccontextmanager
async def one_per_game(url: str, games: int) -> AsyncIterator[list[Client]]:
    """`games` clients, each joined to a game of its own (`game-N`), closed on exit."""
    clients: list[Client] = []
    try:
        for n in range(games):
            client = await Client.open(f"{url}/v1/games/game-{n}")
            clients.append(client)
            joined = await client.request(type="CONNECT", id="c", token=token(f"p{n}"))
            assert joined["type"] == "CONNECTED", joined
        yield clients
    finally:
        for client in clients:
            await client.ws.close()


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
