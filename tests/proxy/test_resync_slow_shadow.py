"""Resyncs of a game under load, with a slow shadow: no false finding.

A rehearsal restarted the old server as the shadow, after a flip, with `--fault slow:50`.
The comparator resynced its games and then reported one "broadcast unpaired, primary
missing" per game every pair timeout, and the watched flip was rolled back for them. Each
resync ends by dropping what waits for the game (`Pairer.forget`). Broadcasts the primary
sent while the resync held the shadow's copies of the game's changes are above the resync's
floor; they were dropped with the rest, and the slow shadow's copies of them came later,
alone: unpaired, a finding, which resynced the game, whose resync did the same again.
"""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path

from tests.proxy.conftest import Client, start_stack
from tests.proxy.test_ordering_races import joined
from tests.support import timeout, wait_until

RESYNCS = 6
#: short, so that a frame left alone is judged within the test
PAIR_TIMEOUT = 1.0
#: between a player's changes: within the servers' rate limit (50 a second per connection)
#: and the slow shadow's pace (one change of a game at a time, 50 ms each)
PACE = 0.08


async def test_resyncs_under_load_with_a_slow_shadow_make_no_false_finding(tmp_path: Path):
    async with start_stack(
        tmp_path,
        "slow:50",  # the old server, here the shadow, answers each message 50 ms late
        primary="new",
        comparator=True,
        resync=True,
        pair_timeout=PAIR_TIMEOUT,
    ) as stack:
        proxy, live = stack.proxy, stack.live
        comparator = live.comparator
        alice, _ = await joined(proxy, f"{proxy.url}/v1/games/g", "alice")
        acked = 0
        stop = asyncio.Event()

        async def play(client: Client) -> None:
            nonlocal acked
            while not stop.is_set():
                await client.send(
                    type="STATE_UPDATE", id="u", updates={"score_deltas": {"alice": 1}}
                )
                answer = await client.until(lambda f: f.get("re") == "u")
                assert answer["type"] == "ACK", answer
                acked += 1
                await asyncio.sleep(PACE)

        async def played(changes: int) -> None:
            await wait_until(lambda: acked >= changes, what="changes after a resync")

        player = asyncio.create_task(play(alice))
        try:
            for _ in range(RESYNCS):
                # changes committed on the primary while the resync holds the shadow's copies
                await live.resync_now("g")
                await played(acked + 5)
        finally:
            stop.set()
            async with asyncio.timeout(timeout()):
                await player
        assert comparator.resyncs >= RESYNCS
        # every frame of the game paired or judged alone (the pair timeout has passed)
        await wait_until(lambda: len(comparator.pairer) == 0, what="every frame judged")
        assert comparator.counts[("broadcast", "match")] > 0
        unpaired = comparator.counts[("broadcast", "unpaired")]
        unpaired += comparator.counts[("answer", "unpaired")]
        assert unpaired == 0, f"{unpaired} frames judged unpaired"
        assert comparator.store.count() == 0, "a resync under load made a finding"
        assert "g" not in comparator.diverged
        with contextlib.suppress(Exception):
            await alice.ws.close()
