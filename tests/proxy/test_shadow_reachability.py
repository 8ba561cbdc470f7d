"""A shadow lost under many clients: one probe, not one retry per client, and a bounded way
back (`proxy.reachability`).

Each client's shadow connection used to retry on its own: a shadow down under 3,000 clients
took the proxy's loop from the clients (round trips from 1 ms to over 1 s, measured with
`benchmarks/shadow_loss_bench.py`). What a test can check without timing: how many
connection attempts were made while the shadow was down, and a lower bound on the time the
way back takes (a sleep never ends early). Real servers and the proxy on loopback.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
import time
import urllib.request
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from proxy.reachability import Reachability, probe
from proxy.relay import MirrorProxy
from proxy.route import Route
from server.app import ServerSettings, StateServer
from tests.proxy.conftest import one_per_game, proxy_settings, start_stack
from tests.support import TEST_SECRET, timeout, wait_until

FAILURES = "stateshift_proxy_upstream_connect_failures_total"


async def test_clients_whose_shadow_is_down_make_no_attempt_of_their_own(tmp_path: Path):
    """30 clients, the shadow stopped: each client's connection may try once (the ones under
    way when the first is refused), then only the probe asks, however long it stays down."""
    clients = 30
    async with start_stack(tmp_path, tap=False, retry_max=0.2) as stack:
        proxy, control = stack.proxy, stack.control
        async with one_per_game(proxy.url, clients):
            await wait_until(
                lambda: control.status()["shadow_connected"] == clients, what="every shadow"
            )
            await stack.new.stop()
            reach = proxy.reach["new"]
            await wait_until(lambda: reach.probes_failed >= 5, what="five probes, still down")
            down = proxy.metrics.registry.get_sample_value(
                FAILURES, {"upstream": "new", "role": "shadow", "reason": "down"}
            )
            assert down is not None
            # before: every connection retried every 0.2 s (about 30 per probe here)
            assert down <= clients + reach.probes_failed, (down, reach.probes_failed)
            assert control.status()["shadow_connected"] == 0
            assert reach.down


async def test_a_shadow_back_is_reconnected_for_every_client_at_a_bounded_rate(tmp_path: Path):
    """The shadow comes back on its address: the probe finds it, and every client's shadow
    connection reopens, at most `shadow_reopen_rate` a second (a lower bound on the time:
    before, all of them reconnected at once)."""
    clients, rate = 20, 10.0
    async with start_stack(tmp_path, tap=False, retry_max=0.2, shadow_reopen_rate=rate) as stack:
        proxy, control = stack.proxy, stack.control
        async with one_per_game(proxy.url, clients):
            await wait_until(
                lambda: control.status()["shadow_connected"] == clients, what="every shadow"
            )
            port = stack.new.port
            await stack.new.stop()
            reach = proxy.reach["new"]
            await wait_until(lambda: reach.probes_failed >= 1, what="the shadow found down")
            back = StateServer(
                ServerSettings(db=tmp_path / "new.db", secret=TEST_SECRET, port=port)
            )
            started = time.monotonic()
            await back.start()
            try:
                await wait_until(
                    lambda: control.status()["shadow_connected"] == clients,
                    within=timeout(60),
                    what="every shadow connection back",
                )
                took = time.monotonic() - started
                assert took >= (clients - 1) / rate - 0.05, took
                assert not reach.down
            finally:
                await back.stop()


async def test_a_resync_into_an_unreachable_shadow_reads_nothing_from_the_primary(
    tmp_path: Path,
):
    """With `--resync`, every game of a lost shadow is resynced, and retried: each attempt
    opened an admin connection to the primary and read the game before finding the shadow
    down (3,000 games: 3,000 reads of the primary for nothing, again at every retry)."""
    async with start_stack(tmp_path, comparator=True, resync=True, retry_max=0.2) as stack:
        proxy, comparator = stack.proxy, stack.live.comparator
        failures = comparator.metrics.resync_failures
        registry = stack.old.metrics.registry
        labels = {"path": "admin", "type": "GET_STATE", "result": "ok"}
        async with one_per_game(proxy.url, 1):
            await stack.new.stop()  # the game's automatic resync starts, and fails
            reach = proxy.reach["new"]
            await wait_until(
                lambda: reach.down and failures._value.get() >= 1 and not comparator._resyncing,
                what="the shadow found down, the first resync failed",
            )
            reads = registry.get_sample_value("stateshift_legacy_messages_total", labels)
            for attempt in range(2, 5):  # retried: the shadow is known down

                def failed(n: int = attempt) -> bool:
                    return bool(failures._value.get() >= n)

                comparator.retry_resyncs(time.monotonic() + 3600 * attempt)
                await wait_until(failed, what="a retry")
            assert registry.get_sample_value("stateshift_legacy_messages_total", labels) == reads


#: how each test server answers `GET /healthz`, then what it does with the connection
ANSWERS = {
    # a sized answer, the connection kept open despite `Connection: close`
    "sized, kept open": (b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok", "stay"),
    # no size: only the peer's close would end it
    "unsized, kept open": (b"HTTP/1.1 200 OK\r\n\r\nok", "stay"),
    # a status line, then a reset
    "reset after its status line": (b"HTTP/1.1 503 Service Unavailable\r\n", "reset"),
    # longer than a probe reads
    "oversized": (
        b"HTTP/1.1 404 Not Found\r\nContent-Length: 70000\r\n\r\n" + b"x" * 70000,
        "stay",
    ),
}


@contextlib.asynccontextmanager
async def answering(answer: bytes, then: str) -> AsyncIterator[str]:
    """A TCP server on 127.0.0.1 that answers every request with `answer`, then keeps the
    connection until the peer hangs up (`stay`) or resets it (`reset`); its ws:// URL.
    Every connection's handler has ended on exit."""
    handlers: list[asyncio.Task[None]] = []

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        handlers.append(asyncio.current_task())  # type: ignore[arg-type]
        try:
            await reader.readuntil(b"\r\n\r\n")
            writer.write(answer)
            await writer.drain()
            if then == "reset":
                sock = writer.get_extra_info("socket")
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                writer.transport.abort()
                return
            await reader.read()  # until the peer hangs up
        except (OSError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    try:
        yield f"ws://127.0.0.1:{server.sockets[0].getsockname()[1]}"
    finally:
        server.close()
        for task in handlers:
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.wait_for(task, timeout())
        await server.wait_closed()


@pytest.mark.parametrize("how", list(ANSWERS))
async def test_a_server_that_answered_http_is_reachable_whatever_follows(how: str):
    """The loss probe and the admin plane's `/healthz` probe share one request
    (`proxy.reachability.probe`), read to the end of the answer (the admin plane shows its
    body). A server that answered is reachable whatever follows its status line: the loss
    probe used to read that line only; reading to the end, it called these unreachable and
    kept such a shadow down (review of this session's change)."""
    answer, then = ANSWERS[how]
    async with answering(answer, then) as url:
        reachable, detail = await probe(url, within=timeout(1.0))
        assert reachable, detail
        if how == "sized, kept open":
            # read to its Content-Length, not cut by the probe's bound
            assert detail == "its /healthz: 200 ok", detail
        reach = Reachability(url, rate=100.0, retry_max=0.2, open_timeout=timeout(1.0))
        assert await reach._answers()


async def test_the_relayed_health_check_of_a_server_that_keeps_its_connection_is_its_answer(
    tmp_path: Path,
):
    """A plain HTTP request to the proxy is relayed to the primary. The relay read the
    primary's answer until it closed: a server that answers with a size and keeps the
    connection was answered 502 after `open_timeout` (while the admin plane, reading the same
    answer, called it reachable). It is read to its `Content-Length` now."""
    answer, then = ANSWERS["sized, kept open"]
    async with answering(answer, then) as url:
        settings = proxy_settings(tmp_path / "proxy.db", url, url)
        proxy = MirrorProxy(settings, Route(primary="old"))
        await proxy.start()
        try:
            status, body = await asyncio.to_thread(health, proxy.port)
        finally:
            await proxy.stop()
    assert (status, body) == (200, b"ok")


def health(port: int) -> tuple[int, bytes]:
    """`GET /healthz` on the proxy's client port: (status, body)."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=timeout()) as got:
        return got.status, got.read()
