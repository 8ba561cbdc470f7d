"""Real clients through the mirroring proxy: Node's `ws` package, and stateshift's static
page in headless Chromium (Debian's, driven by playwright-core) across a flip to the new server.

The clients are Node programs next to this file (`ws_client.mjs`, `browser.mjs`; `npm ci
--prefix tests/clients` installs their pinned packages, `scripts/test.sh` does it). They run
as asyncio subprocesses: the servers and the proxy live in this test's event loop, which must
never block.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import tempfile
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import pytest

from compare.admin import AdminClient
from demo.stack import StaticSite
from proxy.route import Route
from stateshift.tokens import mint_token
from tests.proxy.conftest import Stack, start_stack, token
from tests.support import ROOT, TEST_SECRET, timeout, wait_until

CLIENTS = ROOT / "tests" / "clients"
STATIC = ROOT / "stateshift" / "static"
CHROMIUM = Path(os.environ.get("STATESHIFT_CHROMIUM", "/usr/bin/chromium"))


@pytest.fixture
async def stack(tmp_path: Path) -> AsyncIterator[Stack]:
    """Old server primary, new server mirrored, the proxy with a tap, and its switchboard."""
    async with start_stack(tmp_path, switchboard=True) as stack:
        yield stack


@pytest.fixture
def node() -> str:
    """The `node` executable, with the clients' packages installed (no skipping: set-up's job)."""
    path = shutil.which("node")
    if path is None:
        pytest.fail("node is not installed (Node.js 20+); scripts/test.sh expects it on PATH")
    if not (CLIENTS / "node_modules" / "ws").is_dir():
        pytest.fail("the test clients' packages are missing: run `npm ci --prefix tests/clients`")
    return path


@pytest.fixture
def short_tmp() -> Iterator[Path]:
    """A temporary directory with a short path: Chromium's profile goes there (its singleton
    socket path must fit in a unix socket address, which pytest's tmp_path does not)."""
    with tempfile.TemporaryDirectory(prefix="stateshift-chromium-") as path:
        yield Path(path)


@pytest.fixture
def chromium(node: str) -> Path:
    if not CHROMIUM.exists():
        pytest.fail(f"{CHROMIUM} is missing: `apt-get install chromium` (scripts/test.sh does it)")
    return CHROMIUM


@pytest.fixture
def site() -> Iterator[str]:
    """`stateshift/static/` over HTTP on loopback (a thread: it never touches the event loop)."""
    static = StaticSite(STATIC)
    try:
        yield static.url.rstrip("/")
    finally:
        static.close()


class NodeClient:
    """A Node client program: JSON events on its stdout, JSON commands on its stdin."""

    def __init__(self, proc: asyncio.subprocess.Process, log: Path) -> None:
        self.proc = proc
        self.log = log

    @classmethod
    async def start(
        cls, node: str, script: str, *args: str, log: Path, tmpdir: Path | None = None
    ) -> NodeClient:
        env = dict(os.environ)
        if tmpdir is not None:
            env["TMPDIR"] = str(tmpdir)  # where playwright puts Chromium's profile
        with log.open("wb") as stderr:
            proc = await asyncio.create_subprocess_exec(
                node,
                str(CLIENTS / script),
                *args,
                stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE,
                stderr=stderr,
                cwd=CLIENTS,
                env=env,
            )
        return cls(proc, log)

    async def event(self, within: float | None = None) -> dict[str, Any]:
        """The next JSON line the program prints (fails with its stderr when it ends first)."""
        assert self.proc.stdout is not None
        async with asyncio.timeout(within if within is not None else timeout(40)):
            line = await self.proc.stdout.readline()
        if not line:
            await self.wait()
            raise AssertionError(
                f"the client exited ({self.proc.returncode}) without a word; stderr:\n"
                + self.log.read_text(errors="replace")
            )
        event: dict[str, Any] = json.loads(line)
        if event.get("event") == "error":
            raise AssertionError(f"the client failed: {event.get('message')}")
        return event

    async def command(self, cmd: str, expect: str) -> dict[str, Any]:
        """Send one command; return the event it answers with."""
        assert self.proc.stdin is not None
        self.proc.stdin.write(json.dumps({"cmd": cmd}).encode() + b"\n")
        await self.proc.stdin.drain()
        event = await self.event()
        assert event["event"] == expect, event
        return event

    async def wait(self) -> int:
        async with asyncio.timeout(timeout(30)):
            return await self.proc.wait()

    async def stop(self) -> None:
        """End the program if it still runs: SIGTERM (playwright closes Chromium), then KILL."""
        if self.proc.stdin is not None and not self.proc.stdin.is_closing():
            self.proc.stdin.close()
        if self.proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                self.proc.terminate()
            try:
                await self.wait()
            except TimeoutError:
                self.proc.kill()
                await self.proc.wait()


def processes_mentioning(marker: str) -> list[int]:
    """Pids whose command line contains `marker` (Chromium's processes name their profile)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes()
        except OSError:
            continue  # gone meanwhile, or not ours to read
        if marker.encode() in cmdline:
            found.append(int(entry.name))
    return found


async def game_state(url: str, game_id: str) -> dict[str, Any]:
    """A game's state read straight from one server (not through the proxy)."""
    async with AdminClient(url, mint_token(TEST_SECRET, "ops", "admin")) as admin:
        state = await admin.get_state(game_id)
    assert state is not None, f"{game_id} is missing on {url}"
    return state


async def both_states(stack: Stack, game_id: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """The game's state on the old and on the new server, once the shadow has caught up."""
    await wait_until(lambda: stack.proxy.order.idle(), what="the shadow to catch up")
    return await game_state(stack.old.url, game_id), await game_state(stack.new.url, game_id)


async def served_by(stack: Stack, re_id: str) -> list[str]:
    """The upstreams whose answer to `re_id` the proxy relayed to the client (from its tap)."""

    def relayed() -> list[str]:
        return [
            record.upstream
            for record in stack.recorder.records
            if record.direction == "upstream"
            and record.role == "primary"
            and record.msg is not None
            and record.msg.get("re") == re_id
        ]

    # The tap is read by a task of its own: the record may trail the client's answer.
    await wait_until(lambda: bool(relayed()), what=f"the tap record of the answer to {re_id}")
    return relayed()


async def test_node_ws_client_speaks_the_protocol_through_the_proxy(
    stack: Stack, node: str, tmp_path: Path
):
    client = await NodeClient.start(
        node,
        "ws_client.mjs",
        stack.proxy.url,
        "node-ws",
        token("nora"),
        log=tmp_path / "ws_client.stderr",
    )
    try:
        summary = await client.event()
        assert await client.wait() == 0, summary
    finally:
        await client.stop()
    assert summary["ok"] is True, summary
    assert summary["connected"] == {
        "player_id": "nora",
        "role": "player",
        "version": 1,
        "scores": {"nora": 0},
    }
    assert summary["ack"] == {"version": 2}
    assert summary["broadcast"]["version"] == 2
    assert summary["broadcast"]["state"]["scores"] == {"nora": 1}
    assert summary["frames"] == ["CONNECTED", "ACK", "STATE", "HEARTBEAT_ACK", "DISCONNECTED"]
    assert summary["close_code"] == 1000
    old, new = await both_states(stack, "node-ws")
    assert old["scores"] == new["scores"] == {"nora": 1}  # mirrored to the new server
    assert old["version"] == new["version"] == 2


async def test_browser_page_keeps_its_websocket_across_a_flip(
    stack: Stack, node: str, chromium: Path, site: str, tmp_path: Path, short_tmp: Path
):
    """The page joins through the proxy, clicks +1, the proxy flips to the new server under
    it, the page clicks again: same WebSocket (never closed), and the new server answered."""
    game = "browser-game"
    query = urlencode({"ws": stack.proxy.url, "game": game, "token": token("bea")})
    screenshot = tmp_path / "page.png"
    browser = await NodeClient.start(
        node,
        "browser.mjs",
        f"{site}/index.html?{query}",
        str(screenshot),
        log=tmp_path / "browser.stderr",
        tmpdir=short_tmp,
    )
    try:
        ready = (await browser.event(within=timeout(60)))["page"]
        assert ready["connection"] == "connected"
        assert (ready["player"], ready["role"], ready["game"]) == ("bea", "player", game)
        assert (ready["my_score"], ready["version"], ready["status"]) == (0, 1, "waiting")
        assert (ready["opens"], ready["closes"]) == (1, 0)

        first = (await browser.command("click", "clicked"))["page"]
        assert (first["my_score"], first["version"]) == (1, 2)
        assert await served_by(stack, first["last_ack"]["re"]) == ["old"]

        prepared = await stack.board.prepare(Route(primary="new"))
        await stack.board.commit(prepared.token)
        assert stack.proxy.route.primary == "new"
        assert [s.primary for s in stack.proxy.sessions.values()] == ["new"]  # the page's

        clicks = 1
        for _ in range(2):
            after = (await browser.command("click", "clicked"))["page"]
            clicks += 1
            assert after["my_score"] == clicks
            assert after["scores"] == {"bea": clicks}
            assert await served_by(stack, after["last_ack"]["re"]) == ["new"]

        bye = (await browser.command("quit", "bye"))["page"]
        assert await browser.wait() == 0
    finally:
        await browser.stop()
    assert (bye["opens"], bye["closes"]) == (1, 0)  # one WebSocket, never closed
    assert bye["connection"] == "connected"
    assert bye["version"] == 1 + clicks
    assert bye["problems"] == []  # no page errors, no console errors
    old, new = await both_states(stack, game)
    assert old["scores"] == new["scores"] == {"bea": clicks}
    assert old["version"] == new["version"] == 1 + clicks
    assert screenshot.stat().st_size > 0
    await wait_until(
        lambda: not processes_mentioning(str(short_tmp)), what="Chromium's processes to exit"
    )
