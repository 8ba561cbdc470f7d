"""Mirrored sessions relay frames as received (`proxy/frames.py`): every shape of data
frame reaches the primary and the shadow as the same message, in order, and the client gets
exactly the primary's frames, whether the fast path (whole simple frames, forwarded as
received) or websockets' parser (fragments, 64-bit lengths, split frames) handled them."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from websockets.frames import Frame, Opcode

from legacy.service import LegacyServer
from tests.proxy.conftest import Client, ProxyUnderTest, start_proxy, stop_proxy, token
from tests.proxy.test_splice import Echo, echo_server, open_ws
from tests.reliability.test_slow_client_proxy import masked_text_frame, never_reading_client
from tests.support import timeout, wait_until


@pytest.fixture
async def two_echoes(tmp_path: Path) -> AsyncIterator[tuple[Echo, Echo, ProxyUnderTest]]:
    """A mirroring proxy whose primary (old) and shadow (new) are echo upstreams."""
    async with echo_server() as primary, echo_server() as shadow:
        under_test = await start_proxy(tmp_path, primary.url, shadow.url, mirroring=True)
        yield primary, shadow, under_test
        await stop_proxy(under_test)


async def test_every_shape_of_frame_reaches_both_upstreams_and_the_primarys_echo_returns(
    two_echoes: tuple[Echo, Echo, ProxyUnderTest],
):
    primary, shadow, under_test = two_echoes
    ws = await open_ws(f"{under_test.url}/v1/games/g1", max_size=None)
    messages: list[str | bytes] = [
        "small",
        b"\x00\x01binary",
        "x" * 200,  # 16-bit length
        "y" * 70_000,  # 64-bit length: websockets' parser, re-encoded for the upstream
        "é€ multi-byte",
        bytes(range(256)) * 300,  # 76,800 bytes binary
    ]
    for message in messages:
        await ws.send(message)
        assert await ws.recv() == message
    # a fragmented message goes through websockets' parser and arrives joined
    await ws.send(["frag", "mented", " text"])
    assert await ws.recv() == "fragmented text"
    # many frames in one write: the fast path splits them and forwards each
    burst = [f"burst {n}" for n in range(50)]
    transport = ws.transport
    transport.write(
        b"".join(Frame(Opcode.TEXT, m.encode()).serialize(mask=True, extensions=[]) for m in burst)
    )
    echoed = [await ws.recv() for _ in burst]
    assert echoed == burst
    expected = [*messages, "fragmented text", *burst]
    assert primary.received == expected
    await wait_until(lambda: len(shadow.received) >= len(expected), what="the shadow's copies")
    assert shadow.received == expected  # the same messages, in the same order
    await ws.close()
    assert ws.close_code == 1000


async def test_a_frame_split_across_many_writes_is_relayed_whole(
    two_echoes: tuple[Echo, Echo, ProxyUnderTest],
):
    """A frame arriving a few bytes at a time is not mistaken for several (the fast path
    only takes whole frames, websockets' parser the rest)."""
    primary, shadow, under_test = two_echoes
    ws = await open_ws(f"{under_test.url}/v1/games/g1")
    wire = Frame(Opcode.TEXT, b'{"type":"HEARTBEAT","id":"h1"}').serialize(mask=True, extensions=[])
    for start in range(0, len(wire), 3):
        ws.transport.write(wire[start : start + 3])
        await asyncio.sleep(0)  # let each piece be read alone (not needed for correctness)
    assert await asyncio.wait_for(ws.recv(), timeout()) == '{"type":"HEARTBEAT","id":"h1"}'
    await ws.send("after")
    assert await ws.recv() == "after"
    await wait_until(lambda: len(shadow.received) >= 2, what="the shadow's copies")
    assert primary.received == shadow.received == ['{"type":"HEARTBEAT","id":"h1"}', "after"]
    await ws.close()


class Burst:
    """An upstream that, told "go", sends COUNT big frames; told "bye", sends "last" once
    they are all sent, then closes with 4000."""

    COUNT, SIZE = 160, 32 * 1024

    def __init__(self) -> None:
        self.server: Any = None

    @property
    def url(self) -> str:
        port = next(iter(self.server.sockets)).getsockname()[1]
        return f"ws://127.0.0.1:{port}"

    async def handle(self, ws: Any) -> None:
        sender: asyncio.Task[None] | None = None
        async for message in ws:
            if message == "go":
                sender = asyncio.create_task(self.burst(ws))
            elif message == "bye" and sender is not None:
                await sender
                await ws.send("last")
                await ws.close(4000, "done")
                return

    async def burst(self, ws: Any) -> None:
        for n in range(self.COUNT):
            await ws.send(f"{n:04d}" + "x" * self.SIZE)


async def read_until_close(sock: socket.socket) -> tuple[list[bytes], int]:
    """Every data frame the proxy sent on a raw client socket, and the close code."""
    loop = asyncio.get_running_loop()
    buffer = b""
    frames: list[bytes] = []

    async def take(n: int) -> bytes:
        nonlocal buffer
        while len(buffer) < n:
            chunk = await loop.sock_recv(sock, 1 << 16)
            assert chunk, "the proxy closed the socket before a close frame"
            buffer += chunk
        out, buffer = buffer[:n], buffer[n:]
        return out

    async with asyncio.timeout(timeout(30)):
        while True:
            head = await take(2)
            length = head[1] & 0x7F
            if length == 126:
                length = int.from_bytes(await take(2))
            elif length == 127:
                length = int.from_bytes(await take(8))
            payload = await take(length)
            if head[0] & 0x0F == 0x8:
                return frames, int.from_bytes(payload[:2])
            frames.append(payload)


async def test_the_primarys_close_reaches_a_slow_client_after_every_frame_before_it(
    tmp_path: Path,
):
    """A client that does not keep up has the primary's frames queued for it; when the
    primary's close is read meanwhile, the client still gets every frame first, then the
    close (the close must not overtake the queue)."""
    from websockets.asyncio.server import serve

    burst = Burst()
    burst.server = await serve(burst.handle, "127.0.0.1", 0, compression=None, max_size=None)
    async with echo_server() as shadow:
        under_test = await start_proxy(tmp_path, burst.url, shadow.url, mirroring=True)
        try:
            sock = await never_reading_client(under_test.url, "/v1/games/g1", "alice")
            (session,) = under_test.proxy.sessions.values()
            loop = asyncio.get_running_loop()
            await loop.sock_sendall(sock, masked_text_frame(b"go"))
            await wait_until(lambda: bool(session.to_client), what="frames queued for the client")
            await loop.sock_sendall(sock, masked_text_frame(b"bye"))
            # The relay stopped reading the primary (backpressure); make it read on, so that
            # the primary's close arrives while frames are still queued for the client.
            primary = session.up["old"]
            assert primary is not None
            primary.transport.resume_reading()
            await wait_until(
                lambda: session.up.get("old") is None, what="the primary's close to be read"
            )
            assert session.to_client, "the queue drained before the close: nothing was tested"
            frames, code = await read_until_close(sock)
            expected = [f"{n:04d}".encode() + b"x" * Burst.SIZE for n in range(Burst.COUNT)]
            assert frames[-1] == b"last"
            assert frames[:-1] == expected
            assert code == 4000
            sock.close()
        finally:
            await stop_proxy(under_test)
            burst.server.close()
            await burst.server.wait_closed()


async def invalid_utf8_close(url: str) -> int | None:
    """Connect, then send a text frame that is not UTF-8 (written as bytes, as a broken
    client would); the close code the client ends with."""
    client = await Client.open(f"{url}/v1/games/g1")
    await client.request(type="CONNECT", id="c", token=token("alice"))
    wire = Frame(Opcode.TEXT, b'{"type":"HEARTBEAT","id":"\xff\xfe"}').serialize(
        mask=True, extensions=[]
    )
    client.ws.transport.write(wire)
    return await client.closed()


async def test_a_text_frame_that_is_not_utf8_gets_the_primarys_close(
    mirror: ProxyUnderTest, old_server: LegacyServer
):
    """The relay forwards frames without decoding them: the primary judges the text, and
    the client gets exactly the close it would get directly (never one the proxy made up)."""
    direct = await invalid_utf8_close(old_server.url)
    assert direct == 1007
    assert await invalid_utf8_close(mirror.url) == direct
