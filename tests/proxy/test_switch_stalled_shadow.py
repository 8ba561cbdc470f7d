"""A switch that cannot succeed must not hold the clients: a stalled shadow (connected, not
answering), a shadow that is down, a server that cannot be reached.

The defect these tests were written for: with the old server as the shadow stalled, a
ROLLBACK paused every client for the whole quiesce bound (5 s: the shadow owed the answer
to an update) or for the whole verification bound (10 s: the switch's own admin CONNECT to
the stalled server went unanswered), then was refused as `quiesce` ("0 answers in flight")
or `error` ("TimeoutError: "). Here those bounds are far beyond what any test waits for a
switch's answer (`SWITCH_ANSWER`), and the order never gives the stalled shadow up by
itself: the old behaviour fails every test by the test's own bound. A switch must be
refused before the clients are paused when the stall already shows, and no later than
`stall_timeout` into the pause when it shows only then; the refusal says `stalled` (or
`shadow`, `unreachable`) and how long it held the clients (`paused_ms`), and the CLI shows
both.

Pauses are observed on the proxy's flip gate (every pause clears it: `CountedGate`), and a
client frame sent during a pause must be answered once the switch is refused.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from websockets.exceptions import ConnectionClosed

from proxy.relay import MirrorProxy
from stateshift.control import ControlClient, ControlError
from tests.proxy.conftest import Client, Stack, start_stack, token
from tests.support import ServerProcess, admin_url, proxy_args, timeout, wait_until
from tests.switchover.conftest import cli

ADMIN = token("ops", role="admin")
#: the switchboard's quiesce and verification bounds, and how long the order waits before
#: giving a silent shadow up: far beyond SWITCH_ANSWER, so that a switch held for any of
#: them fails the test instead of passing it late
HELD_FOR_GOOD = timeout(600)
#: the longest a test waits for a switch's answer
SWITCH_ANSWER = timeout(30)
#: the switchboard's stall bound in these tests (a shadow owing an answer longer is stalled)
STALL_BOUND = 0.5


class CountedGate(asyncio.Event):
    """The proxy's flip gate (set: client frames flow), counting the pauses."""

    def __init__(self) -> None:
        super().__init__()
        self.set()
        self.pauses = 0

    def clear(self) -> None:
        self.pauses += 1
        super().clear()


def count_pauses(proxy: MirrorProxy) -> CountedGate:
    gate = CountedGate()
    proxy.gate = gate
    return gate


def owed_for(proxy: MirrorProxy) -> float:
    """How long the shadow has owed its oldest answer, over all clients (0: nothing owed)."""
    now = time.monotonic()
    return max(
        (now - conn.unanswered[0][1] for conn in proxy.order.conns.values() if conn.unanswered),
        default=0.0,
    )


@contextlib.asynccontextmanager
async def old_shadow_stalling(tmp_path: Path, answered: int) -> AsyncIterator[Stack]:
    """The new server primary; the old one its shadow, answering its first `answered`
    messages (all connections together), then nothing while staying connected."""
    async with start_stack(
        tmp_path,
        f"stall-after:{answered}",
        primary="new",
        tap=False,
        switchboard=True,
        answer_timeout=HELD_FOR_GOOD,
    ) as stack:
        stack.board.quiesce_timeout = HELD_FOR_GOOD
        stack.board.verify_timeout = HELD_FOR_GOOD
        stack.board.stall_timeout = STALL_BOUND
        try:
            yield stack
        finally:
            # the silent shadow goes first: a client's end need not wait for its answers
            await stack.old.stop()


async def player(stack: Stack, name: str = "p0") -> Client:
    client = await Client.open(f"{stack.proxy.url}/v1/games/arena")
    connected = await client.request(type="CONNECT", id="c", token=token(name))
    assert connected["type"] == "CONNECTED", connected
    return client


async def refusal(command: str, stack: Stack, **fields: Any) -> ControlError:
    """The control plane's refusal of a switch `command`, within SWITCH_ANSWER."""
    async with ControlClient(stack.control.url, ADMIN, timeout=HELD_FOR_GOOD) as control:
        try:
            async with asyncio.timeout(SWITCH_ANSWER):
                answer = await control.request(command, **fields)
        except ControlError as exc:
            return exc
        except TimeoutError:
            held = not stack.proxy.gate.is_set()
            raise AssertionError(
                f"{command} unanswered after {SWITCH_ANSWER:g} s (clients paused: {held})"
            ) from None
    raise AssertionError(f"{command} went through: {answer}")


async def updated(client: Client, update: str) -> None:
    """A score change of the client's, acknowledged by its primary."""
    await client.send(type="STATE_UPDATE", id=update, updates={"score_deltas": {"p0": 1}})
    answer = await client.until(lambda frame: frame.get("re") == update)
    assert answer["type"] == "ACK", answer


async def carries_on(client: Client, beat: str) -> None:
    """The client's next request is answered by its primary."""
    await client.send(type="HEARTBEAT", id=beat)
    answer = await client.until(lambda frame: frame.get("re") == beat)
    assert answer["type"] == "HEARTBEAT_ACK", answer


async def leave(client: Client) -> None:
    with contextlib.suppress(ConnectionClosed):
        await client.ws.close()


async def test_a_switch_is_refused_before_any_client_is_paused_when_the_shadow_has_stalled(
    tmp_path: Path,
):
    """The old server (shadow) stalls with an update of a client unanswered; once that
    answer is owed for longer than the stall bound, a ROLLBACK is refused at once
    (`stalled`, `paused_ms` 0) without ever pausing the clients, who carry on."""
    async with old_shadow_stalling(tmp_path, answered=2) as stack:
        proxy = stack.proxy
        client = await player(stack)  # the shadow's message 1
        await updated(client, "u1")  # the shadow's message 2, answered
        await updated(client, "u2")  # message 3: never answered by the shadow
        await wait_until(
            lambda: owed_for(proxy) > STALL_BOUND,
            what="the shadow to owe an answer for longer than the stall bound",
        )
        gate = count_pauses(proxy)
        refused = await refusal("ROLLBACK", stack, reason="the old server, while it stalls")
        assert refused.extra.get("reason") == "stalled", refused
        assert "old server (shadow)" in refused.message, refused.message
        assert refused.extra.get("paused_ms") == 0.0, refused.extra
        assert gate.pauses == 0, "the clients were paused for a switch that could not succeed"
        assert gate.is_set()
        assert proxy.route.primary == "new"
        await carries_on(client, "after")
        (event,) = await stack.state.history(1)
        assert (event["kind"], event["result"]) == ("rollback", "failed"), event
        assert event["details"]["reason"] == "stalled", event
        assert event["details"]["paused_ms"] == 0.0, event
        await leave(client)


async def test_a_shadow_stalling_while_the_clients_are_paused_releases_them_at_the_stall_bound(
    tmp_path: Path,
):
    """The shadow's stall shows only once the clients are paused (here: the stall bound is
    lowered during the quiesce, under an answer the shadow already owes): the quiesce
    refuses at once (`stalled`) instead of waiting for its own bound, and the frame a
    client sent meanwhile is answered."""
    async with old_shadow_stalling(tmp_path, answered=2) as stack:
        proxy, board = stack.proxy, stack.board
        board.stall_timeout = HELD_FOR_GOOD  # nothing looks stalled before the pause
        client = await player(stack)
        await updated(client, "u1")
        await updated(client, "u2")  # never answered by the shadow
        await wait_until(lambda: owed_for(proxy) > 0, what="the shadow to owe an answer")
        gate = count_pauses(proxy)
        attempt = asyncio.create_task(refusal("ROLLBACK", stack, reason="stalls during it"))
        await wait_until(lambda: gate.pauses == 1, what="the switch to pause the clients")
        await client.send(type="HEARTBEAT", id="during")  # held by the pause
        board.stall_timeout = 0.05
        refused = await attempt
        assert refused.extra.get("reason") == "stalled", refused
        assert gate.pauses == 1
        assert gate.is_set()
        assert proxy.route.primary == "new"
        answer = await client.until(lambda frame: frame.get("re") == "during")
        assert answer["type"] == "HEARTBEAT_ACK", answer
        await leave(client)


async def test_a_server_stalling_on_the_switchs_own_request_holds_clients_to_the_stall_bound(
    tmp_path: Path,
):
    """The shadow owes the clients nothing, so nothing shows before the pause; it stalls on
    the next message, the verification's admin CONNECT. Refused `stalled` at the stall
    bound (not the verification's), naming that request; the held frame is answered."""
    async with old_shadow_stalling(tmp_path, answered=2) as stack:
        proxy = stack.proxy
        client = await player(stack)  # the shadow's message 1
        await carries_on(client, "before")  # message 2
        await wait_until(lambda: owed_for(proxy) == 0, what="the shadow to answer both")
        gate = count_pauses(proxy)
        attempt = asyncio.create_task(refusal("ROLLBACK", stack, reason="stalls on verify"))
        await wait_until(lambda: gate.pauses == 1, what="the switch to pause the clients")
        await client.send(type="HEARTBEAT", id="during")
        refused = await attempt
        assert refused.extra.get("reason") == "stalled", refused
        assert "old server did not answer an admin CONNECT" in refused.message, refused.message
        assert gate.is_set()
        assert proxy.route.primary == "new"
        answer = await client.until(lambda frame: frame.get("re") == "during")
        assert answer["type"] == "HEARTBEAT_ACK", answer
        await leave(client)


async def test_a_switch_with_the_shadow_down_is_refused_before_any_client_is_paused(
    tmp_path: Path,
):
    """The neighbouring case: the new server (shadow) is down (connection refused). That
    was already refused within milliseconds (`shadow`), but after pausing the clients: now
    they are not paused at all."""
    async with start_stack(tmp_path, tap=False, switchboard=True) as stack:
        proxy = stack.proxy
        client = await player(stack)
        await stack.new.stop()
        await wait_until(
            lambda: all(conn.dead for conn in proxy.order.conns.values()),
            what="the proxy to give the shadow up",
        )
        gate = count_pauses(proxy)
        refused = await refusal("FLIP", stack, reason="the new server is down")
        assert refused.extra.get("reason") == "shadow", refused
        assert gate.pauses == 0, "the clients were paused for a switch that could not succeed"
        assert refused.extra.get("paused_ms") == 0.0, refused.extra
        assert proxy.route.primary == "old"
        await carries_on(client, "after")
        await leave(client)


async def test_a_switch_with_a_server_down_and_no_client_is_refused_as_unreachable(
    tmp_path: Path,
):
    """No client, the new server down: refused `unreachable`, naming the server (it was
    `error`, "AdminUnreachable: …")."""
    async with start_stack(tmp_path, tap=False, switchboard=True) as stack:
        await stack.new.stop()
        refused = await refusal("FLIP", stack, reason="the new server is down")
        assert refused.extra.get("reason") == "unreachable", refused
        assert "new server cannot be reached" in refused.message, refused.message
        assert stack.proxy.route.primary == "old"
        assert stack.proxy.gate.is_set()


@pytest.mark.parametrize("as_json", [True, False], ids=["json", "table"])
async def test_the_cli_shows_a_stalled_shadow_refusal_and_that_no_client_was_paused(
    tmp_path: Path, as_json: bool
):
    """`stateshift switchover rollback` with the old server (shadow) stalled: exit 1, routes
    unchanged, the proxy's refusal (`stalled`, its message) and its pause (0.0 ms)."""
    async with old_shadow_stalling(tmp_path, answered=2) as stack:
        proxy = stack.proxy
        client = await player(stack)
        await updated(client, "u1")
        await updated(client, "u2")  # never answered by the shadow
        await wait_until(
            lambda: owed_for(proxy) > STALL_BOUND,
            what="the shadow to owe an answer for longer than the stall bound",
        )
        gate = count_pauses(proxy)
        args = ["rollback", "--proxy", stack.control.url, "--timeout", str(SWITCH_ANSWER)]
        outcome = await cli(*args, *(["--json"] if as_json else []), width=400)
        assert outcome.code == 1, outcome
        if as_json:
            (result,) = outcome.doc["switch"]["proxies"]
            assert (result["state"], result["reason"]) == ("failed", "stalled"), result
            assert result["paused_ms"] == 0.0, result
            assert "old server (shadow) has owed an answer" in result["error"], result
        else:
            assert "old server (shadow) has owed an answer" in outcome.stdout, outcome.stdout
            assert "(stalled)" in outcome.stdout, outcome.stdout
            assert "0.0 ms" in outcome.stdout, outcome.stdout
        assert gate.pauses == 0
        assert proxy.route.primary == "new"
        await carries_on(client, "after")
        await leave(client)


@contextlib.asynccontextmanager
async def stalling_shadow(tmp_path: Path, *flags: str) -> AsyncIterator[tuple[Client, str]]:
    """A `stateshift proxy` subprocess with `flags`, the new server primary, the old server
    as the shadow stalling after its second message (`stall-after:2`), and a client joined
    through it (the shadow's message 1): (the client, the control plane's URL)."""
    old = ServerProcess(
        ["legacy", "--port", "0", "--data", str(tmp_path / "old.jsonl"), "--fault",
         "stall-after:2"],
        tmp_path / "old.log",
    )  # fmt: skip
    new = ServerProcess(
        ["serve", "--port", "0", "--db", str(tmp_path / "new.db")], tmp_path / "new.log"
    )
    proxy = ServerProcess(
        proxy_args(
            old.start(), new.start(), tmp_path / "proxy.db", "--primary", "new",
            "--answer-timeout", "600", "--sweep-interval", "0", *flags,
        ),
        tmp_path / "proxy.log",
    )  # fmt: skip
    try:
        url = proxy.start()
        client = await Client.open(f"{url}/v1/games/arena")
        connected = await client.request(type="CONNECT", id="c", token=token("p0"))
        assert connected["type"] == "CONNECTED", connected  # the shadow's message 1
        yield client, admin_url(proxy).replace("http://", "ws://", 1)  # `/v1/control`
        await carries_on(client, "after")
        await leave(client)
    finally:
        proxy.stop()
        old.stop()
        new.stop()


async def test_the_switch_bounds_are_options_of_the_proxy(tmp_path: Path):
    """`stateshift proxy --stall-timeout --quiesce-timeout`: with the stall bound set past
    the quiesce bound, a stalled shadow is refused by the quiesce's bound (`quiesce`); with
    the defaults (1 s and 5 s) it would be `stalled`."""
    flags = ("--stall-timeout", "600", "--quiesce-timeout", "0.3")
    async with stalling_shadow(tmp_path, *flags) as (client, control_url):
        await carries_on(client, "answered")  # message 2
        # message 3, a change: the shadow owes its answer from now on, the game's order waits
        await client.send(type="STATE_UPDATE", id="owed", updates={"status": "active"})
        ack = await client.until(lambda frame: frame.get("re") == "owed")
        assert ack["type"] == "ACK", ack
        async with ControlClient(control_url, ADMIN, timeout=timeout(60)) as control:
            with pytest.raises(ControlError) as refused:
                await control.request("ROLLBACK", reason="the switch's bounds as options")
        assert refused.value.extra.get("reason") == "quiesce", refused.value


async def test_the_verification_bound_is_an_option_of_the_proxy(tmp_path: Path):
    """`stateshift proxy --verify-timeout`: a shadow that stalls on the verification's read
    (its admin CONNECT is its second message, the read its third), with the stall bound set
    past it, is refused by the verification's bound as given (it was fixed at 10 s)."""
    flags = ("--stall-timeout", "600", "--verify-timeout", "0.3")
    async with stalling_shadow(tmp_path, *flags) as (_, control_url):
        async with ControlClient(control_url, ADMIN, timeout=timeout(60)) as control:
            with pytest.raises(ControlError) as refused:
                await control.request("ROLLBACK", reason="the verification's bound")
        assert refused.value.extra.get("reason") == "verify", refused.value
        assert "longer than 0.3 s" in refused.value.message, refused.value
