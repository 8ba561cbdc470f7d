"""A websockets server connection that hands each complete data message to a callback,
synchronously, as soon as the frame parser produces it.

websockets' own receive path queues every frame in an assembler and wakes the task awaiting
`recv()`: one future and one task wake-up per message, before the server has done anything.
Here the message is handled inside `data_received`, so a message that needs no I/O (most of
them) is validated, applied and answered without a wake-up. websockets keeps everything
else: the handshake, control frames (pings, pongs, close), the frame size limit (1009), the
closing handshake and its timeout.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from typing import Any

from websockets.asyncio.server import ServerConnection
from websockets.exceptions import ConnectionClosed
from websockets.frames import BINARY, CONT, PONG, TEXT, Frame
from websockets.protocol import Event

from stateshift.wsframes import Fragments, ParserWatch, TooManyFragments, take_simple_frames

#: `on_message(is_text, payload, raw)`: one complete message (fragments joined, not decoded;
#: `raw`, the frame's bytes as received, is not needed by the server)
MessageHandler = Callable[[bool, bytes, bytes], None]


class MessageConnection(ServerConnection):
    """A `ServerConnection` whose data messages go to `on_message` instead of `recv()`
    (which is not used)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._on_message: MessageHandler | None = None
        #: messages received before `attach` (the handler task had not started yet)
        self._early: list[tuple[bool, bytes]] = []
        self._fragments = Fragments()
        self._failing: asyncio.Task[None] | None = None
        self._parser = ParserWatch()

    def attach(self, on_message: MessageHandler) -> None:
        """Start delivering messages to `on_message`, first those already received."""
        self._on_message = on_message
        early, self._early = self._early, []
        for is_text, payload in early:
            on_message(is_text, payload, b"")

    def data_received(self, data: bytes) -> None:
        # The common case, a segment of whole, final, masked text frames, is unmasked here
        # directly; websockets' generator-based parser (the same checks, one generator step
        # per header field) gets whatever else arrives, and everything while it is in the
        # middle of a frame.
        on_message = self._on_message
        if self._failing is not None:
            on_message = None  # being failed: websockets' parser gets it (to read the close)
        if on_message is not None and self._parser.between_frames(self.protocol):
            data = take_simple_frames(data, True, self.protocol, on_message)
            if not data:
                return
        self._parser.fed()
        super().data_received(data)

    def process_event(self, event: Event) -> None:
        if self.request is None:  # the opening handshake
            super().process_event(event)
            return
        assert isinstance(event, Frame)
        opcode = event.opcode
        if opcode is TEXT or opcode is BINARY or opcode is CONT:
            if self._failing is not None:
                return  # the connection is being failed: nothing after that is a message
            try:
                message = self._fragments.add(event)
            except TooManyFragments:
                self.fail_soon(1009, "too many fragments")
                return
            if message is not None:
                self._deliver(*message)
        elif opcode is PONG:
            self.acknowledge_pings(bytes(event.data))

    def _deliver(self, is_text: bool, payload: bytes) -> None:
        if self._on_message is None:
            self._early.append((is_text, payload))
        else:
            self._on_message(is_text, payload, b"")

    def fail_soon(self, code: int, reason: str) -> None:
        """Fail the connection (close frame, then TCP close) as `recv()` would on a message it
        cannot deliver (invalid UTF-8: 1007, too many fragments: 1009)."""
        # keep a reference: the loop holds tasks weakly
        self._failing = self.loop.create_task(self._fail(code, reason))

    async def _fail(self, code: int, reason: str) -> None:
        with contextlib.suppress(ConnectionClosed):
            async with self.send_context():
                self.protocol.fail(code, reason)
