"""The switchover path: what a migration engineer running `stateshift switchover …` is told
against what the proxies did (a commit that timed out, an abort racing a prepare), readiness
figures, ramps down and bad numbers. Each test failed before its fix; interleavings are forced
by holding a real lock or by waiting for conditions, never by sleeps."""

from __future__ import annotations

import asyncio
import contextlib
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from websockets.exceptions import ConnectionClosed

from stateshift.control import ADMIN_TOKEN_ENV, ControlClient, ControlError
from tests.proxy.conftest import Client, start_stack, token
from tests.proxy.conftest import Stack as ProxyStack
from tests.support import ROOT, cli_env, timeout, wait_until
from tests.switchover.conftest import ADMIN, Stack, cli


def _warned(doc: dict[str, Any]) -> bool:
    """The switch report says the fleet's routes are not (or may not be) what it intended."""
    switch = doc.get("switch", {})
    states = {p.get("state") for p in switch.get("proxies", [])}
    return "COULD NOT REVERT" in switch.get("message", "") or bool(states & {"mixed", "unknown"})


async def test_a_commit_that_times_out_but_goes_through_is_not_reported_as_switched_back(
    stack: Stack,
):
    """Two proxies; the second one's COMMIT waits (a resync holds its swap lock) past the
    CLI's --timeout, then goes through. The CLI reverts the first proxy and reports
    "commit failed (…TIMEOUT…); the committed proxies were switched back", exit 1, which the
    rollback runbook reads as "routes unchanged: retry". The second proxy then flips: the
    fleet ends with mixed routes (old on one, new on the other) with no warning."""
    quick = await stack.add_proxy()
    held = await stack.add_proxy()
    held.board.quiesce_timeout = timeout(120)  # the commit waits for the resync this long
    await held.proxy.swap_lock.acquire()  # a resync copying a game between the servers
    try:
        outcome = await cli(
            "flip",
            "--proxy",
            quick.admin,
            "--proxy",
            held.admin,
            "--force",
            "--json",
            "--timeout",
            str(timeout(5)),
        )
    finally:
        held.proxy.swap_lock.release()
    # the held COMMIT now goes through on the proxy
    await wait_until(
        lambda: held.board.prepared is None and held.proxy.gate.is_set(),
        what="the held proxy to finish its commit",
    )
    doc = outcome.doc
    states = {p["url"]: p["state"] for p in doc["switch"]["proxies"]}
    assert states.get(quick.admin) in ("committed", "reverted"), doc  # reached the commit
    routes = {quick.admin: quick.route().primary, held.admin: held.route().primary}
    mixed = len(set(routes.values())) > 1
    assert not mixed or _warned(doc), (
        f"the CLI said {doc['switch']['message']!r} (exit {outcome.code}), "
        f"but the fleet ended with mixed routes {routes}"
    )


async def diverged_on_the_old_server(stack: ProxyStack) -> Client:
    """A client of `arena` whose score change the old server (the shadow, off by one)
    applied differently: the game diverged there."""
    client = await Client.open(f"{stack.proxy.url}/v1/games/arena")
    await client.request(type="CONNECT", id="c", token=token("p0"))
    ack = await client.request(type="STATE_UPDATE", id="u", updates={"score_deltas": {"p0": 5}})
    assert ack["type"] == "ACK"
    await wait_until(lambda: stack.proxy.order.idle(), what="the shadow to catch up")
    return client


async def test_ramp_0_is_a_rollback_even_when_a_game_diverged(tmp_path: Path):
    """`ramp --help`: "lowering it does not [need the check] (like rollback) … 0 a rollback".
    After a flip, the old server (now the shadow) diverged on a game: `rollback` resyncs it
    from the primary and goes back; `ramp 0` (and any ramp down) prepares without the resync,
    is refused "game … differs" and leaves every game on the new server: the way back the
    help promises is blocked exactly when it is needed."""
    async with start_stack(
        tmp_path, "score-delta-off-by-one", primary="new", comparator=True, switchboard=True
    ) as stack:
        proxy = stack.proxy
        client = await diverged_on_the_old_server(stack)
        outcome = await cli("ramp", "0", "--proxy", stack.control.url, "--json")
        assert outcome.code == 0, outcome.doc.get("switch", outcome.doc).get("message")
        assert proxy.route.primary == "old"
        answer = await client.request(type="GET_STATE", id="g")
        assert answer["state"]["scores"] == {"p0": 5}  # what the new primary acknowledged
        with contextlib.suppress(ConnectionClosed):
            await client.ws.close()


async def test_the_ramp_command_down_resyncs_like_a_rollback(tmp_path: Path):
    """The control channel's RAMP (what a hand-written script or another tool sends) lowered
    the share without the resync the CLI's ramp does: refused "differs" on a diverged game."""
    async with start_stack(
        tmp_path, "score-delta-off-by-one", primary="new", comparator=True, switchboard=True
    ) as stack:
        proxy = stack.proxy
        client = await diverged_on_the_old_server(stack)
        async with ControlClient(stack.control.url, ADMIN, timeout=timeout(30)) as control:
            answer = await control.request("RAMP", percent=0)
        assert answer["route"]["ramp"] == 0.0
        assert proxy.route.primary_for("arena") == "old"
        state = await client.request(type="GET_STATE", id="g")
        assert state["state"]["scores"] == {"p0": 5}  # what the new primary acknowledged
        with contextlib.suppress(ConnectionClosed):
            await client.ws.close()


async def test_a_shadow_slower_than_the_top_latency_bucket_fails_the_latency_gate(tmp_path: Path):
    """The shadow answers in 3 s, the primary in about a millisecond. The proxy reads the
    shadow's p99 from the +Inf bucket (above 2.5 s) as `inf`, which JSON carries as null: the
    CLI then shows the gate `inconclusive`, "no shadow answer latency samples in the window"
    (exit 3: wait for more traffic), for a shadow a thousand times slower than the bound.
    DESIGN.md: readiness needs "shadow latency within bound"; this one is far outside it."""
    async with start_stack(
        tmp_path, "slow:3000", primary="new", comparator=True, switchboard=True
    ) as stack:
        proxy, board = stack.proxy, stack.board
        client = await Client.open(f"{proxy.url}/v1/games/arena")
        await client.request(type="CONNECT", id="c", token=token("p0"))
        await wait_until(
            lambda: (
                board.figures(300)["shadow_p99"] is not None
                and board.figures(300)["primary_p99"] is not None
            ),
            within=timeout(30),
            what="a latency sample from both upstreams",
        )
        outcome = await cli("check", "--proxy", stack.control.url, "--json", "--window", "300")
        gate = {g["name"]: g for g in outcome.doc["gates"]}["shadow_latency"]
        assert gate["result"] == "fail", gate
        assert outcome.code == 1, outcome.doc["result"]
        with contextlib.suppress(ConnectionClosed):
            await client.ws.close()


async def test_figures_over_a_window_without_a_sample_do_not_count_the_whole_run(tmp_path: Path):
    """FIGURES takes its base from the first sample inside the window; the sampler samples
    every 2 s, so a window of 1 s often holds none, and then the base is empty: the figures
    are every count since the proxy started. `flip --auto-rollback … --check-every 1` asks
    for a window of max(1, elapsed) s, "so figures from before [the flip] cannot hide a
    regression" (Fleet.watch): a mismatch from before the flip then fails the first rounds
    and rolls a healthy flip back (and `check --window 1` judges the whole run)."""
    async with start_stack(
        tmp_path, "score-delta-off-by-one", comparator=True, switchboard=True
    ) as stack:
        proxy, board = stack.proxy, stack.board
        client = await Client.open(f"{proxy.url}/v1/games/arena")
        await client.request(type="CONNECT", id="c", token=token("p0"))
        ack = await client.request(type="STATE_UPDATE", id="u", updates={"score_deltas": {"p0": 1}})
        assert ack["type"] == "ACK"
        await wait_until(
            lambda: board.figures(300)["mismatches"] >= 1, what="the divergence to be counted"
        )
        counted = time.monotonic()
        window = 1.0
        seen: dict[str, Any] = {}

        def a_quiet_window() -> bool:
            """A sample taken after the mismatch, older than the window: read the figures
            now (synchronously: no sample can be added meanwhile)."""
            at, counters, _ = board._samples[-1]
            if at <= counted or time.monotonic() - at <= window:
                return False
            seen["figures"] = board.figures(window)
            seen["since_sample"] = board._read()[0].get("mismatches", 0) - counters.get(
                "mismatches", 0
            )
            return True

        await wait_until(a_quiet_window, within=timeout(30), what="a sample older than 1 s")
        # the window lies after that sample: it cannot hold more than happened since it
        assert seen["figures"]["mismatches"] <= seen["since_sample"], seen
        with contextlib.suppress(ConnectionClosed):
            await client.ws.close()


async def _run_cli_process(*args: str) -> tuple[int | None, str]:
    """`python -m stateshift switchover ARGS` as a process (a hang can be ended: a thread
    cannot); its exit code, or None when it was still running after a generous bound."""
    env = cli_env(**{ADMIN_TOKEN_ENV: ADMIN})
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "stateshift",
        "switchover",
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
        env=env,
        cwd=ROOT,
    )
    try:
        out, _ = await asyncio.wait_for(proc.communicate(), timeout(20))
    except TimeoutError:
        proc.kill()
        out, _ = await proc.communicate()
        return None, out.decode(errors="replace")
    return proc.returncode, out.decode(errors="replace")


@pytest.mark.parametrize(
    "args",
    [
        ("check", "--window", "nan"),
        ("check", "--max-mismatch-ratio", "nan"),
        ("flip", "--force", "--auto-rollback", "nan"),
        ("flip", "--force", "--auto-rollback", "5", "--check-every", "nan"),
    ],
    ids=["check-window", "check-mismatch-ratio", "flip-auto-rollback", "flip-check-every"],
)
async def test_a_nan_number_is_a_usage_error_before_anything_changes(
    stack: Stack, args: tuple[str, ...]
):
    """Exit 2 is "usage or connection error (nothing changed)". `nan` passes every check of
    these numbers (`nan <= 0` is false; Thresholds only refuses negatives): `check --window
    nan` sends a window JSON carries as null and exits 1 ("not ready") on the proxy's
    BAD_MESSAGE; a nan mismatch-ratio bar can never be met; `flip --auto-rollback nan`
    flips, then re-asks FIGURES forever without sleeping (elapsed >= nan is never true), and
    `--check-every nan` flips, then "watches" with asyncio.sleep(nan) (undefined: here it
    reports "no breach in 5 s" at once)."""
    proxy = await stack.add_proxy()
    code, output = await _run_cli_process(*args, "--proxy", proxy.admin, "--timeout", "10")
    assert code == 2, f"exit {code}: {output[-2000:]}"
    assert proxy.route().primary == "old"


async def answer_in_flight(stack: ProxyStack) -> Client:
    """A client whose HEARTBEAT the (slow: 2 s) primary has not answered yet: a PREPARE
    quiesces for it, as long as the switchboard lets it (30 s here)."""
    stack.board.quiesce_timeout = timeout(30)
    client = await Client.open(f"{stack.proxy.url}/v1/games/arena")
    await client.request(type="CONNECT", id="c", token=token("p0"))
    await client.send(type="HEARTBEAT", id="in-flight")
    return client


async def test_an_abort_of_a_prepare_still_under_way_is_not_lost(tmp_path: Path):
    """ABORT runs outside the switches' lock and only looks at `prepared`: while a PREPARE
    is still quiescing (its switch not yet `prepared`), an ABORT with its token answers ok
    (and is recorded "abort ok"), then the PREPARE completes and the clients stay paused
    for the whole hold. The coordinator relies on that ABORT ("a prepare we stopped waiting
    for may still succeed: abort it by our token", Fleet.switch); its ABORT comes on the
    same connection, so it is lost whenever the CLI closes before the slow PREPARE ends
    (the proxy's answer to the PREPARE then fails and the queued ABORT is never read)."""
    async with start_stack(tmp_path, "slow:2000", tap=False, switchboard=True) as stack:
        proxy, board = stack.proxy, stack.board
        client = await answer_in_flight(stack)
        async with (
            ControlClient(stack.control.url, ADMIN, timeout=timeout(30)) as first,
            ControlClient(stack.control.url, ADMIN, timeout=timeout(30)) as second,
        ):
            prepare = asyncio.create_task(
                first.request(
                    "PREPARE", target={"primary": "new"}, hold=60, token="coordinator-token"
                )
            )
            await wait_until(lambda: not proxy.gate.is_set(), what="the prepare to pause")
            under_way = board.prepared is None and not prepare.done()
            await second.request("ABORT", token="coordinator-token", reason="gave up")
            with contextlib.suppress(ControlError):
                await prepare
            if not under_way:  # a machine so slow the prepare ended first: nothing shown
                pytest.skip("the PREPARE ended before the ABORT arrived")
            assert board.prepared is None, "the aborted switch is prepared"
            assert proxy.gate.is_set(), "clients paused after their switch was aborted"
        with contextlib.suppress(ConnectionClosed):
            await client.ws.close()


async def test_a_flip_whose_prepare_timed_out_leaves_no_client_paused(tmp_path: Path):
    """The CLI side of the lost ABORT: the proxy's PREPARE (a slow primary to quiesce and
    verify) outlasts the CLI's --timeout; the CLI sends ABORT by token on the same
    connection, records "abort", exits 1 "not switched" and closes. The proxy then finishes
    the PREPARE, cannot send its answer, never reads the queued ABORT, and keeps every client
    paused for the whole --hold (60 s here) after the engineer was told nothing changed."""
    async with start_stack(tmp_path, "slow:2000", tap=False, switchboard=True) as stack:
        proxy, board = stack.proxy, stack.board
        client = await answer_in_flight(stack)
        outcome = await cli(
            "flip", "--proxy", stack.control.url, "--force", "--json",
            "--timeout", "0.5", "--hold", "60",
        )  # fmt: skip
        # (a connection slower than the --timeout exits 2 before any PREPARE: no finding)
        await wait_until(
            lambda: board.prepared is not None or proxy.gate.is_set(),
            within=timeout(30),
            what="the proxy to finish the prepare",
        )
        assert proxy.gate.is_set(), (
            f"the CLI exited {outcome.code}: {outcome.stdout[-400:]!r}; the proxy is prepared "
            "and its clients paused until the hold expires"
        )
        with contextlib.suppress(ConnectionClosed):
            await client.ws.close()
