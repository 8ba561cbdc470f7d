"""What the new server's and the proxy's connections share to take whole, simple data frames
out of `data_received` before websockets' own parser (`server/connection.py`,
`proxy/frames.py`): when that is safe, and the bits of a frame header it looks at.

websockets parses frames with a generator, one step per header field. A connection may
read a segment itself only while that parser waits between two frames with nothing
buffered: then the segment's leading whole frames are its own, and what is left goes to
websockets as usual.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from websockets.asyncio.messages import MAX_FRAGMENTS
from websockets.frames import CONT, TEXT, Frame
from websockets.protocol import OPEN, Protocol
from websockets.streams import StreamReader

try:
    from websockets.speedups import apply_mask
except ImportError:  # pragma: no cover  (built without the C extension)
    from websockets.utils import apply_mask

__all__ = [
    "FIN_BINARY",
    "FIN_TEXT",
    "Fragments",
    "ParserWatch",
    "TooManyFragments",
    "apply_mask",
    "between_frames",
    "take_simple_frames",
]

#: first header byte of a final, unfragmented text or binary frame without RSV bits
FIN_TEXT, FIN_BINARY = 0x81, 0x82
#: where websockets' frame parser waits when it is between two frames with nothing buffered
BETWEEN_FRAMES = StreamReader.at_eof.__code__


def between_frames(protocol: Protocol) -> bool:
    """True when websockets' parser is waiting for a new frame with nothing buffered, in
    the OPEN state, with no fragmented message in progress and no extension."""
    if (
        protocol.state is not OPEN
        or protocol.extensions
        or protocol.debug
        or protocol.reader.buffer
    ):
        return False
    return at_frame_start(protocol)


def at_frame_start(protocol: Protocol) -> bool:
    """True when websockets' parser holds no part of a frame or of a fragmented message:
    it waits for a frame's first byte."""
    if protocol.current_size is not None:
        return False
    generator: Any = protocol.parser
    while generator.gi_yieldfrom is not None:
        generator = generator.gi_yieldfrom
    return generator.gi_code is BETWEEN_FRAMES


#: `deliver(is_text, payload, raw)`: one whole data frame (`raw`: its bytes as received)
Deliver = Callable[[bool, bytes, bytes], None]


def take_simple_frames(data: bytes, masked: bool, protocol: Protocol, deliver: Deliver) -> bytes:
    """Deliver the whole, final, unfragmented text and binary frames at the start of `data`
    (masked ones on a server's connection, unmasked ones on a client's), unmasked, within
    the protocol's size limit; stop at anything else, or when the protocol leaves OPEN (a
    handler closed the connection). Returns what was not taken (`data` itself when nothing
    was), for websockets' parser. Call it only while `between_frames` holds."""
    max_size = protocol.max_message_size
    size = len(data)
    header = 6 if masked else 2
    pos = 0
    while size - pos >= header:
        head1 = data[pos]
        head2 = data[pos + 1]
        if (head1 != FIN_TEXT and head1 != FIN_BINARY) or (head2 >= 0x80) != masked:
            break
        length = head2 & 0x7F
        start = pos + header
        if length == 126:
            if size - pos < header + 2:
                break
            length = int.from_bytes(data[pos + 2 : pos + 4], "big")
            start += 2
        elif length == 127:
            break
        end = start + length
        if (max_size is not None and length > max_size) or end > size:
            break
        payload = data[start:end]
        if masked:
            payload = apply_mask(payload, data[start - 4 : start])
        raw = data[pos:end] if pos or end != size else data
        pos = end
        deliver(head1 == FIN_TEXT, payload, raw)
        if protocol.state is not OPEN:
            break
    return data[pos:] if pos else data


class ParserWatch:
    """`between_frames`, remembered: once the fast path has taken a whole segment, the parser
    has been given no data since (only its `data_received` moves it), so it still waits
    between frames as long as the connection is OPEN; the walk down its generators is skipped.
    Whoever hands data to websockets' parser calls `fed()`."""

    __slots__ = ("idle",)

    def __init__(self) -> None:
        self.idle = False

    def between_frames(self, protocol: Protocol) -> bool:
        """True when a segment may be read by the fast path (see `between_frames`)."""
        if (self.idle and protocol.state is OPEN) or between_frames(protocol):
            self.idle = True
            return True
        return False

    def fed(self) -> None:
        """websockets' parser is given data: it may be anywhere afterwards."""
        self.idle = False


class TooManyFragments(Exception):
    """A message in more fragments than websockets' assembler accepts (fail it with 1009)."""


class Fragments:
    """Data frames that websockets' parser delivered, joined into messages as its assembler
    would (for the frames that did not take the fast path)."""

    __slots__ = ("parts", "text")

    def __init__(self) -> None:
        self.parts: list[bytes] = []
        self.text = False

    def add(self, frame: Frame) -> tuple[bool, bytes] | None:
        """Take a TEXT, BINARY or CONT frame: `(is_text, payload)` when it ends a message,
        else None. Raises `TooManyFragments` past websockets' limit."""
        if frame.opcode is CONT:
            if len(self.parts) >= MAX_FRAGMENTS:
                self.parts = []
                raise TooManyFragments
            self.parts.append(bytes(frame.data))
        else:
            self.parts = [bytes(frame.data)]
            self.text = frame.opcode is TEXT
        if not frame.fin:
            return None
        parts, self.parts = self.parts, []
        return self.text, parts[0] if len(parts) == 1 else b"".join(parts)
