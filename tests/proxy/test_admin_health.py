"""The proxy's `/healthz` on its admin port, as a load balancer sees it: real upstream servers,
a real proxy and real HTTP requests on loopback.

503 when the proxy cannot serve clients (an upstream the route makes primary cannot be
reached; the proxy is shutting down), 200 otherwise, with the reasons in the body; a shadow
fault never fails it (clients never see the shadow). Each test failed before: `/healthz`
answered `200 ok` whatever happened.
"""

from __future__ import annotations

import asyncio
import socket
from pathlib import Path

from legacy.service import Config, LegacyServer
from proxy.admin import ControlPlane
from proxy.route import Route
from tests.proxy.conftest import Client, start_legacy, start_new, start_proxy, stop_proxy, token
from tests.support import TEST_SECRET, timeout, wait_until

FAILURES = "stateshift_proxy_upstream_connect_failures_total"


async def healthz(control: ControlPlane) -> tuple[int, str]:
    """GET `/healthz` on the proxy's admin port, as a load balancer does: (status, body)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", control.port)
    try:
        writer.write(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        async with asyncio.timeout(timeout()):
            head = await reader.readuntil(b"\r\n\r\n")
            fields = dict(
                line.split(": ", 1) for line in head.decode("latin-1").split("\r\n")[1:] if line
            )
            body = await reader.readexactly(int(fields["Content-Length"]))
        return int(head.split(b" ", 2)[1]), body.decode()
    finally:
        writer.close()


async def health_becomes(control: ControlPlane, status: int) -> str:
    """Poll `/healthz` until it answers `status`; return that answer's body."""
    seen: list[tuple[int, str]] = []

    async def answers() -> bool:
        seen.append(await healthz(control))
        return seen[-1][0] == status

    try:
        await wait_until(answers, every=0.05, what=f"/healthz to answer {status}")
    except AssertionError as exc:
        raise AssertionError(f"{exc}; last answer: {seen[-1] if seen else None}") from None
    return seen[-1][1]


def dead_url() -> str:
    """A ws:// URL on which nobody listens (the port is closed again at once)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return f"ws://127.0.0.1:{sock.getsockname()[1]}"


async def test_healthz_is_503_while_the_primary_is_unreachable_and_200_once_it_is_back(
    tmp_path: Path,
):
    """The load balancer must stop sending clients to a proxy that cannot reach its primary
    (each would get a 502), and send them again once it can, without any client having to
    try first (none reach a proxy out of rotation)."""
    old = await start_legacy(tmp_path)
    new = await start_new(tmp_path)
    under_test = await start_proxy(tmp_path, old.url, new.url)
    back: LegacyServer | None = None
    try:
        control = under_test.control
        status, body = await healthz(control)
        assert status == 200, body
        assert body.splitlines()[0] == "ok", body

        port = old.port
        await old.stop()
        body = await health_becomes(control, 503)
        assert body.splitlines()[0] == "primary upstream unreachable", body
        assert f"primary old ({old.url}): unreachable" in body
        assert "connection refused" in body
        # since when: the last time a check reached it (not the first check that failed,
        # which is "0 s" however long the server has been down when nobody asked)
        assert "(last reached " in body, body
        assert " s ago)" in body, body

        back = LegacyServer(
            Config(data=tmp_path / "old.jsonl", secret=TEST_SECRET, host="127.0.0.1", port=port)
        )
        await back.start()
        body = await health_becomes(control, 200)
        assert body.splitlines()[0] == "ok", body
        assert f"primary old ({old.url}): reachable, its /healthz: 200 ok" in body, body
        # and 200 means what it says: a client is served again
        client = await Client.open(f"{under_test.url}/v1/games/g1")
        connected = await client.request(type="CONNECT", id="c", token=token("alice"))
        assert connected["type"] == "CONNECTED", connected
        await client.ws.close()
    finally:
        await stop_proxy(under_test)
        if back is not None:
            await back.stop()
        await new.stop()


async def test_healthz_stays_200_with_the_shadow_down_and_says_so(tmp_path: Path):
    """A shadow fault changes nothing for clients: it must never take the proxy out of a
    load balancer; the body still tells on-call that the shadow is not connected."""
    old = await start_legacy(tmp_path)
    under_test = await start_proxy(tmp_path, old.url, dead_url())
    client: Client | None = None
    try:
        client = await Client.open(f"{under_test.url}/v1/games/g1")
        connected = await client.request(type="CONNECT", id="c", token=token("alice"))
        assert connected["type"] == "CONNECTED", connected
        registry = under_test.proxy.metrics.registry
        labels = {"upstream": "new", "role": "shadow", "reason": "down"}
        await wait_until(
            lambda: (registry.get_sample_value(FAILURES, labels) or 0) >= 1,
            what="the shadow's failed connect",
        )

        status, body = await healthz(under_test.control)
        assert status == 200, body
        assert body.splitlines()[0] == "ok", body
        assert "shadow: 0 of 1 mirrored connections connected" in body, body
    finally:
        if client is not None:
            await client.ws.close()
        await stop_proxy(under_test)
        await old.stop()


async def test_healthz_is_503_once_the_proxy_stops_serving(tmp_path: Path):
    """A proxy that is shutting down (its client port closed, its clients told 1012) must
    leave the load balancer, even while its admin port still answers."""
    old = await start_legacy(tmp_path)
    new = await start_new(tmp_path)
    under_test = await start_proxy(tmp_path, old.url, new.url)
    try:
        assert (await healthz(under_test.control))[0] == 200
        await under_test.proxy.stop()
        status, body = await healthz(under_test.control)
        assert status == 503, body
        assert body.splitlines()[0] == "shutting down", body
    finally:
        await stop_proxy(under_test)
        await new.stop()
        await old.stop()


async def test_healthz_under_a_ramp_is_503_when_either_primary_is_unreachable(tmp_path: Path):
    """Under a ramp both servers are primaries (of their share of games): a proxy that
    cannot reach one of them fails that share of its clients."""
    old = await start_legacy(tmp_path)
    new = dead_url()
    under_test = await start_proxy(tmp_path, old.url, new)
    try:
        status, body = await healthz(under_test.control)
        assert status == 200, body  # without a ramp the new server is only the shadow
        under_test.proxy.set_route(Route(primary="old", ramp=10.0))
        body = await health_becomes(under_test.control, 503)
        assert f"primary new ({new}, 10% of games): unreachable" in body, body
        assert f"primary old ({old.url}, 90% of games): reachable" in body, body
    finally:
        await stop_proxy(under_test)
        await old.stop()


async def test_healthz_reports_a_primarys_own_failing_health_without_failing(tmp_path: Path):
    """A primary that answers its own `/healthz` 503 (commits failing) is reachable: it fails
    every proxy alike, so taking them all out of the load balancer would only turn its
    errors into refused connections. The proxy says 200 and passes its answer on."""

    async def failing(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            await reader.readuntil(b"\r\n\r\n")
            body = b"commits failing\n"
            writer.write(
                b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: text/plain\r\n"
                b"Content-Length: %d\r\nConnection: close\r\n\r\n%s" % (len(body), body)
            )
            await writer.drain()
        finally:
            writer.close()

    primary = await asyncio.start_server(failing, "127.0.0.1", 0)
    new = await start_new(tmp_path)
    url = f"ws://127.0.0.1:{primary.sockets[0].getsockname()[1]}"
    under_test = await start_proxy(tmp_path, url, new.url)
    try:
        status, body = await healthz(under_test.control)
        assert status == 200, body
        assert f"primary old ({url}): reachable, its /healthz: 503 commits failing" in body
    finally:
        await stop_proxy(under_test)
        await new.stop()
        primary.close()
        await primary.wait_closed()
