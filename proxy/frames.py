"""websockets connections that hand each data frame to a callback, synchronously, with its
bytes as they travel on the wire, so that the relay can forward them without re-encoding.

websockets' receive path queues every frame in an assembler and wakes the task awaiting
`recv()` (one future and one task switch per frame), and its send path serializes (and, from
a client, masks) the frame again. A relay needs neither: a frame from the client is already
masked, which is what a server expects, and a frame from a server is unmasked, which is what
a client expects. So the connections below parse whole, final, simple data frames directly in
`data_received` and call `on_frame(is_text, payload, raw)`:

- `payload`: the message (unmasked, not decoded), for the relay to read;
- `raw`: the frame exactly as received, for the relay to write to the other side
  (`ClientSide`: masked, fit for a server; `UpstreamSide`: unmasked, fit for a client).

Whatever else arrives (a fragmented message, a 64-bit length, a frame split across reads,
control frames) goes through websockets' own parser as usual; its data messages reach the
same callback with `raw` re-encoded for the other side. websockets keeps the handshake,
pings and pongs, the size limit (1009), the closing handshake and its timeout.

The same technique serves the new server's connections (`server/connection.py`); what the
two share is in `stateshift.wsframes`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, ClassVar

from websockets.asyncio.client import ClientConnection
from websockets.asyncio.connection import Connection
from websockets.asyncio.server import ServerConnection
from websockets.frames import BINARY, CONT, PING, PONG, TEXT, Frame
from websockets.protocol import CLOSING, OPEN, Event

from stateshift.wsframes import Fragments, ParserWatch, TooManyFragments, take_simple_frames

#: `on_frame(is_text, payload, raw)`: one complete data message
FrameHandler = Callable[[bool, bytes, bytes], None]


class FrameFeed(Connection):
    """The shared part of `ClientSide` and `UpstreamSide` (not used on its own)."""

    #: frames received on this connection are masked (it is the server side)
    MASKED: ClassVar[bool]

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._on_frame: FrameHandler | None = None
        #: messages received before `attach` (nobody listened yet)
        self.early: list[tuple[bool, bytes, bytes]] = []
        self._fragments = Fragments()
        self._parser = ParserWatch()
        #: the peer sent something (a frame, a pong) since the relay last cleared this
        self.heard = False

    def attach(self, on_frame: FrameHandler) -> None:
        """Start delivering data messages to `on_frame`, first those already received."""
        self._on_frame = on_frame
        early, self.early = self.early, []
        for is_text, payload, raw in early:
            on_frame(is_text, payload, raw)

    def data_received(self, data: bytes) -> None:
        self.heard = True
        on_frame = self._on_frame
        if on_frame is not None and self._parser.between_frames(self.protocol):
            data = take_simple_frames(data, self.MASKED, self.protocol, on_frame)
            if not data:
                return
        self._parser.fed()
        super().data_received(data)

    def process_event(self, event: Event) -> None:
        if not isinstance(event, Frame):  # the opening handshake
            super().process_event(event)
            return
        opcode = event.opcode
        if opcode is TEXT or opcode is BINARY or opcode is CONT:
            try:
                message = self._fragments.add(event)
            except TooManyFragments:
                self.protocol.fail(1009, "too many fragments")
                self.send_data()
                return
            if message is not None:
                self._deliver_parsed(*message)
        elif opcode is PONG:
            self.acknowledge_pings(bytes(event.data))

    def _deliver_parsed(self, is_text: bool, payload: bytes) -> None:
        """A message websockets parsed: encoded again, as one frame, for the other side."""
        raw = Frame(TEXT if is_text else BINARY, payload).serialize(mask=self.MASKED, extensions=[])
        self._deliver(is_text, payload, raw)

    def _deliver(self, is_text: bool, payload: bytes, raw: bytes) -> None:
        if self._on_frame is None:
            self.early.append((is_text, payload, raw))
        else:
            self._on_frame(is_text, payload, raw)


class ClientSide(FrameFeed, ServerConnection):
    """A client's connection to the proxy (the proxy is its server: frames come masked)."""

    MASKED = True


class UpstreamSide(FrameFeed, ClientConnection):
    """The proxy's connection to an upstream server (frames come unmasked).

    `on_ping(data)`, when set, answers the server's pings instead of websockets (which
    answers at once): the relay answers the primary's once the client shows it is alive."""

    MASKED = False

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.on_ping: Callable[[bytes], None] | None = None
        answer_now = self.protocol.recv_frame

        def recv_frame(frame: Frame) -> None:
            on_ping = self.on_ping
            if frame.opcode is PING and on_ping is not None:
                on_ping(bytes(frame.data))  # the only thing websockets does with a ping: pong
            else:
                answer_now(frame)

        self.protocol.recv_frame = recv_frame  # type: ignore[method-assign]

    def answer_ping(self, data: bytes) -> None:
        """Answer a ping of the server now (if the connection is still open or closing)."""
        if self.protocol.state is OPEN or self.protocol.state is CLOSING:
            self.protocol.send_pong(data)
            self.send_data()
