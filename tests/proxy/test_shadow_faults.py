"""Isolation: whatever the shadow does, the client sees exactly what the primary says."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
from pathlib import Path
from typing import Any

import pytest
from websockets.exceptions import ConnectionClosed

from compare.admin import AdminClient
from server.app import StateServer
from stateshift.tokens import mint_token
from tests.proxy.conftest import Client, start_proxy, stop_proxy, token
from tests.proxy.test_relay import scripted_session
from tests.support import TEST_SECRET, ServerProcess, timeout, wait_until

DROPS = "stateshift_proxy_shadow_drops_total"
NOT_COMPARABLE = "stateshift_proxy_games_not_comparable_total"
#: fault -> (the proxy's counter that must move, its reason label), or None when the fault
#: is invisible to the proxy (the comparator's business)
FAULTS = {
    "stall-after:3": (DROPS, "stall"),
    "crash-after:4": (DROPS, "crash"),
    "close-early:2": (DROPS, "crash"),
    "refuse-auth": (DROPS, "refused"),
    "garbage:0.5": (NOT_COMPARABLE, "garbage"),
    "slow:200": None,
    "drop-broadcast:0.5": None,
    "score-delta-off-by-one": None,
    "clock-skew:5000": None,
    "reorder-settings": None,
}


@pytest.mark.slow
@pytest.mark.parametrize("fault", sorted(FAULTS))
async def test_a_shadow_fault_changes_nothing_the_client_sees(
    tmp_path: Path, new_server: StateServer, fault: str
):
    shadow = ServerProcess(
        ["legacy", "--port", "0", "--data", str(tmp_path / "shadow.jsonl"), "--fault", fault],
        tmp_path / "shadow.log",
    )
    shadow_url = shadow.start()
    under_test = await start_proxy(
        tmp_path, shadow_url, new_server.url, primary="new", answer_timeout=1.0, gap_timeout=1.0
    )
    try:
        direct = await scripted_session(new_server.url, "direct-game")
        assert await scripted_session(under_test.url, "proxied-game") == direct
        expected = FAULTS[fault]
        if expected is not None:
            name, reason = expected
            registry = under_test.proxy.metrics.registry

            def counted() -> bool:
                return (registry.get_sample_value(name, {"reason": reason}) or 0) >= 1

            await wait_until(counted, within=timeout(15), what=f"{name}{{reason={reason}}}")
    finally:
        await stop_proxy(under_test)
        shadow.stop()


async def test_a_shadow_down_from_the_start_changes_nothing_and_is_counted(
    tmp_path: Path, new_server: StateServer
):
    under_test = await start_proxy(tmp_path, "ws://127.0.0.1:9", new_server.url, primary="new")
    try:
        expected = await scripted_session(new_server.url, "direct-game")
        assert await scripted_session(under_test.url, "proxied-game") == expected
        failures = under_test.proxy.metrics.connect_failures.labels("old", "shadow", "down")
        assert failures._value.get() >= 1
    finally:
        await stop_proxy(under_test)


async def test_a_shadow_that_stalled_is_reconnected_and_mirrored_again(
    tmp_path: Path, new_server: StateServer
):
    """The shadow server freezes (SIGSTOP) past `answer_timeout`: the order gives its
    connection up, and the proxy must not leave the socket open and unused (STATUS would
    call it connected while nothing reaches it). It reconnects, replays the CONNECT, and the
    client's later updates reach the shadow again."""
    shadow = ServerProcess(
        ["legacy", "--port", "0", "--data", str(tmp_path / "shadow.jsonl")], tmp_path / "s.log"
    )
    shadow_url = shadow.start()
    under_test = await start_proxy(
        tmp_path, shadow_url, new_server.url, primary="new", answer_timeout=1.0, gap_timeout=1.0
    )
    proxy = under_test.proxy
    registry = proxy.metrics.registry
    assert shadow.proc is not None
    try:
        client = await Client.open(f"{under_test.url}/v1/games/arena")
        await client.request(type="CONNECT", id="c", token=token("p0"))
        (session,) = proxy.sessions.values()
        first = session.up["old"]
        await wait_until(lambda: proxy.shadow_ready(session), what="the shadow connection")
        os.kill(shadow.proc.pid, signal.SIGSTOP)
        try:
            await client.request(type="HEARTBEAT", id="unanswered-by-the-shadow")

            def stalled() -> bool:
                drops = registry.get_sample_value(DROPS, {"reason": "stall"})
                return (drops or 0) >= 1 and not proxy.shadow_ready(session)

            await wait_until(stalled, within=timeout(15), what="the stall to be declared")
        finally:
            os.kill(shadow.proc.pid, signal.SIGCONT)
        await wait_until(
            lambda: proxy.shadow_ready(session) and session.up["old"] is not first,
            within=timeout(20),
            what="a fresh shadow connection",
        )
        for n in range(3):
            wanted = f"u{n}"
            await client.send(type="STATE_UPDATE", id=wanted, updates={"score_deltas": {"p0": 1}})
            ack = await client.until(lambda frame: frame.get("re") == wanted)  # noqa: B023
            assert ack["type"] == "ACK", ack
        admin = mint_token(TEST_SECRET, "ops", "admin")

        async def shadow_scores() -> Any:
            async with AdminClient(shadow_url, admin) as old:
                state = await old.get_state("arena")
            return state and state["scores"]

        deadline = asyncio.get_running_loop().time() + timeout(15)
        while await shadow_scores() != {"p0": 3}:
            assert asyncio.get_running_loop().time() < deadline, await shadow_scores()
            await asyncio.sleep(0.05)
        assert session.id in proxy.order.conns
        assert not proxy.order.conns[session.id].dead
        with contextlib.suppress(ConnectionClosed):
            await client.ws.close()
    finally:
        await stop_proxy(under_test)
        shadow.stop()
