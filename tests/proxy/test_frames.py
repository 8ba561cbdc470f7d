"""Mirrored sessions relay frames as received (`proxy/frames.py`): every shape of data
frame reaches the primary and the shadow as the same message, in order, and the client gets
exactly the primary's frames, whether the fast path (whole simple frames, forwarded as
received) or websockets' parser (fragments, 64-bit lengths, split frames) handled them."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from websockets.frames import Frame, Opcode

from tests.proxy.conftest import ProxyUnderTest, start_proxy, stop_proxy
from tests.proxy.test_splice import Echo, open_ws
from tests.support import timeout, wait_until


@contextlib.asynccontextmanager
async def echo_server() -> AsyncIterator[Echo]:
    from websockets.asyncio.server import serve

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
