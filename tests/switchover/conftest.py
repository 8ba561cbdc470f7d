"""Fixtures for switchover tests: old (legacy) and new servers in-process, proxies with their
comparator and switchboard, the CLI run in a worker thread against them (its own event loop,
as in production), and paced players that count their ACKs."""

from __future__ import annotations

import asyncio
import contextlib
import io
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
import pytest
from rich.console import Console
from typer.testing import CliRunner

from compare.admin import AdminClient
from compare.live import LiveComparison
from compare.rules import defaults
from compare.store import FindingStore
from legacy.service import LegacyServer
from proxy.admin import ControlPlane
from proxy.relay import MirrorProxy, ProxySettings
from proxy.route import Route
from proxy.state import ProxyState
from proxy.switch import Switchboard
from proxy.tap import Tap
from server.app import StateServer
from stateshift.control import ADMIN_TOKEN_ENV
from stateshift.tokens import mint_token
from switchover.cli import make_app
from tests.proxy.conftest import Client, start_legacy, start_new, token
from tests.support import TEST_SECRET, timeout

ADMIN = mint_token(TEST_SECRET, "migration-engineer", "admin")


@dataclass
class ProxyStack:
    """One proxy with its control plane, comparator and switchboard."""

    proxy: MirrorProxy
    control: ControlPlane
    live: LiveComparison
    board: Switchboard
    state: ProxyState

    @property
    def admin(self) -> str:
        return self.control.url

    def route(self) -> Route:
        """The proxy's current route (a call: it changes under the test's feet)."""
        return self.proxy.route

    async def history(self, limit: int = 50) -> list[dict[str, Any]]:
        return await self.state.history(limit)


@dataclass
class Outcome:
    """One CLI run: exit code, what it printed, its JSON document when --json."""

    code: int
    stdout: str
    stderr: str

    @property
    def doc(self) -> dict[str, Any]:
        return orjson.loads(self.stdout)


async def cli(*args: str, answer: str | None = None, width: int = 160) -> Outcome:
    """Run `stateshift switchover ARGS` in a thread (its own event loop, like a real CLI)."""
    out, err = io.StringIO(), io.StringIO()
    app = make_app(Console(file=out, width=width), Console(file=err, width=width))
    runner = CliRunner()
    result = await asyncio.to_thread(
        runner.invoke, app, list(args), env={ADMIN_TOKEN_ENV: ADMIN}, input=answer
    )
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise result.exception
    # typer's own usage errors go to its stderr; ours go to the err console
    return Outcome(result.exit_code, out.getvalue() + result.stdout, err.getvalue() + result.stderr)


@dataclass
class Stack:
    tmp_path: Path
    exits: contextlib.AsyncExitStack
    old: LegacyServer
    new: StateServer
    proxies: list[ProxyStack] = field(default_factory=list)

    async def add_proxy(self, new_url: str | None = None, **settings: Any) -> ProxyStack:
        """Another proxy (old server primary) in front of the old and new servers."""
        n = len(self.proxies)
        proxy_settings = ProxySettings(
            old_url=self.old.url,
            new_url=new_url or self.new.url,
            secret=TEST_SECRET,
            state_path=self.tmp_path / f"proxy{n}.db",
            port=0,
            admin_port=0,
            **settings,
        )
        state = ProxyState(proxy_settings.state_path)
        proxy = MirrorProxy(proxy_settings, state.load_route(Route()), tap=Tap())
        await proxy.start()
        self.exits.push_async_callback(proxy.stop)
        control = ControlPlane(proxy, state, TEST_SECRET, port=0)
        await control.start()
        self.exits.push_async_callback(control.stop)
        live = LiveComparison(
            proxy,
            control,
            defaults(),
            FindingStore(self.tmp_path / f"findings{n}.db"),
            sweep_interval=None,
            # Only a frame alone this long is an unpaired finding. These tests judge flips,
            # not pairing: a shadow answer that a loaded machine (the whole suite on 2 cores,
            # an fsync stall) delays by a second must not fail a readiness check.
            pair_timeout=timeout(10),
        )
        live.start()
        self.exits.push_async_callback(live.stop)
        board = Switchboard(proxy, control, state, defaults(), live.comparator)
        board.start()
        self.exits.push_async_callback(board.stop)
        stack = ProxyStack(proxy, control, live, board, state)
        self.proxies.append(stack)
        return stack


@pytest.fixture
async def stack(tmp_path: Path) -> AsyncIterator[Stack]:
    """Old and new servers, no proxy yet (`await stack.add_proxy()`)."""
    async with contextlib.AsyncExitStack() as exits:
        old = await start_legacy(tmp_path)
        exits.push_async_callback(old.stop)
        new = await start_new(tmp_path)
        exits.push_async_callback(new.stop)
        yield Stack(tmp_path, exits, old, new)


#: seconds between a player's rounds: two messages a round stays under the servers' rate
#: limit of 50 messages per second per connection (pacing, not a wait for an outcome)
PACE = 0.05


@dataclass
class Players:
    """Clients making score updates and heartbeats until stopped, counting their ACKs."""

    acked: dict[str, int]
    stop: asyncio.Event
    tasks: list[asyncio.Task[int | None]]

    def total(self) -> int:
        return sum(self.acked.values())

    async def finish(self) -> list[int | None]:
        """Stop; every player disconnects itself; their close codes."""
        self.stop.set()
        return list(await asyncio.wait_for(asyncio.gather(*self.tasks), timeout(30)))


async def player(
    url: str, game: str, name: str, acked: dict[str, int], stop: asyncio.Event, pace: float
) -> int | None:
    client = await Client.open(f"{url}/v1/games/{game}")
    await client.request(type="CONNECT", id="c", token=token(name))
    n = 0
    while not stop.is_set():
        n += 1
        wanted = f"u{n}"
        await client.send(type="STATE_UPDATE", id=wanted, updates={"score_deltas": {name: 1}})
        answer = await client.until(lambda frame: frame.get("re") == wanted)  # noqa: B023
        assert answer["type"] == "ACK", answer
        acked[name] += 1
        beat = f"h{n}"
        await client.send(type="HEARTBEAT", id=beat)
        answer = await client.until(lambda frame: frame.get("re") == beat)  # noqa: B023
        assert answer["type"] == "HEARTBEAT_ACK", answer
        client.frames.clear()
        await asyncio.sleep(pace)
    await client.request(type="DISCONNECT", id="bye")
    return await client.closed()


def start_players(url: str, games: int, per_game: int, pace: float = PACE) -> Players:
    names = {f"p{g}-{n}": f"game{g}" for g in range(games) for n in range(per_game)}
    acked = dict.fromkeys(names, 0)
    stop = asyncio.Event()
    tasks = [
        asyncio.create_task(player(url, game, name, acked, stop, pace))
        for name, game in names.items()
    ]
    return Players(acked, stop, tasks)


async def game_state(url: str, game_id: str) -> dict[str, Any]:
    async with AdminClient(url, ADMIN) as admin:
        state = await admin.get_state(game_id)
    assert state is not None, f"{game_id} missing on {url}"
    return state
