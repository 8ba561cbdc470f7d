"""A switch refused for a stalled server: what the refusal leaves behind (no admin
connection left open on the stalled server), who it waits for (not a client that already
left), and what it reports (`paused_ms`, 0 included, at the PREPARE and at the commit).

Real servers on loopback (the stack of `tests/proxy/conftest.py`); the stalled shadow is the
reference old server with `stall-after:N`, as in `test_switch_stalled_shadow.py`, whose
helpers are reused. No test is decided by timing: conditions are waited for with
`tests.support.timeout()`-scaled bounds, and the bounds that must not be reached (quiesce,
verification, the order's answer timeout) are far beyond them.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from proxy.relay import MirrorProxy
from tests.proxy.conftest import Client, Stack, start_stack, token
from tests.proxy.test_switch_stalled_shadow import (
    STALL_BOUND,
    carries_on,
    count_pauses,
    leave,
    old_shadow_stalling,
    owed_for,
    player,
    refusal,
    updated,
)
from tests.support import timeout, wait_until
from tests.switchover.conftest import cli


def admin_readers() -> list[asyncio.Task[object]]:
    """The reader tasks of the admin connections (`stateshift.control.Channel`) still alive
    in this process: the switchboard's, once a switch is answered (no test here opens any
    other Channel while it counts)."""
    return [
        task
        for task in asyncio.all_tasks()
        if not task.done() and getattr(task.get_coro(), "__qualname__", "") == "Channel._read"
    ]


def admin_connections(stack: Stack) -> int:
    """Open connections on the old server's admin path."""
    server = stack.old._server
    assert server is not None
    return sum(
        1
        for conn in server.connections
        if conn.request is not None and conn.request.path.startswith("/v1/admin")
    )


async def test_a_switch_refused_on_a_stalled_admin_connect_leaves_no_admin_connection_open(
    tmp_path: Path,
):
    """Finding 1. The old server (shadow) stalls on the verification's admin CONNECT: the
    switch is refused `stalled` at the stall bound, as intended. But `_answering` ends that
    CONNECT by cancelling it inside `Channel.open`, which closes its connection only on a
    ControlError: the WebSocket to the stalled server and its reader task stay open (the
    AdminClient never learnt of the channel, so the switch's exit stack closes nothing).
    Every such refusal, and every retry of it, leaks one more connection."""
    async with old_shadow_stalling(tmp_path, answered=2) as stack:
        client = await player(stack)  # the shadow's message 1
        await carries_on(client, "before")  # message 2: the admin CONNECT is message 3
        await wait_until(lambda: owed_for(stack.proxy) == 0, what="the shadow to answer both")
        for attempt in range(2):
            refused = await refusal("ROLLBACK", stack, reason=f"stalls on verify {attempt}")
            assert refused.extra.get("reason") == "stalled", refused
            assert "admin CONNECT" in refused.message, refused.message
        await wait_until(
            lambda: admin_connections(stack) == 0 and not admin_readers(),
            within=timeout(10),
            what=(
                "the refused switches' admin connections to the stalled old server to be "
                "closed (still open on the server / readers in the proxy)"
            ),
        )
        await leave(client)


async def test_a_client_that_left_owing_a_stalled_shadow_answer_does_not_hold_the_others(
    tmp_path: Path,
):
    """Finding 2. `_stalled` skips clients that left (`session.closed`). But such a client's
    session stays (and its order connection with it) while `_end` waits for the shadow's
    answers, up to `answer_timeout`, and its unanswered update keeps its game's order busy:
    the quiesce (`order.idle()`) waits for it. With the shadow stalled, no open client owing
    anything, a switch passes the check, pauses every client, and holds them until the
    order gives the shadow up (`answer_timeout`, 5 s by default) or the quiesce bound,
    which is what the commit set out to prevent. Expected: the stall already shows, so the
    switch is refused before pausing (or at the latest at the stall bound)."""
    async with old_shadow_stalling(tmp_path, answered=3) as stack:
        proxy = stack.proxy
        other = await Client.open(f"{proxy.url}/v1/games/lobby")  # the shadow's message 1
        connected = await other.request(type="CONNECT", id="c", token=token("p9"))
        assert connected["type"] == "CONNECTED", connected
        leaving = await player(stack)  # message 2
        await updated(leaving, "u1")  # message 3, answered
        await updated(leaving, "u2")  # message 4: never answered by the shadow
        await leave(leaving)
        await wait_until(
            lambda: any(s.closed for s in proxy.sessions.values()),
            what="the proxy to see the client leave",
        )
        await wait_until(
            lambda: owed_for(proxy) > STALL_BOUND,
            what="the shadow to owe an answer for longer than the stall bound",
        )
        assert not proxy.order.idle(), "the game's order waits for the shadow's answer"
        gate = count_pauses(proxy)
        refused = await refusal("ROLLBACK", stack, reason="the old server stalls")
        assert refused.extra.get("reason") == "stalled", refused
        assert gate.pauses == 0, "the clients were paused for a switch that could not succeed"
        assert gate.is_set()
        assert proxy.route.primary == "new"
        await carries_on(other, "after")
        await leave(other)


async def test_the_history_shows_that_a_refused_switch_paused_no_client(tmp_path: Path):
    """Finding 3. A switch refused before pausing records `paused_ms: 0.0`, and the
    runbook points at it; `stateshift switchover history` drops it, because
    `_details_text` skips values `in (None, "", False)` and `0.0 == False`: a refusal that
    held nobody reads exactly like one whose pause is unknown."""
    async with start_stack(tmp_path, tap=False, switchboard=True) as stack:
        proxy: MirrorProxy = stack.proxy
        client = await player(stack)
        await stack.new.stop()
        await wait_until(
            lambda: all(conn.dead for conn in proxy.order.conns.values()),
            what="the proxy to give the shadow up",
        )
        refused = await refusal("FLIP", stack, reason="the new server is down")
        assert refused.extra.get("paused_ms") == 0.0, refused.extra
        (event,) = await stack.state.history(1)
        assert event["details"]["paused_ms"] == 0.0, event
        outcome = await cli("history", "--proxy", stack.control.url, "--limit", "1", width=400)
        assert outcome.code == 0, outcome
        assert "reason=shadow" in outcome.stdout, outcome.stdout
        assert "paused_ms=0" in outcome.stdout, outcome.stdout
        await leave(client)


async def test_a_flip_refused_at_its_commit_says_how_long_it_held_the_clients(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    """Finding 4. FLIP (prepare + commit in one command) refused in its commit phase (here
    the route cannot be saved: `persist`; equally `shadow` from `_swappable`, after up to
    `quiesce_timeout` of waiting) held every client from the pause to the refusal, but its
    answer and its history record carry no `paused_ms`: the CLI shows "—" (unknown) for a
    proxy that did pause its clients, while a refusal before pausing shows 0.0."""
    async with start_stack(tmp_path, tap=False, switchboard=True) as stack:
        client = await player(stack)
        await carries_on(client, "before")

        async def cannot_save(route: object) -> None:
            raise OSError("disk full")

        monkeypatch.setattr(stack.state, "save_route", cannot_save)
        gate = count_pauses(stack.proxy)
        refused = await refusal("FLIP", stack, reason="the route cannot be saved")
        assert refused.extra.get("reason") == "persist", refused
        assert gate.pauses == 1
        assert gate.is_set()
        assert stack.proxy.route.primary == "old"
        (event,) = await stack.state.history(1)
        assert (event["kind"], event["result"]) == ("flip", "failed"), event
        held = refused.extra.get("paused_ms")
        assert isinstance(held, float), refused.extra
        assert held > 0.0, refused.extra
        assert event["details"].get("paused_ms") == held, event
        await carries_on(client, "after")
        await leave(client)
