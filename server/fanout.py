"""Writing frames to many connections cheaply, in commit order.

A server-to-client WebSocket frame is never masked and we use no extension, so one change's
`STATE` frame is the same bytes for every connection: it is encoded once and the bytes are
written to each transport. The frames of one group commit are gathered per connection and
written with one call each (an `ACK` and its broadcast leave together). Nothing here awaits:
a connection that does not read only grows its own buffer (the sweeper drops it past a
limit), it never slows the others.
"""

from __future__ import annotations

import struct
from typing import Any

from websockets.protocol import State

TEXT_FIN = 0x81
OPEN = State.OPEN


def text_frame(payload: bytes) -> bytes:
    """An unmasked, final text frame carrying `payload` (UTF-8 JSON)."""
    size = len(payload)
    if size < 126:
        return bytes((TEXT_FIN, size)) + payload
    if size < 65_536:
        return struct.pack("!BBH", TEXT_FIN, 126, size) + payload
    return struct.pack("!BBQ", TEXT_FIN, 127, size) + payload


def write_now(ws: Any, data: bytes) -> bool:
    """Write already-framed bytes to an open connection; False when it is not open."""
    transport = ws.transport
    if ws.protocol.state is not OPEN or transport is None or transport.is_closing():
        return False
    if ws.send_in_progress is not None:
        return False  # never interleave with a fragmented message (we never send one)
    transport.write(data)
    return True


class Outbox:
    """Frames gathered per connection during one group commit, written by `flush`."""

    __slots__ = ("_frames",)

    def __init__(self) -> None:
        self._frames: dict[Any, list[bytes]] = {}

    def add(self, conn: Any, payload: bytes) -> None:
        """Queue one frame (its JSON payload) for `conn` (anything with a `.ws`)."""
        queued = self._frames.get(conn)
        if queued is None:
            self._frames[conn] = [text_frame(payload)]
        else:
            queued.append(text_frame(payload))

    def fanout(self, conns: Any, payload: bytes) -> int:
        """Queue the same frame for every connection in `conns`; return how many."""
        frame = text_frame(payload)
        count = 0
        frames = self._frames
        for conn in conns:
            queued = frames.get(conn)
            if queued is None:
                frames[conn] = [frame]
            else:
                queued.append(frame)
            count += 1
        return count

    def flush(self) -> None:
        """Write everything queued: one write per connection."""
        for conn, frames in self._frames.items():
            write_now(conn.ws, frames[0] if len(frames) == 1 else b"".join(frames))
        self._frames.clear()
