"""Pure RFC 6455 helpers for the raw client (no sockets here).

The idle check needs a client that never answers pings, which the websockets client always
does; so the suite can speak the framing itself: build the upgrade request, encode masked
client frames, decode server frames from a byte buffer.
"""

from __future__ import annotations

import base64
import os
import struct
from dataclasses import dataclass

try:
    from websockets.speedups import apply_mask
except ImportError:  # pragma: no cover  (websockets built without its C extension)
    from websockets.utils import apply_mask

OP_CONT, OP_TEXT, OP_BINARY, OP_CLOSE, OP_PING, OP_PONG = 0x0, 0x1, 0x2, 0x8, 0x9, 0xA


def upgrade_request(host: str, port: int, path: str, key: bytes | None = None) -> bytes:
    """An HTTP/1.1 WebSocket upgrade request for `path`."""
    nonce = base64.b64encode(key if key is not None else os.urandom(16)).decode()
    lines = [
        f"GET {path} HTTP/1.1",
        f"Host: {host}:{port}",
        "Upgrade: websocket",
        "Connection: Upgrade",
        f"Sec-WebSocket-Key: {nonce}",
        "Sec-WebSocket-Version: 13",
        "",
        "",
    ]
    return "\r\n".join(lines).encode()


def status_code(response_head: bytes) -> int:
    """The status code of an HTTP response head (`HTTP/1.1 101 ...`); 0 when unreadable."""
    first = response_head.split(b"\r\n", 1)[0].split()
    if len(first) >= 2 and first[1].isdigit():
        return int(first[1])
    return 0


def encode_frame(opcode: int, payload: bytes, mask: bytes | None = None, fin: bool = True) -> bytes:
    """A masked client frame."""
    mask = mask if mask is not None else os.urandom(4)
    head = bytes([(0x80 if fin else 0) | opcode])
    n = len(payload)
    if n < 126:
        head += bytes([0x80 | n])
    elif n < 1 << 16:
        head += bytes([0x80 | 126]) + struct.pack("!H", n)
    else:
        head += bytes([0x80 | 127]) + struct.pack("!Q", n)
    return head + mask + apply_mask(payload, mask)


@dataclass(frozen=True)
class Frame:
    """A decoded frame."""

    opcode: int
    payload: bytes
    fin: bool = True

    def close_code(self) -> int | None:
        """The status code of a close frame (None when it carries none)."""
        if self.opcode != OP_CLOSE or len(self.payload) < 2:
            return None
        code: int = struct.unpack("!H", self.payload[:2])[0]
        return code


def length_field(buf: bytes, pos: int) -> tuple[int, int]:
    """For the frame header at `buf[pos]`: where its length field ends (the masking key, if
    any, comes next) and the payload length. The buffer may be short: the length read is
    then garbage, and the caller's check that the whole frame is there fails."""
    length = buf[pos + 1] & 0x7F
    start = pos + 2
    if length == 126:
        length = int.from_bytes(buf[start : start + 2])
        start += 2
    elif length == 127:
        length = int.from_bytes(buf[start : start + 8])
        start += 8
    return start, length


def decode_frame(buf: bytes) -> tuple[Frame | None, int]:
    """Decode one frame from the start of `buf`: (frame, bytes used) or (None, 0) if incomplete."""
    if len(buf) < 2:
        return None, 0
    b0, b1 = buf[0], buf[1]
    n = b1 & 0x7F
    pos = 2
    if n == 126:
        if len(buf) < 4:
            return None, 0
        n = struct.unpack("!H", buf[2:4])[0]
        pos = 4
    elif n == 127:
        if len(buf) < 10:
            return None, 0
        n = struct.unpack("!Q", buf[2:10])[0]
        pos = 10
    mask = b""
    if b1 & 0x80:
        if len(buf) < pos + 4:
            return None, 0
        mask = buf[pos : pos + 4]
        pos += 4
    if len(buf) < pos + n:
        return None, 0
    payload = buf[pos : pos + n]
    if mask:
        payload = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
    return Frame(opcode=b0 & 0x0F, payload=payload, fin=bool(b0 & 0x80)), pos + n
