"""Shadow copies that wait to share a write (`shadow_coalesce`): a copy with a place in its
game's order (a change, a read at a version) goes at once with what waited before it, the rest
go when the window ends, and a flip sends what waits before it swaps the roles (a copy never
reaches the new primary). And a shadow that never reads: given up at the write limit, and
closed without waiting for it to drain."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import re
from collections.abc import AsyncIterator
from pathlib import Path

from legacy.service import Config, LegacyServer
from proxy.route import Route
from tests.proxy.conftest import Client, Stack, start_proxy, start_stack, stop_proxy, token
from tests.support import TEST_SECRET, timeout, wait_until

#: longer than any test: a copy that waits for the window is never written by it here
FOREVER = 3600.0


def shadow_answers(stack: Stack) -> list[str]:
    """The message ids the shadow answered, in the order the proxy read them."""
    return [
        str(record.msg["re"])
        for record in stack.recorder.records
        if record.role == "shadow" and record.msg is not None and "re" in record.msg
    ]


async def connected(stack: Stack, game: str, player: str) -> Client:
    client = await Client.open(f"{stack.proxy.url}/v1/games/{game}")
    answer = await client.request(type="CONNECT", id="c", token=token(player))
    assert answer["type"] == "CONNECTED", answer
    return client


async def test_a_change_or_a_read_takes_the_copies_waiting_before_it_along_at_once(
    tmp_path: Path,
):
    async with start_stack(tmp_path, shadow_coalesce=FOREVER) as stack:
        client = await connected(stack, "g1", "alice")  # CONNECT joins: it changes state
        await wait_until(lambda: "c" in shadow_answers(stack), what="the shadow's CONNECTED")
        for n in range(3):
            assert (await client.request(type="HEARTBEAT", id=f"h{n}"))["type"] == "HEARTBEAT_ACK"
        assert shadow_answers(stack) == ["c"]  # the heartbeats' copies wait for the window
        assert (await client.request(type="GET_STATE", id="s1"))["type"] == "STATE"
        await wait_until(lambda: "s1" in shadow_answers(stack), what="the shadow's STATE")
        # in the connection's order: what waited went first, in the same write
        assert shadow_answers(stack) == ["c", "h0", "h1", "h2", "s1"]
        await client.request(type="HEARTBEAT", id="h3")
        answer = await client.request(
            type="STATE_UPDATE", id="u1", updates={"score_deltas": {"alice": 1}}
        )
        assert answer["type"] == "ACK", answer
        await wait_until(lambda: "u1" in shadow_answers(stack), what="the shadow's ACK")
        assert shadow_answers(stack)[5:] == ["h3", "u1"]
        await client.ws.close()


async def test_copies_that_wait_are_written_when_the_window_ends(tmp_path: Path):
    async with start_stack(tmp_path, shadow_coalesce=0.05) as stack:
        client = await connected(stack, "g1", "alice")
        for n in range(10):
            await client.request(type="HEARTBEAT", id=f"h{n}")
        wanted = ["c"] + [f"h{n}" for n in range(10)]
        await wait_until(lambda: shadow_answers(stack) == wanted, what="every shadow answer")
        sent = stack.proxy.metrics.frames.labels("client", "new", "shadow").value
        assert sent == len(wanted)
        await client.ws.close()


async def test_a_flip_writes_the_waiting_copies_to_the_shadow_before_it_swaps(tmp_path: Path):
    async with start_stack(tmp_path, switchboard=True, shadow_coalesce=FOREVER) as stack:
        client = await connected(stack, "g1", "alice")
        await wait_until(lambda: "c" in shadow_answers(stack), what="the shadow's CONNECTED")
        for n in range(3):
            await client.request(type="HEARTBEAT", id=f"h{n}")
        prepared = await stack.board.prepare(Route(primary="new"))
        await stack.board.commit(prepared.token)
        assert stack.proxy.route.primary == "new"
        # the old shadow (now primary) answered the copies before the swap, as the shadow
        assert shadow_answers(stack)[:4] == ["c", "h0", "h1", "h2"]
        shadow_upstreams = {
            record.upstream
            for record in stack.recorder.records
            if record.role == "shadow" and record.msg is not None and record.msg.get("re") == "h2"
        }
        assert shadow_upstreams == {"new"}
        # and the client got exactly one answer per frame: none of the copies' answers
        answer = await client.request(type="HEARTBEAT", id="after")
        assert answer["re"] == "after", answer
        assert [frame.get("re") for frame in client.frames] == ["c", "h0", "h1", "h2", "after"]
        await client.ws.close()


async def test_without_a_window_every_copy_goes_in_its_turn(tmp_path: Path):
    async with start_stack(tmp_path, shadow_coalesce=0.0) as stack:
        client = await connected(stack, "g1", "alice")
        await client.request(type="HEARTBEAT", id="h0")
        await wait_until(lambda: shadow_answers(stack) == ["c", "h0"], within=timeout(10))
        await client.ws.close()


@contextlib.asynccontextmanager
async def deaf_upstream() -> AsyncIterator[str]:
    """A WebSocket server that accepts the opening handshake, then never reads again."""
    guid = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
    kept: list[asyncio.StreamWriter] = []

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        found = re.search(rb"sec-websocket-key: *(\S+)", head, re.IGNORECASE)
        assert found is not None
        accept = base64.b64encode(hashlib.sha1(found.group(1) + guid).digest())
        writer.write(
            b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
            b"Connection: Upgrade\r\nSec-WebSocket-Accept: " + accept + b"\r\n\r\n"
        )
        kept.append(writer)  # open, and never read

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        yield f"ws://127.0.0.1:{port}"
    finally:
        for writer in kept:
            writer.transport.abort()
        server.close()
        await server.wait_closed()


async def flood_primary(tmp_path: Path) -> LegacyServer:
    """An old server that lets a flood through (its rate limit would refuse it, and refused
    frames are not mirrored): the copies must pile up in front of the shadow."""
    config = Config(data=tmp_path / "old.jsonl", secret=TEST_SECRET, port=0, rate=1e6, burst=1e6)
    primary = LegacyServer(config)
    await primary.start()
    return primary


async def test_a_shadow_that_does_not_read_is_given_up_and_the_client_sees_nothing(
    tmp_path: Path,
):
    primary = await flood_primary(tmp_path)
    async with deaf_upstream() as deaf:
        under_test = await start_proxy(
            tmp_path, primary.url, deaf, shadow_write_limit=64 * 1024, answer_timeout=3600
        )
        registry = under_test.proxy.metrics.registry

        def given_up() -> bool:
            drops = registry.get_sample_value(
                "stateshift_proxy_shadow_drops_total", {"reason": "stall"}
            )
            return (drops or 0) >= 1

        try:
            client = await Client.open(f"{under_test.url}/v1/games/g1")
            answer = await client.request(type="CONNECT", id="c", token=token("alice"))
            assert answer["type"] == "CONNECTED", answer
            pad = "x" * 30_000
            sent = 0
            while not given_up():  # the kernel's buffers first, then the proxy's
                answer = await client.request(type="HEARTBEAT", id=f"h{sent}", pad=pad)
                assert (answer["type"], answer["re"]) == ("HEARTBEAT_ACK", f"h{sent}"), answer
                sent += 1
                assert sent < 2_000, "the shadow was never given up"
            # the client goes on as if nothing happened
            answer = await client.request(type="HEARTBEAT", id="after")
            assert answer["type"] == "HEARTBEAT_ACK", answer
            assert len(client.frames) == sent + 2
            await client.ws.close()
        finally:
            # leaving, the proxy waits up to answer_timeout for what the shadow still owes
            under_test.proxy.settings.answer_timeout = 0.1
            await stop_proxy(under_test)
            await primary.stop()


async def test_a_client_leaving_a_shadow_that_does_not_read_ends_and_the_proxy_stops(
    tmp_path: Path,
):
    """Below the write limit, a shadow that stopped reading still holds frames in the
    proxy's buffer when the client leaves: closing it must not wait for them forever."""
    primary = await flood_primary(tmp_path)
    async with deaf_upstream() as deaf:
        under_test = await start_proxy(
            tmp_path,
            primary.url,
            deaf,
            shadow_write_limit=1 << 30,
            answer_timeout=0.5,
            open_timeout=0.5,
            shadow_coalesce=0.0,
        )
        proxy = under_test.proxy
        try:
            client = await Client.open(f"{under_test.url}/v1/games/g1")
            await client.request(type="CONNECT", id="c", token=token("alice"))
            session = next(iter(proxy.sessions.values()))

            def backed_up() -> bool:  # above websockets' high-water mark: close() would wait
                shadow = session.up.get("new")
                return shadow is not None and shadow.transport.get_write_buffer_size() > 1 << 20

            pad, sent = "x" * 30_000, 0
            while not backed_up():
                answer = await client.request(type="HEARTBEAT", id=f"h{sent}", pad=pad)
                assert answer["type"] == "HEARTBEAT_ACK", answer
                sent += 1
                assert sent < 5_000, "the shadow's buffer never filled"
            await client.ws.close()
            await wait_until(lambda: not proxy.sessions, what="the session to end")
        finally:
            async with asyncio.timeout(timeout()):  # the proxy stops: it does not hang
                await stop_proxy(under_test)
            await primary.stop()
