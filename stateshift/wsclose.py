"""Closing a websockets connection without waiting forever for a peer that does not read.

websockets' `close()` writes the close frame, then waits for the write buffer to drain below
its high-water mark before it starts the closing handshake's timeout: with no limit. A peer
that stopped reading with more than that buffered keeps `close()`, and whatever awaits it
(a session's end, a server's graceful shutdown), waiting forever. Used by the new server and
the proxy.
"""

from __future__ import annotations

import asyncio
from typing import Final

from websockets.asyncio.connection import Connection
from websockets.exceptions import ConnectionClosed

#: seconds the servers (the new one and the reference old one) give a close: the closing
#: handshake, or a peer that does not read (then the connection is aborted)
CLOSE_TIMEOUT: Final = 5.0


async def close_within(
    conn: Connection, seconds: float, code: int | None = 1000, reason: str = ""
) -> None:
    """Close `conn` with `code` (None: a close frame without a status code); if that takes
    longer than `seconds` (the peer does not read, or does not answer the close), abort the
    TCP connection."""
    try:
        async with asyncio.timeout(seconds):
            await conn.close(code, reason)  # type: ignore[arg-type]  # None is sent as such
    except TimeoutError:
        if conn.transport is not None:
            conn.transport.abort()
    except ConnectionClosed:
        pass
