"""A shadow whose deadline for `CONNECT` is shorter than the primary's closes a client's
connection (4401) before that client has sent anything the servers judge. The primary has
not judged it yet and may still take the client's late `CONNECT`: this is not a shadow
fault (nothing was sent to the shadow, nothing lost), so the proxy must neither count a
shadow loss nor mark the game not comparable; it opens a fresh shadow connection, and the
client's session is mirrored and compared as if nothing happened."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry
from websockets.asyncio.client import connect
from websockets.asyncio.server import ServerConnection, serve
from websockets.exceptions import ConnectionClosed

from legacy.service import Config, LegacyServer
from server.app import ServerSettings, StateServer
from tests.proxy.conftest import (
    Client,
    ProxyUnderTest,
    start_new,
    start_proxy,
    stop_proxy,
    token,
)
from tests.support import TEST_SECRET, timeout, wait_until

DROPS = "stateshift_proxy_shadow_drops_total"
NOT_COMPARABLE = "stateshift_proxy_games_not_comparable_total"


async def test_a_shadow_closing_before_connect_is_not_a_loss(tmp_path: Path) -> None:
    old = LegacyServer(
        Config(data=tmp_path / "old.jsonl", secret=TEST_SECRET, port=0, connect_timeout=600.0)
    )
    await old.start()
    new = StateServer(
        ServerSettings(db=tmp_path / "new.db", secret=TEST_SECRET, port=0, connect_timeout=0.3)
    )
    await new.start()
    under_test = await start_proxy(tmp_path, old.url, new.url, primary="old")
    proxy = under_test.proxy
    registry = proxy.metrics.registry
    closes = new.metrics.registry
    try:
        client = await Client.open(f"{under_test.url}/v1/games/late-joiner")
        (session,) = proxy.sessions.values()
        await wait_until(lambda: proxy.shadow_ready(session), what="the shadow connection")
        first = session.up["new"]

        def shadow_cut() -> bool:
            return (closes.get_sample_value("stateshift_server_closes_total", {"code": "4401"})
                    or 0) >= 1  # fmt: skip

        await wait_until(shadow_cut, what="the shadow's CONNECT deadline")

        def reconnected() -> bool:
            return session.up.get("new") not in (None, first) and proxy.shadow_ready(session)

        await wait_until(reconnected, what="a fresh shadow connection")
        connected = await client.request(type="CONNECT", id="c", token=token("p0"))
        assert connected["type"] == "CONNECTED", connected
        await client.send(type="STATE_UPDATE", id="u1", updates={"status": "active"})
        ack = await client.until(lambda frame: frame.get("re") == "u1")
        assert ack["type"] == "ACK", ack

        def shadow_answered() -> bool:
            return any(
                record.role == "shadow" and record.msg is not None and record.msg.get("re") == "u1"
                for record in under_test.recorder.records
            )

        await wait_until(shadow_answered, what="the shadow's answer to the update")
        drops = {
            sample.labels["reason"]: sample.value
            for metric in registry.collect()
            if metric.name == DROPS.removesuffix("_total")
            for sample in metric.samples
            if sample.name == DROPS
        }
        assert not any(drops.values()), drops
        assert (registry.get_sample_value(NOT_COMPARABLE, {"reason": "refused"}) or 0) == 0
        shadow_ack = next(
            record.msg
            for record in under_test.recorder.records
            if record.role == "shadow" and record.msg is not None and record.msg.get("re") == "u1"
        )
        assert shadow_ack == ack, (shadow_ack, ack)
    finally:
        await stop_proxy(under_test)
        await new.stop()
        await old.stop()


def drops(registry: CollectorRegistry) -> dict[str, float]:
    """Shadow drops counted so far, by reason (only the reasons with some)."""
    return {
        sample.labels["reason"]: sample.value
        for metric in registry.collect()
        if metric.name == DROPS.removesuffix("_total")
        for sample in metric.samples
        if sample.name == DROPS and sample.value
    }


class DeadlineShadow:
    """A shadow server in front of a real one. The connections listed in `cut` (1: the
    first) are closed 4401 as soon as they open, as a server whose CONNECT deadline passed
    does; the handshakes of the others wait for `release`, then those connections are relayed
    to the real server."""

    def __init__(self, target: str, cut: set[int] | None = None) -> None:
        self.target = target
        self.cut = {1} if cut is None else cut
        self.handshakes = 0
        self.opened = 0
        #: time.monotonic() of each opening
        self.opened_at: list[float] = []
        self.release = asyncio.Event()
        self.url = ""

    async def hold(self, ws: ServerConnection, request: Any) -> None:
        self.handshakes += 1
        if self.handshakes not in self.cut:
            await self.release.wait()

    async def handler(self, ws: ServerConnection) -> None:
        self.opened += 1
        self.opened_at.append(time.monotonic())
        if self.opened in self.cut:
            await ws.close(4401, "no CONNECT in time")
            return
        assert ws.request is not None
        async with connect(self.target + ws.request.path, proxy=None, compression=None) as up:

            async def pump(source: Any, sink: Any) -> None:
                with contextlib.suppress(ConnectionClosed):
                    async for message in source:
                        await sink.send(message)

            tasks = [asyncio.create_task(pump(ws, up)), asyncio.create_task(pump(up, ws))]
            await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
            for task in tasks:
                task.cancel()


@contextlib.asynccontextmanager
async def behind_a_deadline_shadow(
    tmp_path: Path, fake_cut: set[int] | None = None, **settings: Any
) -> AsyncIterator[tuple[ProxyUnderTest, DeadlineShadow]]:
    """A proxy with the old server as primary (a CONNECT deadline of 10 minutes) and a
    `DeadlineShadow` in front of the new server as shadow."""
    old = LegacyServer(
        Config(data=tmp_path / "old.jsonl", secret=TEST_SECRET, port=0, connect_timeout=600.0)
    )
    await old.start()
    new = await start_new(tmp_path)
    fake = DeadlineShadow(new.url, fake_cut)
    shadow = await serve(fake.handler, "127.0.0.1", 0, process_request=fake.hold)
    port = shadow.sockets[0].getsockname()[1] if shadow.sockets else 0
    under_test = await start_proxy(
        tmp_path, old.url, f"ws://127.0.0.1:{port}", primary="old", **settings
    )
    try:
        yield under_test, fake
    finally:
        await stop_proxy(under_test)
        shadow.close()
        await shadow.wait_closed()
        await new.stop()
        await old.stop()


async def test_a_client_leaving_while_its_shadow_reconnects_after_the_deadline_loses_nothing(
    tmp_path: Path,
):
    """The shadow closed at its CONNECT deadline (no loss: the frames wait for a fresh
    connection); the client sends CONNECT while that connection opens, then leaves. The
    CONNECT (a join: a version of the game) must still reach the shadow, and the session end;
    the reconnection used to give up once the client was gone, so `_end`
    waited `answer_timeout` for frames nobody would send, then counted a `stall` loss (and
    the game not comparable)."""
    async with behind_a_deadline_shadow(tmp_path, open_timeout=timeout(30)) as (under_test, fake):
        proxy = under_test.proxy
        registry = proxy.metrics.registry
        client = await Client.open(f"{under_test.url}/v1/games/leaver")
        (session,) = proxy.sessions.values()
        # the first shadow connection was cut at its opening; the second one is opening
        await wait_until(lambda: fake.handshakes >= 2, what="the shadow's reconnection")
        assert drops(registry) == {}, "a deadline close is not a loss"
        connected = await client.request(type="CONNECT", id="c", token=token("p0"))
        assert connected["type"] == "CONNECTED", connected
        conn = proxy.order.conns[session.id]
        await wait_until(
            lambda: bool(conn.entries) and conn.entries[0].kind != 0,
            what="the CONNECT placed by the primary's answer",
        )
        await client.ws.close()
        await wait_until(lambda: session.closed, what="the client's departure")
        fake.release.set()  # the reconnection completes after the client left
        await wait_until(
            lambda: session.id not in proxy.sessions,
            within=timeout(30),
            what="the session's end",
        )
        assert drops(registry) == {}, "nothing was lost: the CONNECT could still be sent"
        assert any(
            record.role == "shadow" and record.msg is not None and record.msg.get("re") == "c"
            for record in under_test.recorder.records
        ), "the shadow never got the client's CONNECT"


async def test_a_shadow_cutting_every_connection_at_once_is_reopened_with_a_growing_backoff(
    tmp_path: Path,
):
    """A shadow that closes every connection 4401 at its opening (before any CONNECT) takes
    the deadline path each time: no loss is counted, and the reopenings back off (0.1, 0.2,
    0.4, 0.8 s…), not reopened every 0.1 s for as long as the client stays (a handshake storm
    that no metric shows). Checked by a lower bound only: a sleep never ends early."""
    async with behind_a_deadline_shadow(tmp_path, set(range(1, 1000))) as (under_test, fake):
        client = await Client.open(f"{under_test.url}/v1/games/idle")
        await wait_until(lambda: fake.opened >= 5, within=timeout(30), what="five cut openings")
        assert drops(under_test.proxy.metrics.registry) == {}
        at = fake.opened_at
        # 0.8 s after the fourth cut (at most a timer's resolution early): 0.1 s before
        assert at[4] - at[3] >= 0.5, f"the reopenings do not back off: {at}"
        await client.ws.close()
