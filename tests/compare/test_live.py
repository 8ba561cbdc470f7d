"""The comparator inside a running proxy, against real servers: real divergences are found
with the right kind and path, harmless differences are not, drift counts one finding per
game, and a resync makes a diverged game match again."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from compare import live as live_module
from compare.admin import AdminClient
from compare.live import LiveComparison, ResyncRefused
from proxy.admin import CommandError
from proxy.relay import MirrorProxy
from proxy.route import Route
from stateshift.tokens import mint_token
from tests.proxy.conftest import Client, Stack, start_stack, token
from tests.support import TEST_SECRET, timeout, wait_until

Harness = Callable[..., Awaitable[tuple[MirrorProxy, LiveComparison]]]


@pytest.fixture
async def harness(tmp_path: Path) -> AsyncIterator[Harness]:
    """Start old (with faults) + new + proxy + comparator; old is primary."""
    stacks = contextlib.AsyncExitStack()

    async def start(
        *faults: str, resync: bool = False, pair_timeout: float | None = None
    ) -> tuple[MirrorProxy, LiveComparison]:
        # Generous by default: on a loaded machine a partner a second late is not unpaired.
        alone = timeout(10) if pair_timeout is None else pair_timeout
        stack = await stacks.enter_async_context(
            start_stack(tmp_path, *faults, comparator=True, resync=resync, pair_timeout=alone)
        )
        return stack.proxy, stack.live

    async with stacks:
        yield start


async def play(url: str, game: str, players: int, rounds: int, **extra: Any) -> list[Client]:
    """`players` clients make `rounds` score updates each, concurrently."""
    clients = []
    for n in range(players):
        client = await Client.open(f"{url}/v1/games/{game}")
        await client.request(type="CONNECT", id="c", token=token(f"p{n}"))
        clients.append(client)

    async def hammer(client: Client, player: str) -> None:
        for n in range(rounds):
            updates = {"score_deltas": {player: 1}, "settings": {"turn": player}, **extra}
            await client.send(type="STATE_UPDATE", id=f"{player}-{n}", updates=updates)
        await client.until(lambda f: f.get("re") == f"{player}-{rounds - 1}")

    await asyncio.gather(*(hammer(c, f"p{n}") for n, c in enumerate(clients)))
    return clients


def settled(live: LiveComparison, at_least: int) -> Callable[[], bool]:
    """The comparator saw at least this many results and has nothing waiting."""

    def check() -> bool:
        comparator = live.comparator
        judged = sum(comparator.counts.values())
        return judged >= at_least and len(comparator.pairer) == 0

    return check


async def test_two_healthy_servers_under_concurrent_load_never_mismatch(harness: Harness):
    proxy, live = await harness()
    await play(proxy.url, "busy", players=4, rounds=15)
    await wait_until(settled(live, 60), within=timeout(20), what="comparisons")
    status = live.comparator.status()
    assert status["mismatch_ratio"] == 0.0
    assert status["diverged"] == []
    assert status["comparisons"]["broadcast"]["match"] >= 60
    assert status["comparisons"]["answer"]["match"] >= 60
    sweep = await live.sweep_now()
    assert (sweep["findings"], sweep["matched"]) == (0, 1)


@pytest.mark.parametrize("fault", ["reorder-settings", "clock-skew:5000"])
async def test_harmless_differences_produce_no_mismatch(harness: Harness, fault: str):
    proxy, live = await harness(fault)
    await play(proxy.url, "calm", players=2, rounds=10)
    await wait_until(settled(live, 20), within=timeout(20), what="comparisons")
    assert live.comparator.status()["mismatch_ratio"] == 0.0
    assert (await live.sweep_now())["findings"] == 0


async def test_a_logic_divergence_is_one_finding_with_the_scores_path(harness: Harness):
    proxy, live = await harness("score-delta-off-by-one")
    await play(proxy.url, "odd", players=2, rounds=10)
    await wait_until(settled(live, 20), within=timeout(20), what="comparisons")
    comparator = live.comparator
    assert comparator.status()["diverged"] == ["odd"]
    (finding,) = comparator.store.latest()  # drift: one finding for the game
    assert finding["kind"] in ("broadcast", "answer")
    assert "root['state']['scores'][*]" in finding["paths"]
    assert comparator.counts[("broadcast", "diverged")] > 0
    sample = comparator.store.get(finding["id"])
    assert sample is not None
    assert sample["primary"]["state"]["scores"] != sample["shadow"]["state"]["scores"]
    mismatches = proxy.metrics.registry.get_sample_value(
        "stateshift_mismatches_total",
        {"kind": finding["kind"], "path": "root['state']['scores'][*]"},
    )
    assert mismatches == 1.0


async def test_lost_broadcasts_are_unpaired_with_the_missing_side(harness: Harness):
    proxy, live = await harness("drop-broadcast:1.0", pair_timeout=1.0)
    client = await Client.open(f"{proxy.url}/v1/games/quiet")
    await client.request(type="CONNECT", id="c", token=token("p0"))
    await client.request(type="STATE_UPDATE", id="u", updates={"status": "active"})
    await wait_until(
        lambda: live.comparator.store.count() == 1, within=timeout(20), what="an unpaired finding"
    )
    (finding,) = live.comparator.store.latest()
    assert (finding["result"], finding["kind"], finding["missing"]) == (
        "unpaired",
        "broadcast",
        "primary",
    )


async def test_resync_makes_a_diverged_game_match_again(harness: Harness):
    proxy, live = await harness("score-delta-off-by-one", resync=True)
    client = await Client.open(f"{proxy.url}/v1/games/fixme")
    await client.request(type="CONNECT", id="c", token=token("p0"))
    await client.request(type="STATE_UPDATE", id="bad", updates={"score_deltas": {"p0": 1}})
    await wait_until(lambda: live.comparator.resyncs == 1, within=timeout(20), what="a resync")
    assert live.comparator.status()["diverged"] == []
    before = dict(live.comparator.counts)
    for n in range(5):  # no deltas: the fault does not bite, the copies must agree again
        await client.send(type="STATE_UPDATE", id=f"ok{n}", updates={"settings": {"n": str(n)}})
    await client.until(lambda f: f.get("re") == "ok4")
    await wait_until(
        lambda: (
            live.comparator.counts[("broadcast", "match")]
            >= before.get(("broadcast", "match"), 0) + 5
        ),
        within=timeout(20),
        what="matching broadcasts after the resync",
    )
    assert live.comparator.status()["diverged"] == []
    assert (await live.sweep_now())["findings"] == 0
    assert proxy.metrics.registry.get_sample_value("stateshift_resyncs_total") == 1.0


async def test_sweeps_and_resyncs_with_the_shadow_down_fail_and_are_logged_again_and_again(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
):
    """Compiled, a failed sweep or resync once corrupted its exception (an await in an
    `async with` exit while it was in flight) and the proxy died formatting it (segfault):
    here each attempt fails, is logged with its exception, and the process carries on. (A
    server that cannot be reached is logged without a traceback: it says nothing more.)"""
    async with start_stack(tmp_path, comparator=True, resync=True) as stack:
        live = stack.live
        client = await Client.open(f"{stack.proxy.url}/v1/games/arena")
        await client.request(type="CONNECT", id="c", token=token("p0"))
        await stack.new.stop()
        live.sweep_interval = 0.01
        sweeping = asyncio.create_task(live._sweep_loop())
        try:
            for _ in range(5):
                assert await live.comparator._resync("arena", via=live._resync) == -1

            def failures() -> int:
                return sum(
                    r.getMessage().startswith(("snapshot sweep", "resync of arena"))
                    for r in caplog.records
                )

            await wait_until(lambda: failures() >= 25, what="sweeps and resyncs failing")
        finally:
            sweeping.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await sweeping
        logged = [r.getMessage() for r in caplog.records]
        assert any(m.startswith("snapshot sweep skipped: ") for m in logged), logged
        # with resync on, the first failure is logged and tried again later
        assert any(m.startswith("resync of arena failed") for m in logged), logged
        # an admin connection refused is a ConnectionError too: no traceback for it
        tracebacks = [
            r.getMessage()
            for r in caplog.records
            if r.getMessage().startswith("resync of arena") and r.exc_info
        ]
        assert tracebacks == [], tracebacks
        with contextlib.suppress(Exception):
            await client.ws.close()


class GameGate:
    """A TCP forwarder in front of a server that can hold what game connections send to it
    (a shadow slow to read them), while admin connections pass."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.closed = False
        self.held: list[tuple[asyncio.StreamWriter, bytes]] = []
        self.url = ""
        self._server: asyncio.Server | None = None

    async def __aenter__(self) -> GameGate:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        self.url = f"ws://127.0.0.1:{self._server.sockets[0].getsockname()[1]}"
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.close()

    def open(self) -> None:
        self.closed = False
        for writer, data in self.held:
            writer.write(data)
        self.held.clear()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target_port)
        head = await reader.readuntil(b"\r\n\r\n")
        game = head.startswith(b"GET /v1/games/")
        up_writer.write(head)

        async def pump(src: asyncio.StreamReader, dst: asyncio.StreamWriter, gated: bool) -> None:
            while data := await src.read(65536):
                if gated and self.closed:
                    self.held.append((dst, data))
                else:
                    dst.write(data)
            dst.close()

        with contextlib.suppress(OSError):
            await asyncio.gather(pump(reader, up_writer, game), pump(up_reader, writer, False))


async def joined_behind(gate: GameGate, stack: Stack, game: str) -> Client:
    """Put the stack's shadow (the new server) behind `gate`; a client of `game` that
    joined, the shadow's join answered (nothing in flight to it)."""
    stack.proxy.urls["new"] = gate.url
    client = await Client.open(f"{stack.proxy.url}/v1/games/{game}")
    await client.request(type="CONNECT", id="c", token=token("p0"))
    await wait_until(lambda: not stack.proxy.order.busy(game), what="the shadow's join")
    return client


async def test_a_resync_is_refused_while_the_shadow_still_owes_the_games_change(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    """A resync that imported while a change was still on its way to the shadow let that
    change land on the imported copy (applied twice: the copies diverged for good, one
    version apart, which sweeps skip). Past the settle window it now refuses, and the
    shadow applies the change in its order."""
    monkeypatch.setattr(live_module, "SETTLE_SECONDS", 0.05)
    async with (
        start_stack(tmp_path, comparator=True) as stack,
        GameGate(stack.new.port) as gate,
    ):
        order = stack.proxy.order
        client = await joined_behind(gate, stack, "late")
        gate.closed = True  # the shadow is slow to read what comes next
        answer = await client.request(
            type="STATE_UPDATE", id="u", updates={"score_deltas": {"p0": 1}}
        )
        assert answer["type"] == "ACK"
        await wait_until(lambda: order.busy("late"), what="the change on its way to the shadow")
        with pytest.raises(ResyncRefused, match="still owes"):
            await stack.live.resync_now("late")
        with pytest.raises(CommandError) as refused:  # what `stateshift compare resync` gets
            await stack.live._resync_command("ops", {"game_id": "late"})
        assert refused.value.code == "FAILED"
        gate.open()
        await wait_until(lambda: not order.busy("late"), what="the shadow's answer")
        token_ = mint_token(TEST_SECRET, "t", "admin")
        async with (
            AdminClient(stack.old.url, token_) as old,
            AdminClient(stack.new.url, token_) as new,
        ):
            old_state, new_state = await old.get_state("late"), await new.get_state("late")
        assert old_state is not None
        assert new_state is not None
        assert (new_state["version"], new_state["scores"]) == (
            old_state["version"],
            old_state["scores"],
        )


async def test_after_finalize_a_game_is_not_resynced_into_the_retired_old_server(
    tmp_path: Path,
):
    """Mirroring finalized, the old server is retired: a game still marked not comparable
    was resynced into it all the same (and, failing, tried again every minute for good)."""
    async with start_stack(tmp_path, primary="new", comparator=True, resync=True) as stack:
        client = await Client.open(f"{stack.proxy.url}/v1/games/arena")
        await client.request(type="CONNECT", id="c", token=token("p0"))
        await client.request(type="DISCONNECT", id="bye")
        stack.proxy.finalize(Route(primary="new", mirroring=False))
        comparator = stack.live.comparator
        failures = comparator.metrics.resync_failures
        comparator.mark_not_comparable("arena", "shadow lost")
        await wait_until(lambda: failures._value.get() == 1, what="the resync to be refused")
        assert comparator.resyncs == 0
        comparator.retry_resyncs(time.monotonic() + 3600)  # not due: nothing to retry
        for _ in range(5):
            await asyncio.sleep(0)
        assert failures._value.get() == 1


async def test_after_finalize_no_sweep_reports_every_new_game_missing_on_the_old_server(
    tmp_path: Path,
):
    """After finalize the old server is retired. The proxy's sweeps went on comparing every
    game with it: each game created since was a finding ("shadow missing"), a diverged game
    and a StateshiftGameDiverged page, then a resync refused with a traceback (a rehearsal's
    finding). A sweep on demand is now refused, and the periodic one skipped."""
    async with start_stack(tmp_path, primary="new", comparator=True) as stack:
        stack.proxy.finalize(Route(primary="new", mirroring=False))
        client = await Client.open(f"{stack.proxy.url}/v1/games/after")
        await client.request(type="CONNECT", id="c", token=token("p0"))  # new only
        with pytest.raises(CommandError) as refused:
            await stack.live._sweep_command("ops", {})
        assert refused.value.code == "FAILED"
        assert "finalized" in str(refused.value)
        assert stack.live.comparator.diverged == {}
        await client.ws.close()
