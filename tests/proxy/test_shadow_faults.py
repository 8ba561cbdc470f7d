"""Isolation: whatever the shadow does, the client sees exactly what the primary says."""

from __future__ import annotations

from pathlib import Path

import pytest

from server.app import StateServer
from tests.proxy.conftest import start_proxy, stop_proxy
from tests.proxy.test_relay import scripted_session
from tests.support import ServerProcess, timeout, wait_until

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
