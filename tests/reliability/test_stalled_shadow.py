"""A stalled shadow costs bounded memory: its buffer overflows into a counted drop instead of
growing, and the client is not slowed or changed."""

from __future__ import annotations

from pathlib import Path

from server.app import ServerSettings, StateServer
from tests.proxy.conftest import Client, start_proxy, stop_proxy, token
from tests.support import TEST_SECRET, ServerProcess, timeout, wait_until


async def test_a_stalled_shadow_is_dropped_not_buffered_forever(tmp_path: Path):
    new = StateServer(
        ServerSettings(db=tmp_path / "new.db", secret=TEST_SECRET, port=0, rate=1e5, burst=100_000)
    )
    await new.start()
    shadow = ServerProcess(
        [
            "legacy",
            "--port",
            "0",
            "--data",
            str(tmp_path / "stalled.jsonl"),
            "--fault",
            "stall-after:5",
            "--rate",
            "100000",
            "--burst",
            "100000",
        ],
        tmp_path / "stalled.log",
    )
    shadow_url = shadow.start()
    under_test = await start_proxy(
        tmp_path, shadow_url, new.url, primary="new", shadow_buffer=64, answer_timeout=60.0
    )
    try:
        client = await Client.open(f"{under_test.url}/v1/games/stall")
        await client.request(type="CONNECT", id="c", token=token("p0"))
        depth = []
        for n in range(400):
            answer = await client.request(type="HEARTBEAT", id=f"h{n}")
            assert answer["type"] == "HEARTBEAT_ACK", answer  # the client is not affected
            depth.append(under_test.proxy.order.buffered())
        assert max(depth) <= 64  # never more than the configured buffer
        registry = under_test.proxy.metrics.registry

        def dropped() -> bool:
            value = registry.get_sample_value(
                "stateshift_proxy_shadow_drops_total", {"reason": "overflow"}
            )
            return (value or 0) >= 1

        await wait_until(dropped, within=timeout(10), what="an overflow drop")
        assert len(under_test.recorder.tap) <= under_test.recorder.tap.capacity
    finally:
        await stop_proxy(under_test)
        shadow.stop()
        await new.stop()
