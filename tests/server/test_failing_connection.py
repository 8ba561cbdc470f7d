"""A connection the new server has begun to fail processes nothing more.

A message of more than websockets' 4096 fragments is refused with 1009 ("too many
fragments"), as `recv()` would. The close was only scheduled, so what had arrived with it
was still handled: a HEARTBEAT sent right behind it was answered, and the refused message's
own last fragment, read as a message of its own, was answered `BAD_MESSAGE` (found by
`tests/proxy/test_transparency_differential.py`: the old server and the proxy close at once).
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from websockets.asyncio.messages import MAX_FRAGMENTS

from conformance import wire
from conformance.client import RawConn
from server.app import StateServer
from tests.proxy.conftest import start_new, token
from tests.support import timeout


@pytest.fixture
async def server(tmp_path: Path) -> AsyncIterator[StateServer]:
    server = await start_new(tmp_path)
    yield server
    await server.stop()


async def test_after_too_many_fragments_nothing_more_is_answered(server: StateServer):
    conn = await RawConn.open(f"{server.url}/v1/games/fragments", timeout())
    try:
        await conn.send_text(json.dumps({"type": "CONNECT", "id": "c", "token": token("ann")}))
        connected = await conn.next_frame(timeout())
        assert connected is not None
        assert json.loads(connected.payload)["type"] == "CONNECTED"
        # one write: the refused message (MAX_FRAGMENTS + 1 fragments), then a heartbeat
        fragments = [wire.encode_frame(wire.OP_TEXT, b"{", fin=False)]
        fragments += [wire.encode_frame(0x0, b" ", fin=False)] * (MAX_FRAGMENTS - 1)
        fragments.append(wire.encode_frame(0x0, b"}"))
        beat = json.dumps({"type": "HEARTBEAT", "id": "h"}).encode()
        conn.writer.write(b"".join(fragments) + wire.encode_frame(wire.OP_TEXT, beat))
        await conn.writer.drain()
        code, frames, _ = await conn.wait_close(timeout())
        assert code == 1009
        assert [json.loads(f.payload) for f in frames] == []
    finally:
        conn.close()
