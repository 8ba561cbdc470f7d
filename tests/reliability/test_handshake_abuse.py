"""Handshake abuse is bounded, on the new server and on the proxy: huge request headers are
refused (431, or the connection closed) while the clients already there carry on; slowloris
connections (a request line dripped a byte at a time) and idle TCP connections that never
send anything are closed by the handshake timeout (websockets' `open_timeout`, 10 s) and,
while they are open, a real client still connects and is served.

Everything is on loopback; every connection the test opens is closed at the end."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from tests.proxy.conftest import Client, start_legacy, start_new, start_proxy, stop_proxy, token
from tests.support import timeout, wait_until

TARGETS = pytest.mark.parametrize("target", ["new", "proxy"])
#: idle connections opened at once (the container's RLIMIT_NOFILE is 20,000)
IDLE = 200
SLOWLORIS = 20
#: seconds between two bytes of a slowloris request (pacing, not a wait for an outcome)
DRIP = 0.25
#: websockets' default open_timeout, which neither the new server nor the proxy changes
HANDSHAKE_TIMEOUT = 10.0


@contextlib.asynccontextmanager
async def serving(target: str, tmp_path: Path) -> AsyncIterator[str]:
    """The ws:// URL of the target: the new server, or the proxy in front of old and new."""
    new = await start_new(tmp_path)
    try:
        if target == "new":
            yield new.url
            return
        old = await start_legacy(tmp_path)
        under_test = await start_proxy(tmp_path, old.url, new.url)
        try:
            yield under_test.url
        finally:
            await stop_proxy(under_test)
            await old.stop()
    finally:
        await new.stop()


def address(url: str) -> tuple[str, int]:
    host, port = url.removeprefix("ws://").split(":")
    return host, int(port)


async def served(url: str, name: str) -> None:
    """A real client connects, updates its game, and is answered."""
    client = await Client.open(f"{url}/v1/games/abuse")
    connected = await client.request(type="CONNECT", id="c", token=token(name))
    assert connected["type"] == "CONNECTED", connected
    await client.send(type="STATE_UPDATE", id="u", updates={"score_deltas": {name: 1}})
    answer = await client.until(lambda frame: frame.get("re") == "u")
    assert answer["type"] == "ACK", answer
    await client.request(type="DISCONNECT", id="bye")
    assert await client.closed() == 1000


async def answer_to(url: str, request: bytes) -> bytes:
    """Send a raw request; return what comes back before the server closes (b"" when it
    closed without an answer, or reset the connection while we were still sending)."""
    reader, writer = await asyncio.open_connection(*address(url))
    try:
        async with asyncio.timeout(timeout()):
            try:
                writer.write(request)
                await writer.drain()
            except ConnectionError:
                pass  # it stopped reading and closed: what we still had to send was refused
            try:
                return await reader.read()
            except ConnectionError:
                return b""
    finally:
        writer.close()
        with contextlib.suppress(ConnectionError):
            await writer.wait_closed()


def upgrade(path: str, *extra: tuple[str, str]) -> bytes:
    lines = [
        f"GET {path} HTTP/1.1",
        "Host: 127.0.0.1",
        "Upgrade: websocket",
        "Connection: Upgrade",
        "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==",
        "Sec-WebSocket-Version: 13",
        *(f"{name}: {value}" for name, value in extra),
    ]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


@TARGETS
async def test_huge_headers_are_refused_and_the_clients_there_carry_on(target: str, tmp_path: Path):
    async with serving(target, tmp_path) as url:
        bystander = await Client.open(f"{url}/v1/games/abuse")
        await bystander.request(type="CONNECT", id="c", token=token("bystander"))
        many = upgrade("/v1/games/abuse", *((f"X-Pad-{n}", "p" * 8000) for n in range(200)))
        one_huge = upgrade("/v1/games/abuse", ("X-Huge", "h" * 2**20))
        for abusive in (many, one_huge):
            answer = await answer_to(url, abusive)
            status = answer.split(b"\r\n", 1)[0]
            # websockets answers 431 when it gets to; a reset before that is a refusal too
            assert answer == b"" or status.startswith(b"HTTP/1.1 4"), status
            assert b" 101 " not in status
            print(f"\n[{target}] {len(abusive):,} bytes of headers: {status.decode() or 'closed'}")
            beat = await bystander.request(type="HEARTBEAT", id=f"h{len(abusive)}")
            assert beat["type"] == "HEARTBEAT_ACK", beat
        await served(url, "newcomer")
        await bystander.ws.close()


async def closed_by_peer(reader: asyncio.StreamReader) -> float:
    """Wait for the peer to close (EOF or reset); return when (monotonic)."""
    try:
        while await reader.read(1024):
            pass
    except ConnectionError:
        pass
    return time.monotonic()


async def drip(writer: asyncio.StreamWriter, data: bytes) -> None:
    """Send `data` a byte at a time until it is all sent or the peer is gone."""
    try:
        for byte in data:
            writer.write(bytes([byte]))
            await writer.drain()
            await asyncio.sleep(DRIP)
    except ConnectionError:
        pass


@TARGETS
async def test_slowloris_and_idle_connections_time_out_and_do_not_block_real_clients(
    target: str, tmp_path: Path
):
    async with serving(target, tmp_path) as url:
        host, port = address(url)
        writers: list[asyncio.StreamWriter] = []
        tasks: list[asyncio.Task[Any]] = []  # cancelled at the end, whatever happened
        try:
            opened = time.monotonic()
            idle: list[asyncio.Task[float]] = []
            for _ in range(IDLE):
                reader, writer = await asyncio.open_connection(host, port)
                writers.append(writer)
                idle.append(asyncio.create_task(closed_by_peer(reader)))
                tasks.append(idle[-1])
            # a request that would take minutes to drip: only the server can end it in time
            request = upgrade("/v1/games/abuse", ("X-Slow", "s" * 400))
            slow: list[asyncio.Task[float]] = []
            for _ in range(SLOWLORIS):
                reader, writer = await asyncio.open_connection(host, port)
                writers.append(writer)
                tasks.append(asyncio.create_task(drip(writer, request)))
                slow.append(asyncio.create_task(closed_by_peer(reader)))
                tasks.append(slow[-1])
            assert len(request) * DRIP > 4 * HANDSHAKE_TIMEOUT

            # With all of them open, real clients connect and are served.
            await asyncio.gather(*(served(url, f"real{n}") for n in range(5)))
            assert not any(t.done() for t in idle + slow), "abusers closed before the check"

            everyone = idle + slow
            await wait_until(
                lambda: all(t.done() for t in everyone),
                within=timeout(HANDSHAKE_TIMEOUT + 10),
                what="the handshake timeout to close every idle and slowloris connection",
            )
            times = [t.result() - opened for t in everyone]
            print(
                f"\n[{target}] {IDLE} idle + {SLOWLORIS} slowloris connections closed by the "
                f"server after {min(times):.1f} to {max(times):.1f} s"
            )
            # closed by the handshake timeout, not by anything sooner
            assert min(times) >= HANDSHAKE_TIMEOUT * 0.9
            await served(url, "after")  # and the server still serves
        finally:
            for task in tasks:
                task.cancel()
            for writer in writers:
                writer.close()
            await asyncio.gather(*tasks, return_exceptions=True)
