"""`stateshift proxy --drain-timeout`: a SIGTERM lets the clients leave before the proxy stops.

While it drains, `/healthz` answers 503 `draining` (a load balancer sends no new clients) and
every client, a new one too, is still served; the proxy stops as soon as the last client has
left, when the drain's bound passes (the clients left get 1012, "reconnect"), or at once on a
second signal. Before `--drain-timeout`, a SIGTERM closed every client at once and the
control plane stopped before the client port, so a health check got a refused connection.

The bounds given here (600 s) are far above any wait of the tests, so a test that sees the
proxy stop knows that something other than the bound stopped it.
"""

from __future__ import annotations

import asyncio
import signal
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from tests.proxy.conftest import Client, start_legacy, start_new, token
from tests.support import ServerProcess, admin_url, proxy_args, timeout, wait_until

GAME = "drained"


@dataclass
class Proxy:
    process: ServerProcess
    url: str
    admin: str

    async def healthz(self) -> tuple[int, str]:
        """GET `/healthz` on the admin port: (status, body)."""
        where = urlsplit(self.admin)
        reader, writer = await asyncio.open_connection(where.hostname, where.port)
        try:
            writer.write(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
            answer = await asyncio.wait_for(reader.read(), timeout())
        finally:
            writer.close()
        head, _, body = answer.decode().partition("\r\n\r\n")
        return int(head.split()[1]), body

    def signal(self, sig: int = signal.SIGTERM) -> None:
        assert self.process.proc is not None
        self.process.proc.send_signal(sig)

    async def exit_code(self) -> int:
        """Wait for the process to end (bounded by `timeout()`, far below any drain bound)."""
        assert self.process.proc is not None
        return await asyncio.to_thread(self.process.proc.wait, timeout(20))

    async def draining(self) -> str:
        """Wait until `/healthz` says `draining`; return its body."""
        seen: list[tuple[int, str]] = []

        async def says_draining() -> bool:
            seen.append(await self.healthz())
            return seen[-1][0] == 503 and seen[-1][1].startswith("draining\n")

        await wait_until(says_draining, every=0.05, what=f"/healthz to say draining: {seen[-1:]}")
        return seen[-1][1]


@pytest.fixture
async def proxy(tmp_path: Path, request: pytest.FixtureRequest) -> AsyncIterator[Proxy]:
    drain = getattr(request, "param", "600")
    old = await start_legacy(tmp_path)
    new = await start_new(tmp_path)
    process = ServerProcess(
        proxy_args(
            old.url,
            new.url,
            tmp_path / "proxy.db",
            *("--drain-timeout", drain, "--sweep-interval", "0"),
        ),
        tmp_path / "proxy.log",
    )
    try:
        url = await asyncio.to_thread(process.start)
        yield Proxy(process, url, await asyncio.to_thread(admin_url, process))
    finally:
        # in a thread: the upstreams run on this loop and must answer the proxy's closes
        await asyncio.to_thread(process.stop)
        await new.stop()
        await old.stop()


async def join(proxy: Proxy, name: str) -> Client:
    client = await Client.open(f"{proxy.url}/v1/games/{GAME}")
    connected = await client.request(type="CONNECT", id="c", token=token(name))
    assert connected["type"] == "CONNECTED", connected
    return client


async def score(client: Client, name: str, msg_id: str) -> None:
    await client.send(type="STATE_UPDATE", id=msg_id, updates={"score_deltas": {name: 1}})
    answer = await client.until(lambda frame: frame.get("re") == msg_id)
    assert answer["type"] == "ACK", answer


async def test_a_draining_proxy_serves_its_clients_and_stops_when_the_last_one_leaves(
    proxy: Proxy,
):
    status, body = await proxy.healthz()
    assert (status, body.splitlines()[0]) == (200, "ok")
    ann = await join(proxy, "ann")
    proxy.signal()
    body = await proxy.draining()
    assert "connected clients: 1, still served" in body
    await score(ann, "ann", "while-draining")  # served as before
    bea = await join(proxy, "bea")  # a load balancer slow to notice: still served
    await score(bea, "bea", "late-joiner")
    assert proxy.process.proc is not None
    assert proxy.process.proc.poll() is None  # still running: the bound is 600 s
    for client in (ann, bea):
        await client.request(type="DISCONNECT", id="bye")
        assert await client.closed() == 1000
    assert await proxy.exit_code() == 0
    assert "draining: connected clients: 1;" in proxy.process.output()


async def test_a_second_signal_ends_the_drain_at_once_and_the_clients_get_1012(proxy: Proxy):
    ann = await join(proxy, "ann")
    proxy.signal()
    await proxy.draining()
    await score(ann, "ann", "while-draining")
    proxy.signal(signal.SIGINT)
    assert await proxy.exit_code() == 0
    assert await ann.closed() == 1012  # "service restart": reconnect


@pytest.mark.parametrize("proxy", ["0.5"], indirect=True)
async def test_when_the_drain_bound_passes_the_clients_left_get_1012(proxy: Proxy):
    ann = await join(proxy, "ann")
    proxy.signal()
    assert await proxy.exit_code() == 0
    assert await ann.closed() == 1012
    assert "draining: connected clients: 1; stopping once they have left, or in 0.5 s" in (
        proxy.process.output()
    )


@pytest.mark.parametrize("proxy", ["0"], indirect=True)
async def test_without_a_drain_a_signal_closes_the_clients_at_once(proxy: Proxy):
    ann = await join(proxy, "ann")
    proxy.signal()
    assert await proxy.exit_code() == 0
    assert await ann.closed() == 1012
    assert "draining" not in proxy.process.output()
