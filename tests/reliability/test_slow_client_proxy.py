"""A client that never reads, through the proxy: the other clients of its game go on at their
pace, and what the proxy holds for it stays bounded (its write buffer to the client and the
frames queued from its upstream stop growing) while its game's broadcasts run to many times
that. Both the mirrored path (frame relay) and the pass-through path (byte splice).

What the proxy does *not* do today is let go of such a client: the new server drops its
upstream connection once 8 MiB are unsent, but the proxy has stopped reading that upstream
(backpressure), so it never sees it go, and keeps the client's socket and buffers for as
long as the client stays silent. `test_the_proxy_lets_go_of_a_client_that_never_reads`
records that as an expected failure (strict: it fails once the proxy is fixed, so the marker
gets removed)."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import os
import socket
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import orjson
import pytest

from legacy.service import Config, LegacyServer
from proxy.relay import MirrorProxy, Session
from server.app import ServerSettings, StateServer
from tests.proxy.conftest import Client, start_proxy, stop_proxy, token
from tests.support import TEST_SECRET, timeout, wait_until

GAME = "sloth"
#: a state of ~50 KB (48 settings of 1,000 characters): every broadcast is that big
BIG_SETTINGS = {f"k{n}": "x" * 1000 for n in range(48)}
#: what the proxy may hold for one client that never reads: its write buffer to the client
#: (websockets' high-water mark plus a frame) and frames read from the upstream before the
#: proxy stopped reading it (websockets' max_queue, 16, plus a few, of ~50 KB)
MAX_CLIENT_BUFFER = 1 << 20
MAX_QUEUED_FRAMES = 32


def masked_text_frame(payload: bytes) -> bytes:
    """One client-to-server text frame (RFC 6455: clients mask)."""
    mask = os.urandom(4)
    length = len(payload)
    if length < 126:
        head = bytes([0x81, 0x80 | length])
    else:
        head = bytes([0x81, 0x80 | 126]) + length.to_bytes(2, "big")
    return head + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload))


async def never_reading_client(url: str, path: str, name: str) -> socket.socket:
    """A raw socket that does the handshake, sends CONNECT, then never reads again (a small
    receive buffer so the kernel does not absorb much on its behalf)."""
    host, port = url.removeprefix("ws://").split(":")
    loop = asyncio.get_running_loop()
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.setblocking(False)
    async with asyncio.timeout(timeout()):
        await loop.sock_connect(sock, (host, int(port)))
        key = base64.b64encode(os.urandom(16)).decode()
        request = (
            f"GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\nUpgrade: websocket\r\n"
            f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
        )
        await loop.sock_sendall(sock, request.encode())
        head = b""
        while b"\r\n\r\n" not in head:  # byte by byte: nothing after the head is consumed
            byte = await loop.sock_recv(sock, 1)
            assert byte, f"closed during the handshake: {head!r}"
            head += byte
    assert head.startswith(b"HTTP/1.1 101 "), head
    connect = orjson.dumps({"type": "CONNECT", "id": "c", "token": token(name)})
    await loop.sock_sendall(sock, masked_text_frame(connect))
    return sock


def queued_frames(session: Session) -> int:
    """Frames read from the session's primary upstream and not yet relayed."""
    return len(session.to_client or ())


@dataclass
class Run:
    """What a run with a sloth measured, and what is still up for the last checks."""

    proxy: MirrorProxy
    session: Session
    rounds: int = 0
    broadcast_bytes: int = 0
    slowest: float = 0.0
    buffered: int = 0
    queued: int = 0


#: the proxy's patience with a client that does not read (its default is 30 s)
SEND_TIMEOUT = 2.0


@contextlib.asynccontextmanager
async def sloth_run(tmp_path: Path, mirroring: bool) -> AsyncIterator[Run]:
    """Three clients of a game with a ~50 KB state making updates, and a sloth in the same
    game, through the proxy (new server primary), until the game has broadcast at least
    16 MiB (twice the new server's limit for a reader that never reads) and the new server
    has dropped the sloth's upstream connection."""
    # high rate limits: the rate limiter is not what is tested here
    new = StateServer(
        ServerSettings(db=tmp_path / "new.db", secret=TEST_SECRET, port=0, rate=1e5, burst=100_000)
    )
    old = LegacyServer(
        Config(data=tmp_path / "old.jsonl", secret=TEST_SECRET, port=0, rate=1e5, burst=1e5)
    )
    await new.start()
    await old.start()
    under_test = await start_proxy(
        tmp_path,
        old.url,
        new.url,
        primary="new",
        mirroring=mirroring,
        client_send_timeout=SEND_TIMEOUT,
    )
    proxy = under_test.proxy
    others: list[Client] = []
    sloth: socket.socket | None = None
    try:
        for n in range(3):
            client = await Client.open(f"{proxy.url}/v1/games/{GAME}")
            await client.request(type="CONNECT", id="c", token=token(f"p{n}"))
            others.append(client)
        await others[0].send(type="STATE_UPDATE", id="big", updates={"settings": BIG_SETTINGS})
        await others[0].until(lambda frame: frame.get("re") == "big")
        before = set(proxy.sessions)
        sloth = await never_reading_client(proxy.url, f"/v1/games/{GAME}", "sloth")
        await wait_until(lambda: len(proxy.sessions) == 4, what="the sloth's session")
        (session,) = [s for k, s in proxy.sessions.items() if k not in before]
        assert session.mirrored is mirroring
        run = Run(proxy, session)
        while run.broadcast_bytes < 16 * 2**20 or len(new.conns) > 3:
            assert run.rounds < 2000, "the new server never dropped the sloth's upstream"
            run.rounds += 1
            wanted = f"u{run.rounds}"
            started = time.monotonic()
            for n, client in enumerate(others):
                await client.send(
                    type="STATE_UPDATE", id=wanted, updates={"score_deltas": {f"p{n}": 1}}
                )
            for client in others:
                answer = await client.until(lambda f: f.get("re") == wanted)  # noqa: B023
                assert answer["type"] == "ACK", answer
            run.slowest = max(run.slowest, time.monotonic() - started)
            # what the sloth is sent too: every broadcast of the game (the first client's
            # share arrived before its own ACK, at the latest)
            run.broadcast_bytes += sum(
                len(orjson.dumps(f)) for f in others[0].frames if f.get("type") == "STATE"
            )
            for client in others:
                client.frames.clear()
            transport = session.client.transport
            size = transport.get_write_buffer_size() if transport is not None else 0
            run.buffered = max(run.buffered, size)
            run.queued = max(run.queued, queued_frames(session))
        print(
            f"\n[{'mirrored' if mirroring else 'pass-through'}] {run.rounds} rounds, "
            f"{run.broadcast_bytes / 2**20:.1f} MiB broadcast to the sloth's game; slowest "
            f"round {run.slowest * 1000:.0f} ms; the proxy held at most {run.buffered} bytes "
            f"in the sloth's write buffer and {run.queued} frames from its upstream"
        )
        # the others are all still there (the sloth itself may already be dropped: the proxy's
        # patience, SEND_TIMEOUT, can run out before the new server drops its upstream)
        assert sum(1 for key in proxy.sessions if key != session.id) == 3
        yield run
    finally:
        if sloth is not None:
            sloth.close()
        for client in others:
            with contextlib.suppress(Exception):
                await client.ws.close()
        await stop_proxy(under_test)
        await new.stop()
        await old.stop()


MODES = pytest.mark.parametrize("mirroring", [True, False], ids=["mirrored", "pass-through"])


@MODES
async def test_a_client_that_never_reads_does_not_slow_the_others_and_stays_bounded(
    tmp_path: Path, mirroring: bool
):
    async with sloth_run(tmp_path, mirroring) as run:
        assert run.slowest < timeout(2)  # generous: a blocked relay would stall for good
        assert run.buffered <= MAX_CLIENT_BUFFER
        assert run.queued <= MAX_QUEUED_FRAMES
        assert run.broadcast_bytes > 16 * MAX_CLIENT_BUFFER


@MODES
async def test_the_proxy_lets_go_of_a_client_that_never_reads(tmp_path: Path, mirroring: bool):
    async with sloth_run(tmp_path, mirroring) as run:
        # The new server has dropped the sloth's upstream: the proxy should drop it too.
        await wait_until(
            lambda: run.session.id not in run.proxy.sessions,
            within=timeout(SEND_TIMEOUT + 5),
            what="the proxy to drop the client that never reads",
        )
