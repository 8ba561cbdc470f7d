"""What the new server's and the proxy's connections share to take whole, simple data frames
out of `data_received` before websockets' own parser (`server/connection.py`,
`proxy/frames.py`): when that is safe, and the bits of a frame header it looks at.

websockets parses frames with a generator, one step per header field. A connection may
read a segment itself only while that parser waits between two frames with nothing
buffered: then the segment's leading whole frames are its own, and what is left goes to
websockets as usual.
"""

from __future__ import annotations

from typing import Any

from websockets.protocol import OPEN, Protocol
from websockets.streams import StreamReader

try:
    from websockets.speedups import apply_mask
except ImportError:  # pragma: no cover  (built without the C extension)
    from websockets.utils import apply_mask

__all__ = ["FIN_BINARY", "FIN_TEXT", "apply_mask", "between_frames"]

#: first header byte of a final, unfragmented text or binary frame without RSV bits
FIN_TEXT, FIN_BINARY = 0x81, 0x82
#: where websockets' frame parser waits when it is between two frames with nothing buffered
BETWEEN_FRAMES = StreamReader.at_eof.__code__


def between_frames(protocol: Protocol) -> bool:
    """True when websockets' parser is waiting for a new frame with nothing buffered, in
    the OPEN state, with no fragmented message in progress and no extension."""
    if (
        protocol.state is not OPEN
        or protocol.current_size is not None
        or protocol.extensions
        or protocol.debug
        or protocol.reader.buffer
    ):
        return False
    generator: Any = protocol.parser
    while generator.gi_yieldfrom is not None:
        generator = generator.gi_yieldfrom
    return generator.gi_code is BETWEEN_FRAMES
