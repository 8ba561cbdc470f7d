"""Pass-through sessions (route not mirroring) are spliced: relayed as bytes, never parsed.

What the client sees must be exactly what the primary says directly, close codes included;
frames of any kind and size pass intact; either side ending ends the other; the proxy never
writes a frame of its own (a keepalive ping, a 1012) into a spliced stream.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from websockets.asyncio.client import ClientConnection, connect
from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.exceptions import ConnectionClosed
from websockets.frames import Frame, Opcode
from websockets.typing import Data

from legacy.service import LegacyServer
from server.app import StateServer
from tests.proxy.conftest import Client, ProxyUnderTest, start_proxy, stop_proxy, token
from tests.proxy.test_relay import scripted_session
from tests.support import timeout, wait_until


@dataclass
class Echo:
    """An upstream that answers every frame with the same frame (and records them)."""

    server: Server | None = None
    received: list[Data] = field(default_factory=list)
    #: close code each connection got from its peer, in the order they ended
    closes: list[int | None] = field(default_factory=list)
    pings_seen: int = 0

    @property
    def url(self) -> str:
        assert self.server is not None
        port = next(iter(self.server.sockets)).getsockname()[1]
        return f"ws://127.0.0.1:{port}"

    async def handle(self, ws: ServerConnection) -> None:
        assert ws.request is not None
        if ws.request.path == "/bye":
            await ws.close(4000, "upstream says bye")
        else:
            with contextlib.suppress(ConnectionClosed):
                async for message in ws:
                    self.received.append(message)
                    await ws.send(message)
        self.closes.append(ws.close_code)


@contextlib.asynccontextmanager
async def echo_server() -> AsyncIterator[Echo]:
    """An echo upstream on a free port, closed on the way out."""
    upstream = Echo()
    upstream.server = await serve(
        upstream.handle, "127.0.0.1", 0, max_size=None, compression=None, ping_interval=None
    )
    try:
        yield upstream
    finally:
        upstream.server.close()
        await upstream.server.wait_closed()


@pytest.fixture
async def echo() -> AsyncIterator[Echo]:
    async with echo_server() as upstream:
        yield upstream


@pytest.fixture
async def passthrough(
    tmp_path: Path, old_server: LegacyServer, new_server: StateServer
) -> AsyncIterator[ProxyUnderTest]:
    """The proxy with the old server primary, not mirroring: sessions are spliced."""
    under_test = await start_proxy(tmp_path, old_server.url, new_server.url, mirroring=False)
    yield under_test
    await stop_proxy(under_test)


@pytest.fixture
async def echo_proxy(tmp_path: Path, echo: Echo) -> AsyncIterator[ProxyUnderTest]:
    """A not-mirroring proxy whose primary is the echo upstream."""
    under_test = await start_proxy(
        tmp_path, echo.url, echo.url, mirroring=False, ping_interval=0.01
    )
    yield under_test
    await stop_proxy(under_test)


class PingCounter(ClientConnection):
    """A client connection that counts the pings it receives."""

    pings = 0

    def process_event(self, event: Any) -> None:
        if isinstance(event, Frame) and event.opcode is Opcode.PING:
            self.pings += 1
        super().process_event(event)


def sample(under_test: ProxyUnderTest, name: str, **labels: str) -> float:
    value = under_test.proxy.metrics.registry.get_sample_value(name, labels)
    return 0.0 if value is None else value


async def open_ws(url: str, **kwargs: Any) -> ClientConnection:
    return await connect(url, open_timeout=timeout(), proxy=None, compression=None, **kwargs)


async def test_a_spliced_session_is_what_the_primary_says_directly(
    passthrough: ProxyUnderTest, old_server: LegacyServer
):
    direct = await scripted_session(old_server.url, "direct-game")
    proxied = await scripted_session(passthrough.url, "proxied-game")
    assert proxied == direct
    assert proxied[1] == 1000  # after DISCONNECT
    assert len(proxied[0]) == 13
    # spliced, not relayed frame by frame
    assert sample(passthrough, "stateshift_proxy_spliced_connections_total") == 1
    frames = sample(
        passthrough,
        "stateshift_proxy_frames_total",
        direction="client",
        upstream="old",
        role="primary",
    )
    assert frames == 0
    assert sample(passthrough, "stateshift_proxy_spliced_bytes_total", direction="client") > 0
    assert sample(passthrough, "stateshift_proxy_spliced_bytes_total", direction="upstream") > 0


async def test_a_bad_token_gets_the_primarys_4401(passthrough: ProxyUnderTest):
    client = await Client.open(f"{passthrough.url}/v1/games/g1")
    answer = await client.request(type="CONNECT", id="c", token="forged")
    assert answer["code"] == "UNAUTHENTICATED"
    assert await client.closed() == 4401


async def test_a_too_big_frame_gets_the_primarys_1009(passthrough: ProxyUnderTest):
    client = await Client.open(f"{passthrough.url}/v1/games/g1")
    await client.request(type="CONNECT", id="c", token=token("alice"))
    await client.ws.send("x" * 70_000)
    assert await client.closed() == 1009


async def test_binary_and_large_text_frames_pass_intact(echo_proxy: ProxyUnderTest, echo: Echo):
    ws = await open_ws(f"{echo_proxy.url}/v1/games/g1", max_size=None)
    binary = bytes(range(256)) * 4
    large = "".join(chr(0x20 + n % 90) for n in range(60_000)) + "é€"  # 60 KB, multi-byte
    await ws.send(binary)
    assert await ws.recv() == binary
    await ws.send(large)
    assert await ws.recv() == large
    assert echo.received == [binary, large]
    await ws.close()
    assert ws.close_code == 1000


async def test_bulk_traffic_both_ways_is_relayed_in_order(echo_proxy: ProxyUnderTest, echo: Echo):
    """More than every buffer holds: the splice's flow control pauses and resumes reads."""
    ws = await open_ws(f"{echo_proxy.url}/v1/games/g1", max_size=None, max_queue=4)
    frames = [f"{n:05d}" + "y" * 60_000 for n in range(150)]

    async def send_all() -> None:
        for frame in frames:
            await ws.send(frame)

    sender = asyncio.create_task(send_all())
    got = []
    async with asyncio.timeout(timeout(30)):
        for _ in frames:
            got.append(await ws.recv())
        await sender
    assert got == frames
    assert echo.received == frames
    await ws.close()
    client_bytes = sample(echo_proxy, "stateshift_proxy_spliced_bytes_total", direction="client")
    assert client_bytes >= sum(len(f) for f in frames)


async def test_the_client_closing_first_closes_the_upstream(echo_proxy: ProxyUnderTest, echo: Echo):
    ws = await open_ws(f"{echo_proxy.url}/v1/games/g1")
    await ws.send("hello")
    assert await ws.recv() == "hello"
    await ws.close(4321, "client leaves")
    assert ws.close_code == 4321  # the upstream's echo of the client's close, relayed
    await wait_until(lambda: echo.closes == [4321], what="the upstream to see the close")
    proxy = echo_proxy.proxy
    await wait_until(lambda: not proxy.sessions, what="the proxy to forget the session")
    assert sample(echo_proxy, "stateshift_proxy_client_connections") == 0
    assert sample(echo_proxy, "stateshift_proxy_spliced_open") == 0
    gauge = "stateshift_proxy_upstream_connections"
    assert sample(echo_proxy, gauge, upstream="old", role="primary") == 0


async def test_a_client_vanishing_closes_the_upstream(echo_proxy: ProxyUnderTest, echo: Echo):
    ws = await open_ws(f"{echo_proxy.url}/v1/games/g1")
    await ws.send("hello")
    assert await ws.recv() == "hello"
    ws.transport.abort()
    await wait_until(lambda: echo.closes == [1006], what="the upstream connection to end")
    await wait_until(lambda: not echo_proxy.proxy.sessions, what="the session to end")


async def test_the_upstream_closing_first_gives_the_client_its_close(echo_proxy: ProxyUnderTest):
    ws = await open_ws(f"{echo_proxy.url}/bye")
    with pytest.raises(ConnectionClosed):
        async with asyncio.timeout(timeout()):
            await ws.recv()
    assert (ws.close_code, ws.close_reason) == (4000, "upstream says bye")
    await wait_until(lambda: not echo_proxy.proxy.sessions, what="the session to end")


async def test_the_proxy_writes_no_ping_into_a_spliced_stream(
    echo_proxy: ProxyUnderTest, echo: Echo
):
    """The proxy's server side pings every 10 ms here; a spliced session must not."""
    ws = await open_ws(f"{echo_proxy.url}/v1/games/g1", create_connection=PingCounter)
    assert isinstance(ws, PingCounter)
    (session,) = echo_proxy.proxy.sessions.values()
    assert session.client.keepalive_task is None
    loop = asyncio.get_running_loop()
    until = loop.time() + 0.2  # twenty ping intervals of traffic
    n = 0
    while loop.time() < until:
        n += 1
        await ws.send(f"m{n}")
        assert await ws.recv() == f"m{n}"
    assert ws.pings == 0
    await ws.close()
    assert ws.close_code == 1000


async def test_a_mirroring_proxy_still_pings(tmp_path: Path, echo: Echo):
    """Control for the test above: the same proxy, mirroring, does ping its clients."""
    under_test = await start_proxy(tmp_path, echo.url, echo.url, ping_interval=0.01)
    try:
        ws = await open_ws(f"{under_test.url}/v1/games/g1", create_connection=PingCounter)
        assert isinstance(ws, PingCounter)
        await wait_until(lambda: ws.pings > 0, what="a ping from the proxy")
        await ws.close()
    finally:
        await stop_proxy(under_test)


async def test_stopping_the_proxy_ends_spliced_sessions(tmp_path: Path, echo: Echo):
    under_test = await start_proxy(tmp_path, echo.url, echo.url, mirroring=False)
    ws = await open_ws(f"{under_test.url}/v1/games/g1")
    await ws.send("hello")
    assert await ws.recv() == "hello"
    async with asyncio.timeout(timeout()):
        await stop_proxy(under_test)
    with pytest.raises(ConnectionClosed):
        async with asyncio.timeout(timeout()):
            await ws.recv()
    await wait_until(lambda: len(echo.closes) == 1, what="the upstream connection to end")


async def test_without_a_clean_handover_a_session_is_relayed_frame_by_frame(
    passthrough: ProxyUnderTest, old_server: LegacyServer, monkeypatch: pytest.MonkeyPatch
):
    """The fallback when websockets already holds bytes: the same transcript, no splice."""
    monkeypatch.setattr("proxy.relay.can_splice", lambda client, up: False)
    direct = await scripted_session(old_server.url, "direct-game")
    assert await scripted_session(passthrough.url, "proxied-game") == direct
    assert sample(passthrough, "stateshift_proxy_spliced_connections_total") == 0
    frames = sample(
        passthrough,
        "stateshift_proxy_frames_total",
        direction="client",
        upstream="old",
        role="primary",
    )
    assert frames > 0
