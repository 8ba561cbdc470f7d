"""Where the first fix of a finding was incomplete: a flip's verify applies the STATE rules'
paths as sweeps do, a reused id's answer chain dropped by a resync, the connections gauge
after a client left. Each test failed before its follow-up fix.

Real components on 127.0.0.1 (port 0); no outcome decided by timing."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from compare.admin import AdminClient
from compare.pairing import Pairer
from compare.rules import load
from proxy.route import Route
from proxy.switch import Switchboard
from stateshift.tokens import mint_token
from tests.compare.conftest import game_state
from tests.proxy.conftest import Client, start_stack, token
from tests.support import TEST_SECRET, timeout, wait_until

ADMIN = mint_token(TEST_SECRET, "ops", "admin")


async def test_a_flip_honours_the_state_rules_paths_as_sweeps_and_live_comparison_do(
    tmp_path: Path,
) -> None:
    """b0cc79c made sweeps apply the STATE rules' paths (`root['state']['settings']['debug']`)
    by comparing `{"state": state}`; the switchboard's verify (proxy/switch.py `_verify`)
    still diffs the bare states, so the same rule does not hold there: a game that live
    comparison and sweeps call equal makes every FLIP fail `unequal` on
    `root['settings']['debug']` (and a ROLLBACK resyncs a game nobody considers diverged)."""
    rules_file = tmp_path / "rules.toml"
    rules_file.write_text(
        '[rules."*"]\nignore_keys = ["updated_at", "server_time", "session_id"]\n'
        "[rules.STATE]\nexclude_paths = [\"root['state']['settings']['debug']\"]\n"
    )
    rules = load(rules_file)
    async with start_stack(tmp_path, tap=False) as stack:
        async with AdminClient(stack.old.url, ADMIN) as admin:
            await admin.import_state(game_state("g1", debug="on"))
        async with AdminClient(stack.new.url, ADMIN) as admin:
            await admin.import_state(game_state("g1", debug="off"))
        board = Switchboard(stack.proxy, stack.control, stack.state, rules)
        client = await Client.open(f"{stack.proxy.url}/v1/games/g1")
        try:
            connected = await client.request(type="CONNECT", id="c", token=token("p"))
            assert connected["type"] == "CONNECTED", connected
            await wait_until(
                lambda: all(stack.proxy.shadow_ready(s) for s in stack.proxy.sessions.values()),
                within=timeout(),
                what="the shadow connection",
            )
            prepared = await board.prepare(Route(primary="new"))
            await board.commit(prepared.token)
            assert stack.proxy.route.primary == "new"
        finally:
            await client.ws.close()


def test_an_answer_chain_forgotten_by_a_resync_leaves_no_unpaired_finding() -> None:
    """b0cc79c: "an answer whose partner was dropped by a resync is not an unpaired
    finding", and a reused id pairs answers in order (`more`). `forget_game` remembers
    only the head of a reused id's chain in `_forgotten`: the shadow's first late answer is
    dropped, its second one waits alone and expires as a false `unpaired` finding
    ("the primary never sent it"), which marks the freshly resynced game diverged."""
    pairer = Pairer(timeout=10.0)
    ack = {"type": "HEARTBEAT_ACK", "re": "hb"}
    assert pairer.add("primary", dict(ack), 0.0, "g", 1) is None
    assert pairer.add("primary", dict(ack), 0.1, "g", 1) is None  # the id reused
    pairer.forget_game("g")  # a resync of g
    assert pairer.add("shadow", dict(ack), 0.2, "g", 1) is None
    assert pairer.add("shadow", dict(ack), 0.3, "g", 1) is None
    assert pairer.expire(100.0) == []


def _gauge(registry: Any, name: str, **labels: str) -> float:
    value = registry.get_sample_value(name, labels or None)
    return 0.0 if value is None else value


async def test_connections_by_state_do_not_count_a_client_that_left(tmp_path: Path) -> None:
    """448fec9: `stateshift_proxy_connections{state}` is documented (docs/metrics.md) as a
    partition adding up to `client_connections` plus handshakes. A client that left stays in
    `proxy.sessions` while `_end` lets its shadow finish (up to answer_timeout), with
    `client_connections` already decremented: it is still exported as `mirrored` (the same
    closed sessions 5ec8c99 stopped counting in a flip's quiesce/verify)."""
    from tests.compare.test_live import GameGate, joined_behind

    async with (
        start_stack(tmp_path, tap=False, answer_timeout=timeout(30)) as stack,
        GameGate(stack.new.port) as gate,
    ):
        order = stack.proxy.order
        client = await joined_behind(gate, stack, "left")
        (session,) = stack.proxy.sessions.values()
        gate.closed = True  # the shadow is slow to read what comes next
        answer = await client.request(
            type="STATE_UPDATE", id="u", updates={"score_deltas": {"p0": 1}}
        )
        assert answer["type"] == "ACK"
        await wait_until(lambda: order.pending(session.id) > 0, what="a copy owed by the shadow")
        await client.ws.close()
        await wait_until(lambda: session.closed, what="the client's end")
        registry = stack.proxy.metrics.registry
        try:
            clients = _gauge(registry, "stateshift_proxy_client_connections")
            by_state = {
                state: _gauge(registry, "stateshift_proxy_connections", state=state)
                for state in ("handshaking", "mirrored", "held", "relayed", "spliced")
            }
            assert clients == 0.0
            assert sum(by_state.values()) == clients, by_state
        finally:
            gate.open()
