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
import time
from pathlib import Path

from proxy.reachability import Reachability, probe
from server.app import ServerSettings, StateServer
from tests.proxy.conftest import one_per_game, start_stack
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


async def test_a_server_that_answers_http_and_keeps_the_connection_is_reachable():
    """The loss probe and the admin plane's `/healthz` probe share one HTTP request
    (`proxy.reachability.probe`). It reads the answer until the server closes (the admin
    plane shows its body), but an upstream that answers and keeps the connection open,
    despite `Connection: close`, has answered: it is reachable (the loss probe read only
    the status line; reading to the end, it would have kept such an upstream down)."""
    answered = asyncio.Event()
    hung_up: list[bool] = []

    async def answer_and_stay(reader: asyncio.StreamReader, writer: asyncio.StreamWriter):
        try:
            await reader.readuntil(b"\r\n\r\n")
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
            await writer.drain()
            answered.set()
            await reader.read()  # until the probe hangs up
        finally:
            writer.close()
            hung_up.append(True)

    server = await asyncio.start_server(answer_and_stay, "127.0.0.1", 0)
    url = f"ws://127.0.0.1:{server.sockets[0].getsockname()[1]}"
    try:
        # the probe's own bound is what ends its read; the answer came long before it
        reachable, detail = await probe(url, within=timeout(1.0))
        assert answered.is_set()
        assert reachable, detail
        assert detail.startswith("answered HTTP, not closed"), detail
        reach = Reachability(url, rate=100.0, retry_max=0.2, open_timeout=timeout(1.0))
        assert await reach._answers()
        await wait_until(lambda: len(hung_up) == 2, what="both probes hung up")
    finally:
        server.close()
        await server.wait_closed()
