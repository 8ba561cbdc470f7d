"""Thin I/O: the suite's connections to the server under test.

`Conn` wraps a websockets client connection with a reader task that queues every frame, so a
check can flood the server without a read/write deadlock and still see the close code.
`RawConn` speaks RFC 6455 by hand (see `wire`) for the one thing the websockets client will
not do: leave pings unanswered. Every wait is bounded; running out of time is a
`ConformanceFailure` saying what was awaited.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import time
from typing import Any
from urllib.parse import urlsplit

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from conformance import wire
from conformance.registry import ConformanceFailure
from stateshift.netloc import address

_ids = itertools.count(1)
_CLOSED = object()


def fresh_id(prefix: str = "m") -> str:
    """A message id unique within this process."""
    return f"{prefix}{next(_ids)}"


def describe(frame: Any) -> str:
    """A short printable form of a received frame, for failure messages."""
    text = frame if isinstance(frame, str) else repr(frame)
    return text if len(text) <= 300 else text[:300] + "…"


class HandshakeRefused(Exception):
    """The server answered the upgrade with an HTTP status other than 101."""

    def __init__(self, status: int) -> None:
        super().__init__(f"handshake refused with HTTP {status}")
        self.status = status


class Conn:
    """A client connection whose received frames are queued by a reader task."""

    def __init__(self, ws: ClientConnection, answer_timeout: float) -> None:
        self.ws = ws
        self.answer_timeout = answer_timeout
        self.queue: asyncio.Queue[Any] = asyncio.Queue()
        self.close_code: int | None = None
        self.closed = asyncio.Event()
        self._reader = asyncio.create_task(self._read())

    @classmethod
    async def open(cls, url: str, answer_timeout: float) -> Conn:
        """Open a connection (no compression: frame sizes on the wire are the payload sizes)."""
        try:
            ws = await connect(
                url,
                compression=None,
                proxy=None,
                ping_interval=None,  # the server pings; this client answers (automatic pongs)
                open_timeout=answer_timeout,
                close_timeout=answer_timeout,
                max_size=None,
                max_queue=None,
            )
        except InvalidStatus as exc:
            raise HandshakeRefused(exc.response.status_code) from exc
        return cls(ws, answer_timeout)

    async def _read(self) -> None:
        try:
            async for frame in self.ws:
                self.queue.put_nowait(frame)
        except ConnectionClosed:
            pass
        finally:
            rcvd = self.ws.protocol.close_rcvd
            self.close_code = rcvd.code if rcvd is not None else 1006
            self.closed.set()
            self.queue.put_nowait(_CLOSED)

    async def aclose(self) -> None:
        """Close politely and stop the reader (used on clean-up)."""
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self.ws.close(), self.answer_timeout)
        self._reader.cancel()
        with contextlib.suppress(BaseException):
            await self._reader

    # sending

    async def send_raw(self, data: str | bytes) -> None:
        """Send a text (str) or binary (bytes) frame as is."""
        try:
            await self.ws.send(data)
        except ConnectionClosed as exc:
            raise ConformanceFailure(
                f"could not send: connection already closed ({self._code_text()})"
            ) from exc

    async def send(self, msg: dict[str, Any]) -> None:
        """Send a JSON object."""
        await self.send_raw(json.dumps(msg))

    async def send_msg(self, type_: str, **fields: Any) -> str:
        """Send `{type, id, **fields}` with a fresh id; return the id."""
        mid = fresh_id()
        await self.send({"type": type_, "id": mid, **fields})
        return mid

    # receiving

    def _code_text(self) -> str:
        return f"close code {self.close_code}" if self.closed.is_set() else "still open"

    async def recv_frame(self, within: float | None = None, what: str = "a frame") -> Any:
        """The next received frame (str or bytes); a failure on timeout or close."""
        limit = self.answer_timeout if within is None else within
        try:
            frame = await asyncio.wait_for(self.queue.get(), limit)
        except TimeoutError:
            raise ConformanceFailure(f"expected {what} within {limit:g}s, got nothing") from None
        if frame is _CLOSED:
            self.queue.put_nowait(_CLOSED)
            raise ConformanceFailure(
                f"expected {what}, but the connection closed ({self._code_text()})"
            )
        return frame

    async def recv(self, within: float | None = None, what: str = "a message") -> dict[str, Any]:
        """The next frame, which must be a text frame holding a JSON object."""
        frame = await self.recv_frame(within, what)
        if not isinstance(frame, str):
            raise ConformanceFailure(f"expected {what} in a text frame, got a binary frame")
        try:
            msg = json.loads(frame)
        except ValueError:
            raise ConformanceFailure(f"expected {what} as JSON, got {describe(frame)}") from None
        if not isinstance(msg, dict):
            raise ConformanceFailure(f"expected {what} as a JSON object, got {describe(frame)}")
        return msg

    async def recv_type(self, type_: str, re: Any = ..., what: str | None = None) -> dict[str, Any]:
        """The next message, which must have `type` (and `re`, when given)."""
        label = what or (f"{type_} (re={re!r})" if re is not ... else type_)
        msg = await self.recv(what=label)
        if msg.get("type") != type_ or (re is not ... and msg.get("re") != re):
            raise ConformanceFailure(f"expected {label}, got {describe(json.dumps(msg))}")
        return msg

    async def request(self, type_: str, answer: str, **fields: Any) -> dict[str, Any]:
        """Send a message and return its answer, which must be `answer` with `re` = its id."""
        mid = await self.send_msg(type_, **fields)
        return await self.recv_type(answer, re=mid, what=f"{answer} answering {type_} {mid}")

    async def expect_error(self, code: str, re: Any = ..., what: str = "") -> dict[str, Any]:
        """The next message must be `ERROR` with `code` (and `re` when given)."""
        label = f"ERROR {code}" + (f" (re={re!r})" if re is not ... else "")
        if what:
            label += f" for {what}"
        msg = await self.recv(what=label)
        got_code = msg.get("code")
        if msg.get("type") != "ERROR" or got_code != code:
            raise ConformanceFailure(f"expected {label}, got {describe(json.dumps(msg))}")
        if re is not ... and ("re" not in msg or msg["re"] != re):
            raise ConformanceFailure(
                f"expected {label}, got re={msg.get('re', '<missing>')!r}: {json.dumps(msg)}"
            )
        if not isinstance(msg.get("message"), str):
            raise ConformanceFailure(f"ERROR {code} lacks a string `message`: {json.dumps(msg)}")
        return msg

    async def request_error(self, code: str, type_: str, **fields: Any) -> dict[str, Any]:
        """Send a message and expect `ERROR code` answering it."""
        mid = await self.send_msg(type_, **fields)
        return await self.expect_error(code, re=mid, what=f"{type_} {fields!r}"[:200])

    async def expect_close(
        self, code: int, within: float | None = None, allow_frames: bool = False
    ) -> list[Any]:
        """Wait for the server to close with `code`; return frames received before the close.

        Without `allow_frames`, any frame before the close is a failure.
        """
        limit = self.answer_timeout if within is None else within
        frames: list[Any] = []
        deadline = time.monotonic() + limit
        while True:
            remaining = deadline - time.monotonic()
            try:
                frame = await asyncio.wait_for(self.queue.get(), max(remaining, 0.001))
            except TimeoutError:
                raise ConformanceFailure(
                    f"expected close {code} within {limit:g}s, connection still open"
                ) from None
            if frame is _CLOSED:
                self.queue.put_nowait(_CLOSED)
                break
            if not allow_frames:
                raise ConformanceFailure(
                    f"expected close {code} with no frame before it, got {describe(frame)}"
                )
            frames.append(frame)
        if self.close_code != code:
            raise ConformanceFailure(f"expected close code {code}, got {self.close_code}")
        return frames

    async def expect_open(self) -> None:
        """The connection still works: a `HEARTBEAT` gets its `HEARTBEAT_ACK`."""
        mid = await self.send_msg("HEARTBEAT")
        msg = await self.recv(what=f"HEARTBEAT_ACK {mid} (connection should stay open)")
        if msg.get("type") != "HEARTBEAT_ACK" or msg.get("re") != mid:
            raise ConformanceFailure(
                f"expected HEARTBEAT_ACK re={mid!r} (connection should stay open), "
                f"got {describe(json.dumps(msg))}"
            )


class RawConn:
    """A hand-made WebSocket client that answers pings only when told to (idle and pings)."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.buf = b""

    @classmethod
    async def open(cls, url: str, within: float) -> RawConn:
        """Connect and upgrade; fail unless the server answers 101."""
        parts = urlsplit(url)
        host, port = parts.hostname or "127.0.0.1", parts.port or 80
        path = parts.path + (f"?{parts.query}" if parts.query else "")
        reader, writer = await asyncio.wait_for(asyncio.open_connection(host, port), within)
        writer.write(wire.upgrade_request(host, port, path))
        await writer.drain()
        try:
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), within)
        except (TimeoutError, asyncio.IncompleteReadError) as exc:
            writer.close()
            raise ConformanceFailure(f"no upgrade answer from {url}") from exc
        status = wire.status_code(head)
        if status != 101:
            writer.close()
            raise ConformanceFailure(f"expected upgrade 101 from {url}, got HTTP {status}")
        return cls(reader, writer)

    async def send_text(self, text: str) -> None:
        """Send a masked text frame."""
        self.writer.write(wire.encode_frame(wire.OP_TEXT, text.encode()))
        await self.writer.drain()

    async def send_pong(self, payload: bytes) -> None:
        """Answer a ping: a masked pong frame echoing its payload."""
        self.writer.write(wire.encode_frame(wire.OP_PONG, payload))
        await self.writer.drain()

    async def next_frame(self, within: float) -> wire.Frame | None:
        """The next frame, or None when the server closed the TCP connection first."""
        while True:
            frame, used = wire.decode_frame(self.buf)
            if frame is not None:
                self.buf = self.buf[used:]
                return frame
            chunk = await asyncio.wait_for(self.reader.read(65536), within)
            if not chunk:
                return None
            self.buf += chunk

    async def wait_close(self, within: float) -> tuple[int | None, list[wire.Frame], float]:
        """Read (never ponging) until a close frame: (code, other frames, seconds waited).

        Raises `ConformanceFailure` if nothing closes within `within` seconds.
        """
        start = time.monotonic()
        frames: list[wire.Frame] = []
        while True:
            remaining = within - (time.monotonic() - start)
            if remaining <= 0:
                raise ConformanceFailure(f"expected a close within {within:g}s, still open")
            try:
                frame = await self.next_frame(remaining)
            except TimeoutError:
                continue
            if frame is None:
                return 1006, frames, time.monotonic() - start
            if frame.opcode == wire.OP_CLOSE:
                return frame.close_code(), frames, time.monotonic() - start
            frames.append(frame)

    def close(self) -> None:
        """Drop the TCP connection."""
        self.writer.close()


async def http_get(url: str, path: str, within: float) -> tuple[int, bytes]:
    """A plain HTTP/1.1 GET of `path` on the server of `url`: (status, body)."""
    parts = urlsplit(url)
    host, port = parts.hostname or "127.0.0.1", parts.port or 80
    reader, writer = await asyncio.wait_for(asyncio.open_connection(host, port), within)
    try:
        writer.write(
            f"GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\nConnection: close\r\n\r\n".encode()
        )
        await writer.drain()
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), within)
        length = None
        for line in head.split(b"\r\n")[1:]:
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"content-length":
                length = int(value.strip())
        if length is not None:
            body = await asyncio.wait_for(reader.readexactly(length), within)
        else:
            body = await asyncio.wait_for(reader.read(), within)
        return wire.status_code(head), body
    finally:
        writer.close()


async def unreachable(url: str, within: float) -> str | None:
    """Why nothing can be reached at `url`'s host and port (a refused connection, a name that
    does not resolve, no answer within `within` seconds), or None when a TCP connection
    opens. Run before the checks: against an address where nothing listens, each check
    would fail on its own connection, burying the one cause under a failure per check."""
    host, port = address(url)
    try:
        _, writer = await asyncio.wait_for(asyncio.open_connection(host, port), within)
    except TimeoutError:
        return f"no TCP connection within {within:g}s"
    except OSError as exc:
        return str(exc) or type(exc).__name__
    writer.close()
    with contextlib.suppress(OSError):
        await writer.wait_closed()
    return None
