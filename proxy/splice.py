"""Pass-through without WebSocket framing: once both handshakes are done, bytes, not frames.

A session that is not mirrored has nothing for the proxy to learn from its frames, and no
frame needs rewriting: frames from the client are already masked (what a server expects),
frames from the server are unmasked (what a client expects). So after both opening
handshakes the two TCP transports are handed to two small `asyncio.Protocol`s, one per
direction, that write what one side receives to the other, with flow control both ways
(a side whose write buffer fills stops the other side's reads), and close the other side
when one side ends. Close frames, pings and pongs pass through as bytes: close codes, size
limits and keepalive are the endpoints' own, and the proxy does no per-frame work at all.

websockets must then never write to those transports again: a frame written into a spliced
byte stream (a keepalive ping, a close frame) could land in the middle of a relayed frame.
Both of its connection objects are therefore told, at the splice, that their connection is
lost (`connection_lost`): they end in the CLOSED state, the server side's keepalive task is
cancelled, and nothing on them writes any more. Careful: `send()`/`close()` on such an object
aborts the transport (websockets' reaction to using a closed connection), which ends the
splice; to end a spliced session on purpose, call `end_splice`.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from websockets.asyncio.client import ClientConnection
from websockets.asyncio.connection import Connection
from websockets.asyncio.server import ServerConnection
from websockets.protocol import State

from proxy.metrics import SpliceTally
from stateshift.wsframes import at_frame_start

#: seconds a side that was told to close may take to flush before it is aborted
CLOSE_GRACE = 5.0


class _Pipe(asyncio.Protocol):
    """Reads one transport (`own`) and writes what it reads to the other (`peer`)."""

    __slots__ = ("bytes", "eof", "lost", "own", "peer", "splice", "stall", "write")

    def __init__(self, splice: Splice, own: asyncio.Transport, peer: asyncio.Transport) -> None:
        self.splice = splice
        self.own = own
        self.peer = peer
        self.write = peer.write
        #: bytes read from `own` (and written to `peer`)
        self.bytes = 0
        self.lost = False
        #: `own` half-closed (its FIN was passed on to `peer`)
        self.eof = False
        #: ends the splice if `own` stays unable to take more for the stall timeout
        self.stall: asyncio.TimerHandle | None = None

    def data_received(self, data: bytes) -> None:
        self.write(data)  # the whole hot path: one write, one addition
        self.bytes += len(data)

    def eof_received(self) -> bool | None:
        return self.splice.half_closed(self)

    def pause_writing(self) -> None:
        # `own`'s write buffer is full (it receives what `peer` sends): stop reading `peer`,
        # for a while: a side that never reads again ends the splice.
        if not self.peer.is_closing():
            self.peer.pause_reading()
        self.splice.stalled(self)

    def resume_writing(self) -> None:
        self.splice.unstalled(self)
        if not self.peer.is_closing():
            self.peer.resume_reading()

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        self.splice.side_lost(self)


class Splice:
    """Two transports joined byte for byte; `done` resolves when both are closed."""

    def __init__(
        self,
        client: asyncio.Transport,
        upstream: asyncio.Transport,
        tally: SpliceTally,
        stall_timeout: float | None = None,
        on_stall: Callable[[], None] | None = None,
    ) -> None:
        self.tally = tally
        self.stall_timeout = stall_timeout
        self.on_stall = on_stall
        self.done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        #: aborts of sides told to close that have not finished flushing yet
        self._timers: list[asyncio.TimerHandle] = []
        #: reads the client, writes the upstream (direction "client")
        self.from_client = _Pipe(self, client, upstream)
        #: reads the upstream, writes the client (direction "upstream")
        self.from_upstream = _Pipe(self, upstream, client)
        client.set_protocol(self.from_client)
        upstream.set_protocol(self.from_upstream)
        tally.opened(self)

    @property
    def client_bytes(self) -> int:
        return self.from_client.bytes

    @property
    def upstream_bytes(self) -> int:
        return self.from_upstream.bytes

    def stalled(self, pipe: _Pipe) -> None:
        """`pipe.own` stopped taking bytes: give it `stall_timeout` seconds to read again."""
        if self.stall_timeout is not None and pipe.stall is None:
            loop = asyncio.get_running_loop()
            pipe.stall = loop.call_later(self.stall_timeout, self._stall_expired)

    def unstalled(self, pipe: _Pipe) -> None:
        """`pipe.own` reads again."""
        if pipe.stall is not None:
            pipe.stall.cancel()
            pipe.stall = None

    def _stall_expired(self) -> None:
        if self.on_stall is not None:
            self.on_stall()
        self.abort()

    def half_closed(self, pipe: _Pipe) -> bool | None:
        """`pipe.own` sent its FIN: pass it on and keep relaying the other way (a client may
        shut down its side after its close frame and still read the answer), for at most
        CLOSE_GRACE seconds. True keeps `pipe.own` open for writing."""
        pipe.eof = True
        other = self.from_upstream if pipe is self.from_client else self.from_client
        peer = pipe.peer
        if other.eof or peer.is_closing() or not peer.can_write_eof():
            return None  # the transport closes itself; connection_lost closes the peer
        peer.write_eof()
        self._timers.append(asyncio.get_running_loop().call_later(CLOSE_GRACE, self.abort))
        return True

    def side_lost(self, pipe: _Pipe) -> None:
        """One side is gone: flush what is buffered for the other, then close it."""
        self._close(pipe.peer)
        self.unstalled(self.from_client)
        self.unstalled(self.from_upstream)
        if self.from_client.lost and self.from_upstream.lost and not self.done.done():
            for timer in self._timers:
                timer.cancel()
            self._timers.clear()
            self.tally.closed(self)
            self.done.set_result(None)

    def _close(self, transport: asyncio.Transport) -> None:
        if not transport.is_closing():
            transport.close()
            # a side that does not read must not keep the splice (and its buffer) forever
            loop = asyncio.get_running_loop()
            self._timers.append(loop.call_later(CLOSE_GRACE, transport.abort))

    def close(self) -> None:
        """End both sides (what is buffered is flushed first, for at most CLOSE_GRACE s)."""
        self._close(self.from_client.own)
        self._close(self.from_upstream.own)

    def abort(self) -> None:
        """End both sides now."""
        self.from_client.own.abort()
        self.from_upstream.own.abort()


def can_splice(client: ServerConnection, up: ClientConnection) -> bool:
    """Whether both connections are open with nothing read and not yet relayed.

    True right after the handshakes (nothing has run on the event loop since the client's
    handshake answer was written, and a server speaks only when spoken to); False would
    mean websockets already holds bytes or frames that the splice would lose, and the
    session is then relayed frame by frame instead."""
    for conn in (client, up):
        transport = conn.transport
        if (
            conn.protocol.state is not State.OPEN
            or transport.is_closing()
            or conn.protocol.reader.buffer
            or len(conn.recv_messages.frames)
            or getattr(conn, "early", None)  # proxy.frames connections: parsed, not relayed
            or not at_frame_start(conn.protocol)  # a frame's header read, its rest not yet
        ):
            return False
    return True


def _detach(conn: Connection) -> None:
    """Make websockets consider the connection lost: CLOSED state, keepalive cancelled,
    nothing buffered or written any more (its transport now belongs to the splice)."""
    conn.connection_lost(None)


async def splice(
    client: ServerConnection,
    up: ClientConnection,
    tally: SpliceTally,
    *,
    stall_timeout: float | None = None,
    on_stall: Callable[[], None] | None = None,
) -> None:
    """Relay bytes between the client and its upstream until both are closed.

    A side that does not read for `stall_timeout` seconds (its buffer stays full) ends the
    splice: the other side, paused meanwhile, would otherwise never see its own close.
    Call only when `can_splice(client, up)` and before any await after the handshakes."""
    joined = Splice(client.transport, up.transport, tally, stall_timeout, on_stall)
    _detach(client)
    _detach(up)
    try:
        await asyncio.shield(joined.done)
    except asyncio.CancelledError:
        joined.abort()
        raise


def end_splice(conn: Connection) -> bool:
    """Close a spliced session from its client or upstream connection; False if the
    connection is not spliced (then close it the usual way)."""
    pipe = conn.transport.get_protocol()
    if not isinstance(pipe, _Pipe):
        return False
    pipe.splice.close()
    return True
