"""A primary lost under its client with frames it never answered (`ShadowOrder.primary_lost`).

The shadow's order waits for the primary's answer to place each frame. A primary that went
away (crashed, or stalled then closed) never answers the last ones: the proxy waited
`answer_timeout` for them, then gave the *shadow* up as `stall` (a shadow drop, failing the
readiness gate, for a fault of the primary), and the game's other clients' changes waited
behind them. Now those frames are dropped when the primary's connection ends, and the game
is marked not comparable (`primary_lost`) when one of them could have changed it. Real
servers on loopback; the old server as primary stalls (`stall-after`), then stops.
"""

from __future__ import annotations

from pathlib import Path

from websockets.exceptions import ConnectionClosed

from tests.proxy.conftest import Client, start_stack, token
from tests.support import timeout, wait_until

DROPS = "stateshift_proxy_shadow_drops_total"


async def test_frames_a_lost_primary_never_answered_do_not_stall_the_shadow(tmp_path: Path):
    # CONNECT and one update answered; the second update is never answered
    async with start_stack(tmp_path, "stall-after:2", answer_timeout=60.0) as stack:
        proxy = stack.proxy
        client = await Client.open(f"{proxy.url}/v1/games/arena")
        assert (await client.request(type="CONNECT", id="c", token=token("p0")))["type"] == (
            "CONNECTED"
        )
        first = await client.request(
            type="STATE_UPDATE", id="u1", updates={"score_deltas": {"p0": 1}}
        )
        assert first["type"] == "ACK", first
        await client.send(type="STATE_UPDATE", id="u2", updates={"score_deltas": {"p0": 1}})
        await wait_until(lambda: proxy.order.pending(next(iter(proxy.sessions))) > 0)
        await stack.old.stop()  # the stalled primary goes: u2 is never answered
        try:
            await client.until(lambda frame: False)
        except ConnectionClosed:
            pass
        # the session ends at once: not after answer_timeout (60 s) waiting for u2's answer
        await wait_until(lambda: not proxy.sessions, within=timeout(20), what="the session end")
        registry = proxy.metrics.registry
        stalled = registry.get_sample_value(DROPS, {"reason": "stall"})
        assert not stalled, stalled  # the shadow did nothing wrong
        reasons = {n.reason for n in stack.recorder.notices if n.kind == "not_comparable"}
        assert "primary_lost" in reasons, stack.recorder.notices
