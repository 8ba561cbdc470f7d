"""A client that stopped reading, with more than websockets' high-water mark waiting for it,
does not hold the new server's graceful shutdown: its close is bounded, then aborted.

(websockets' `close()` waits for the write buffer to drain before its closing handshake's
timeout starts, with no limit; the server's sweeper leaves connections that are closing
alone, so without the bound the shutdown waited forever.)"""

from __future__ import annotations

import asyncio
from pathlib import Path

from server.app import ServerSettings, StateServer
from tests.proxy.conftest import Client, token
from tests.reliability.test_slow_client_proxy import BIG_SETTINGS, GAME, never_reading_client
from tests.support import TEST_SECRET, timeout, wait_until


async def test_a_client_that_does_not_read_does_not_hold_the_shutdown(tmp_path: Path):
    server = StateServer(
        ServerSettings(db=tmp_path / "new.db", secret=TEST_SECRET, port=0, rate=1e5, burst=100_000)
    )
    await server.start()
    stopped = False
    sloth = player = None
    try:
        player = await Client.open(f"{server.url}/v1/games/{GAME}")
        await player.request(type="CONNECT", id="c", token=token("busy"))
        answer = await player.request(
            type="STATE_UPDATE", id="big", updates={"settings": BIG_SETTINGS}
        )
        assert answer["type"] == "ACK", answer
        sloth = await never_reading_client(server.url, f"/v1/games/{GAME}", "sloth")
        await wait_until(
            lambda: any(c.claims is not None and c.claims.sub == "sloth" for c in server.conns),
            what="the sloth to join",
        )
        conn = next(c for c in server.conns if c.claims is not None and c.claims.sub == "sloth")

        def backed_up() -> bool:  # well above websockets' high-water mark, far below 8 MiB
            transport = conn.ws.transport
            return transport is not None and transport.get_write_buffer_size() > 256 * 1024

        n = 0
        while not backed_up():  # every broadcast carries the ~50 KB state
            n += 1
            answer = await player.request(
                type="STATE_UPDATE", id=f"u{n}", updates={"score_deltas": {"busy": 1}}
            )
            assert answer["type"] in ("ACK", "STATE"), answer
            assert n < 2_000, "the sloth's buffer never filled"
        async with asyncio.timeout(timeout()):
            await server.stop()
        stopped = True
        # the others got the restart close as usual, after the broadcasts they had not read
        assert await player.closed() == 1012
    finally:
        if sloth is not None:
            sloth.close()
        if player is not None:
            await player.ws.close()
        if not stopped:
            for c in list(server.conns):
                if c.ws.transport is not None:
                    c.ws.transport.abort()
            await server.stop()
