"""Transparency edge cases: a close without a status code, a frame half-read at the splice,
a primary message over the client-side size limit, a client that never answers pings (the
primary's idle close), a half-close after a close frame. Each test compares what a client
gets directly from an upstream with what it gets through the proxy; each failed before its
fix."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import orjson
from websockets.asyncio.client import ClientConnection
from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.exceptions import ConnectionClosed
from websockets.utils import accept_key

from conformance import wire
from conformance.client import RawConn
from conformance.registry import ConformanceFailure
from legacy.service import Config, LegacyServer
from server.app import StateServer
from tests.proxy.conftest import start_proxy, stop_proxy, token
from tests.proxy.test_splice import echo_server, open_ws
from tests.support import TEST_SECRET, timeout

Handler = Callable[[ServerConnection], Awaitable[None]]


@contextlib.asynccontextmanager
async def ws_upstream(handler: Handler, **kwargs: Any) -> AsyncIterator[str]:
    """A tiny websockets upstream running `handler`; yields its URL."""
    server: Server = await serve(
        handler, "127.0.0.1", 0, compression=None, ping_interval=None, **kwargs
    )
    try:
        port = next(iter(server.sockets)).getsockname()[1]
        yield f"ws://127.0.0.1:{port}"
    finally:
        server.close()
        await server.wait_closed()


async def close_seen(ws: ClientConnection) -> tuple[int | None, str | None, bool]:
    """Read until the connection ends: (close code, reason, whether a close frame came)."""
    with contextlib.suppress(ConnectionClosed):
        async with asyncio.timeout(timeout()):
            while True:
                await ws.recv()
    rcvd = ws.protocol.close_rcvd
    return ws.close_code, ws.close_reason, rcvd is not None


# --------------------------------------------------------------------------- 1. empty close


async def closes_without_a_status_code(ws: ServerConnection) -> None:
    """Answers the first message, then closes with an empty close frame (no status code:
    RFC 6455 5.5.1 allows it; the peer reports 1005)."""
    message = await ws.recv()
    await ws.send(message)
    await ws.close(None)  # type: ignore[arg-type]  # websockets: an empty close frame


async def test_a_primarys_close_without_a_status_code_reaches_the_client_as_such(tmp_path: Path):
    """Directly, a client whose server closes with an empty close frame sees a clean closing
    handshake and close code 1005. Through the mirroring proxy it sees the TCP connection
    aborted (1006, no close frame): the proxy treats 1005 like a vanished peer."""
    async with ws_upstream(closes_without_a_status_code) as url, echo_server() as shadow:
        direct = await open_ws(f"{url}/v1/games/g1")
        await direct.send("hi")
        assert await direct.recv() == "hi"
        assert await close_seen(direct) == (1005, "", True)

        under_test = await start_proxy(tmp_path, url, shadow.url, mirroring=True)
        try:
            proxied = await open_ws(f"{under_test.url}/v1/games/g1")
            await proxied.send("hi")
            assert await proxied.recv() == "hi"
            assert await close_seen(proxied) == (1005, "", True)
        finally:
            await stop_proxy(under_test)


# ------------------------------------------------------------- 2. splice of a half-read frame


@contextlib.asynccontextmanager
async def greeting_upstream() -> AsyncIterator[str]:
    """A raw upstream that accepts the handshake and, in the same write, sends the first two
    bytes (the header) of a text frame "hello"; it sends the frame's payload once the client
    has sent anything (a server may send whenever it likes; TCP may cut a frame anywhere)."""

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        key = ""
        for line in head.decode("latin-1").split("\r\n"):
            name, _, value = line.partition(":")
            if name.strip().lower() == "sec-websocket-key":
                key = value.strip()
        writer.write(
            b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
            b"Connection: Upgrade\r\nSec-WebSocket-Accept: "
            + accept_key(key).encode()
            + b"\r\n\r\n"
            + b"\x81\x05"  # FIN + text, 5 bytes: the header only
        )
        await writer.drain()
        with contextlib.suppress(OSError, asyncio.IncompleteReadError):
            await reader.read(1)  # the client spoke
            writer.write(b"hello")
            await writer.drain()
            await reader.read()  # until the client goes
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    try:
        port = server.sockets[0].getsockname()[1]
        yield f"ws://127.0.0.1:{port}"
    finally:
        server.close()


async def greeting(url: str) -> Any:
    ws = await open_ws(f"{url}/v1/games/g1")
    try:
        await ws.send("go")
        async with asyncio.timeout(timeout()):
            return await ws.recv()
    except (TimeoutError, ConnectionClosed) as exc:
        return f"no greeting: {exc!r}"
    finally:
        await ws.close()


async def test_a_spliced_session_keeps_a_frame_whose_header_was_already_read(tmp_path: Path):
    """Pass-through: the primary's first frame header arrived with its handshake answer, so
    websockets' parser already consumed those two bytes and waits for the payload with an
    empty buffer. `can_splice` only looks at the buffer, splices, and the header is lost:
    the client gets the payload bytes as if they were a frame header (a protocol error)
    instead of the primary's "hello"."""
    async with greeting_upstream() as url:
        assert await greeting(url) == "hello"  # directly
        under_test = await start_proxy(tmp_path, url, url, mirroring=False)
        try:
            assert await greeting(under_test.url) == "hello"
        finally:
            await stop_proxy(under_test)


# ------------------------------------------------------------------ 3. a large primary frame

BIG = 2 * 1024 * 1024  # above the proxy's default max_size (1 MiB)


async def big_on_request(ws: ServerConnection) -> None:
    async for message in ws:
        await ws.send(("B" * BIG) if message == "big" else message)


async def big_message(url: str) -> tuple[int, int | None]:
    """Ask for a big message with a client that accepts any size: (its length, close code
    after the client's own close)."""
    ws = await open_ws(f"{url}/v1/games/g1", max_size=None)
    await ws.send("big")
    try:
        async with asyncio.timeout(timeout()):
            got = await ws.recv()
    except ConnectionClosed:
        return -1, ws.close_code
    await ws.close()
    return len(got), ws.close_code


async def test_a_primary_message_larger_than_max_size_reaches_the_client(tmp_path: Path):
    """The primary (no outgoing limit) sends a 2 MiB message to a client that accepts any
    size. Directly the client gets it; through the mirroring proxy the client is closed
    with 1009, a close the primary never sent: the proxy applies its client-side size limit
    to what the primary sends (the splice passes it intact)."""
    async with ws_upstream(big_on_request, max_size=None) as url, echo_server() as shadow:
        assert await big_message(url) == (BIG, 1000)
        # (each proxy its own state directory: a persisted route would win)
        (tmp_path / "spliced").mkdir()
        (tmp_path / "mirrored").mkdir()
        spliced = await start_proxy(tmp_path / "spliced", url, shadow.url, mirroring=False)
        try:
            assert await big_message(spliced.url) == (BIG, 1000)
        finally:
            await stop_proxy(spliced)
        mirrored = await start_proxy(tmp_path / "mirrored", url, shadow.url, mirroring=True)
        assert mirrored.proxy.route.mirroring
        try:
            assert await big_message(mirrored.url) == (BIG, 1000)
        finally:
            await stop_proxy(mirrored)


# ------------------------------------------------------------- 4. a client that never pongs


async def silent_client_close(url: str, game: str) -> int | None:
    """A raw client that sends CONNECT, then nothing, and never answers a ping: the close
    code it gets (ConformanceFailure if none comes)."""
    raw = await RawConn.open(f"{url}/v1/games/{game}", timeout())
    try:
        await raw.send_text(
            orjson.dumps({"type": "CONNECT", "id": "c", "token": token("alice")}).decode()
        )
        code, _, _ = await raw.wait_close(timeout())
        return code
    finally:
        raw.close()


async def test_a_client_that_never_pongs_is_still_closed_idle_through_the_mirroring_proxy(
    tmp_path: Path, new_server: StateServer
):
    """PROTOCOL.md: a connection that sends nothing, no message and no pong, for the idle
    period is closed with 4408 (that is how the server frees a dead client's seat). Directly,
    and through the splice (pings pass as bytes), the silent client gets 4408. Through the
    mirroring proxy the primary's pings are answered by the proxy itself (`UpstreamSide`
    auto-pongs) while the proxy never times out the client (`ping_timeout=None`): the
    primary sees a live connection forever, and the client is never closed."""
    old = LegacyServer(
        Config(
            data=tmp_path / "old.jsonl",
            secret=TEST_SECRET,
            port=0,
            idle_timeout=1.0,
            ping_interval=0.25,
        )
    )
    await old.start()
    (tmp_path / "spliced").mkdir()
    (tmp_path / "mirrored").mkdir()
    try:
        assert await silent_client_close(old.url, "g-direct") == 4408
        spliced = await start_proxy(tmp_path / "spliced", old.url, new_server.url, mirroring=False)
        try:
            assert await silent_client_close(spliced.url, "g-spliced") == 4408
        finally:
            await stop_proxy(spliced)
        mirrored = await start_proxy(tmp_path / "mirrored", old.url, new_server.url, mirroring=True)
        try:
            assert mirrored.proxy.route.mirroring
            try:
                code: Any = await silent_client_close(mirrored.url, "g-mirrored")
            except ConformanceFailure as exc:
                code = str(exc)
            assert code == 4408
        finally:
            await stop_proxy(mirrored)
    finally:
        await old.stop()


# ------------------------------------------------- 5. a client that half-closes after its close


async def close_then_half_close(url: str) -> bytes:
    """A raw client: handshake, a close frame (1000, "bye"), then a TCP half-close (FIN; it
    still reads, as RFC 793 allows). Everything it reads afterwards, until EOF."""
    host, port = url.removeprefix("ws://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    try:
        writer.write(wire.upgrade_request(host, int(port), "/v1/games/g1"))
        async with asyncio.timeout(timeout()):
            head = await reader.readuntil(b"\r\n\r\n")
            assert wire.status_code(head) == 101
            writer.write(wire.encode_frame(wire.OP_CLOSE, (1000).to_bytes(2, "big") + b"bye"))
            writer.write_eof()
            return await reader.read()
    finally:
        writer.close()


async def test_a_spliced_client_that_half_closes_after_its_close_gets_the_close_answer(
    tmp_path: Path,
):
    """Directly, the server answers the client's close (an echo, 1000 "bye") over the half-
    closed connection: the client can still read. Through the splice, the client's FIN makes
    the proxy close the client's socket outright (`_Pipe.eof_received` returns None) and the
    upstream's, so the upstream's close answer is never relayed: the client gets EOF without
    a close frame."""
    echo_close = b"\x88\x05" + (1000).to_bytes(2, "big") + b"bye"
    async with echo_server() as upstream:
        assert await close_then_half_close(upstream.url) == echo_close  # directly
        under_test = await start_proxy(tmp_path, upstream.url, upstream.url, mirroring=False)
        try:
            assert await close_then_half_close(under_test.url) == echo_close
        finally:
            await stop_proxy(under_test)


# ------------------------------------------------- 6. a malformed Sec-WebSocket-Protocol


async def handshake_status(url: str, protocols: str) -> bytes:
    """A raw handshake offering `protocols` as is; the answer's status line."""
    host, port = url.removeprefix("ws://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    try:
        writer.write(
            (
                "GET /v1/games/g HTTP/1.1\r\n"
                f"Host: {host}:{port}\r\n"
                "Upgrade: websocket\r\nConnection: Upgrade\r\n"
                "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n"
                f"Sec-WebSocket-Protocol: {protocols}\r\n\r\n"
            ).encode()
        )
        async with asyncio.timeout(timeout()):
            return (await reader.readline()).strip()
    finally:
        writer.close()


async def test_a_malformed_subprotocol_header_is_refused_as_the_primary_refuses_it(
    tmp_path: Path, old_server: LegacyServer, new_server: StateServer
):
    """`Sec-WebSocket-Protocol: a b` is not a list of tokens: the servers answer 400. The
    proxy opened the primary with it first and websockets' client raised ValueError: the
    client got a 500 and an error was logged."""
    direct = await handshake_status(old_server.url, "a b")
    assert direct.startswith(b"HTTP/1.1 400")
    proxied = await start_proxy(tmp_path, old_server.url, new_server.url, mirroring=True)
    try:
        assert await handshake_status(proxied.url, "a b") == direct
    finally:
        await stop_proxy(proxied)
