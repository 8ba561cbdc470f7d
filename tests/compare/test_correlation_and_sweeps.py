"""The comparator's correlation (reused ids, answers straddling a resync), what it keeps
(huge integers), its rules file and its sweeps (noise rules, a server lost, a ramp): each
test failed before its fix.

Driven through the real interfaces: the comparator fed tap records as the proxy offers
them, the finding store on a real SQLite file, and `stateshift compare …` against real
servers (or a small fake admin server on 127.0.0.1 where a failure must be staged)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from pathlib import Path
from typing import Any

import orjson
from prometheus_client import CollectorRegistry
from typer.testing import CliRunner
from websockets.asyncio.server import ServerConnection, serve

from compare.admin import AdminClient
from compare.comparator import StateComparator
from compare.diffing import compare
from compare.rules import defaults, load
from compare.store import FindingStore
from proxy.route import Route
from proxy.tap import Tap, TapRecord
from stateshift.cli import app
from tests.compare.conftest import game_state
from tests.proxy.conftest import start_legacy, start_new, start_stack, token
from tests.support import TEST_SECRET, wait_until

ADMIN = token("ops", "admin")


def record(role: str, msg: dict[str, Any], at: float = 0.0, conn: int = 1) -> TapRecord:
    """An upstream frame as the proxy taps it (old is primary)."""
    upstream = "old" if role == "primary" else "new"
    return TapRecord(conn, "upstream", role, upstream, at, "g1", json.dumps(msg), msg)


def heartbeat_ack(re_id: str, server_time: str) -> dict[str, Any]:
    return {"type": "HEARTBEAT_ACK", "re": re_id, "server_time": server_time}


def ack(re_id: str, version: int) -> dict[str, Any]:
    return {"type": "ACK", "re": re_id, "version": version}


def broadcast(version: int, score: int) -> dict[str, Any]:
    return {
        "type": "STATE",
        "game_id": "g1",
        "version": version,
        "state": {"game_id": "g1", "version": version, "scores": {"alice": score}},
    }


def comparator_for(tmp_path: Path, **kwargs: Any) -> StateComparator:
    return StateComparator(
        Tap(),
        defaults(),
        FindingStore(tmp_path / "findings.db"),
        CollectorRegistry(),
        pair_timeout=5,
        **kwargs,
    )


async def invoke(*args: str) -> tuple[int, str, str]:
    """`stateshift ARGS…` in a worker thread: (exit code, stdout, stderr); an uncaught
    exception (a traceback for the user) is shown in stderr as `Traceback: …`."""
    env = {"STATESHIFT_SECRET": TEST_SECRET, "STATESHIFT_ADMIN_TOKEN": ADMIN, "COLUMNS": "160"}
    result = await asyncio.to_thread(CliRunner().invoke, app, list(args), env=env)
    err = result.stderr
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        err += f"\nTraceback: {result.exception!r}"
    return result.exit_code, result.stdout, err


# ------------------------------------------------------------------ correlation


def test_a_reused_request_id_pairs_each_answer_with_its_own_partner(tmp_path: Path) -> None:
    """PROTOCOL.md lets the client choose every `id` (nothing says unique); DESIGN.md pairs
    direct answers by (connection, `re`). A client reusing an id (a heartbeat "hb", an update
    "u") while the shadow lags one answer behind: the primary's second answer overwrote its
    first in the pairer, the shadow's first answer was paired with the primary's second, and
    the shadow's second was left alone: a false `unpaired` finding ("the primary never sent
    it") that marks the game diverged, and the same for ACKs a false version mismatch."""
    comparator = comparator_for(tmp_path)
    comparator.take(
        [
            record("primary", heartbeat_ack("hb", "2026-11-26T10:00:00.000Z"), 0.0),
            record("primary", heartbeat_ack("hb", "2026-11-26T10:00:01.000Z"), 1.0),
            record("shadow", heartbeat_ack("hb", "2026-11-26T10:00:00.002Z"), 1.1),
            record("shadow", heartbeat_ack("hb", "2026-11-26T10:00:01.002Z"), 1.2),
            record("primary", ack("u", 2), 2.0),
            record("primary", ack("u", 3), 2.1),
            record("shadow", ack("u", 2), 2.2),
            record("shadow", ack("u", 3), 2.3),
        ]
    )
    comparator.expire(100.0)
    assert comparator.store.latest() == []
    assert comparator.counts[("answer", "match")] == 4
    assert comparator.status()["diverged"] == []


async def test_an_answer_straddling_a_resync_is_not_an_unpaired_finding(tmp_path: Path) -> None:
    """A game diverges; automatic resync is on. The primary's HEARTBEAT_ACK arrives before the
    resync ends, the shadow's (the same heartbeat, answered a moment later) after it: the
    resync's `forget_game` dropped the primary's copy, so the shadow's waits alone, has no
    version for the resync floor to skip it, and becomes a second finding (`unpaired`,
    missing primary) and a second divergence of a game both servers agree on. Under
    heartbeat traffic every resync breeds a new false finding (and another resync)."""
    gate = asyncio.Event()

    async def resync(game_id: str) -> int:
        await gate.wait()
        return 2

    comparator = comparator_for(tmp_path, resync=resync)
    comparator.take([record("primary", broadcast(2, 1)), record("shadow", broadcast(2, 7))])
    assert comparator.store.count() == 1  # the real divergence: the finding
    comparator.take([record("primary", heartbeat_ack("h7", "2026-11-26T10:00:00.000Z"), 1.0)])
    gate.set()
    await wait_until(lambda: comparator.resyncs == 1, what="the resync")
    comparator.take([record("shadow", heartbeat_ack("h7", "2026-11-26T10:00:00.004Z"), 1.1)])
    comparator.expire(100.0)
    assert comparator.store.count() == 1, comparator.store.latest()
    assert comparator.status()["diverged"] == []
    await comparator.stop()


async def test_a_cancelled_resync_leaves_the_game_compared_and_resyncable(tmp_path: Path) -> None:
    """A resync cancelled under way (a switch's verification that ended, with its resync of a
    game still waiting) left the game marked "resyncing" for good: every later pair of it
    skipped, never compared again, and never resynced again (the comparator's own resync
    refuses a game already resyncing)."""
    started = asyncio.Event()

    async def stuck(game_id: str) -> int:
        started.set()
        await asyncio.Event().wait()  # never answers
        return 0

    comparator = comparator_for(tmp_path)
    task = asyncio.ensure_future(comparator.resync("g1", via=stuck))
    await started.wait()
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    comparator.take([record("primary", ack("u", 2)), record("shadow", ack("u", 3))])
    assert comparator.counts[("answer", "mismatch")] == 1  # compared, not skipped
    assert comparator.store.count() == 1

    async def done(game_id: str) -> int:
        return 3

    assert await comparator.resync("g1", via=done) == 3
    assert comparator.status()["diverged"] == []
    await comparator.stop()


async def test_a_failed_automatic_resync_is_tried_again_until_it_succeeds(tmp_path: Path) -> None:
    """With resync on, a game whose shadow was lost is resynced at once, while the shadow is
    still down: that attempt fails, and it was the only one. The game stayed not comparable
    for good (skipped by every comparison and every sweep) after the shadow came back. A
    failed automatic resync is now tried again once due, until one succeeds."""
    attempts: list[str] = []

    async def flaky(game_id: str) -> int:
        attempts.append(game_id)
        if len(attempts) < 3:
            raise ConnectionError("the shadow is down")
        return 5

    comparator = comparator_for(tmp_path, resync=flaky)
    failures = comparator.metrics.resync_failures
    comparator.mark_not_comparable("g1", "shadow lost")
    await wait_until(lambda: failures._value.get() == 1, what="the first attempt")
    comparator.retry_resyncs(time.monotonic())  # not due yet: nothing starts
    for _ in range(3):
        await asyncio.sleep(0)
    assert attempts == ["g1"]
    comparator.retry_resyncs(time.monotonic() + 3600)
    await wait_until(lambda: failures._value.get() == 2, what="the second attempt")
    comparator.retry_resyncs(time.monotonic() + 3600)
    await wait_until(lambda: comparator.resyncs == 1, what="the third attempt")
    assert attempts == ["g1"] * 3
    assert comparator.status()["not_comparable"] == []
    comparator.retry_resyncs(time.monotonic() + 7200)  # resolved: never tried again
    for _ in range(3):
        await asyncio.sleep(0)
    assert len(attempts) == 3
    await comparator.stop()


async def test_a_resync_on_demand_ending_first_does_not_end_an_automatic_one(
    tmp_path: Path,
) -> None:
    """An automatic resync and one on demand (`stateshift compare resync`) of the same game
    may overlap. The first to end marked the game as no longer resyncing while the other
    still copied it: its frames were compared against a copy being replaced (false
    findings)."""
    started, release = asyncio.Event(), asyncio.Event()

    async def slow(game_id: str) -> int:
        started.set()
        await release.wait()
        return 7

    async def quick(game_id: str) -> int:
        return 5

    comparator = comparator_for(tmp_path, resync=slow)
    comparator.mark_not_comparable("g1", "shadow lost")  # the automatic resync starts
    await started.wait()
    assert await comparator.resync("g1", via=quick) == 5  # on demand, ends first
    comparator.take([record("primary", ack("u", 9)), record("shadow", ack("u", 10))])
    assert comparator.counts[("answer", "mismatch")] == 0  # skipped: still being copied
    assert comparator.store.count() == 0
    release.set()
    await wait_until(lambda: comparator.resyncs == 2, what="the automatic resync")
    comparator.take([record("primary", ack("v", 9)), record("shadow", ack("v", 10))])
    assert comparator.counts[("answer", "mismatch")] == 1  # compared again once both ended
    await comparator.stop()


async def test_games_that_failed_together_are_retried_spread_out(tmp_path: Path) -> None:
    """A shadow down loses every game at once; their retries all fell due in the same turn,
    each taking the proxy's swap lock in turn. Each wait is now drawn between half the delay
    and all of it."""

    async def down(game_id: str) -> int:
        raise ConnectionError("the shadow is down")

    comparator = comparator_for(tmp_path, resync=down, resync_retry=10.0)
    failures = comparator.metrics.resync_failures
    before = time.monotonic()
    for n in range(20):
        comparator.mark_not_comparable(f"g{n}", "shadow lost")
    await wait_until(lambda: failures._value.get() == 20, what="every first attempt")
    after = time.monotonic()
    dues = [due for due, _ in comparator._retries.values()]
    assert len(dues) == 20
    assert all(before + 5.0 <= due <= after + 10.0 for due in dues), dues
    assert len({round(due, 3) for due in dues}) > 10, dues  # not one instant for all
    await comparator.stop()


async def test_a_game_missing_on_the_primary_is_not_resynced_again(tmp_path: Path) -> None:
    """Nothing to copy from (LookupError: the game is on the shadow only): no retries."""
    attempts: list[str] = []

    async def missing(game_id: str) -> int:
        attempts.append(game_id)
        raise LookupError(f"game {game_id} is not on the primary")

    comparator = comparator_for(tmp_path, resync=missing)
    comparator.mark_not_comparable("g1", "shadow lost")
    await wait_until(lambda: comparator.metrics.resync_failures._value.get() == 1)
    comparator.retry_resyncs(time.monotonic() + 3600)
    for _ in range(3):
        await asyncio.sleep(0)
    assert attempts == ["g1"]
    await comparator.stop()


# ------------------------------------------------------------------ samples


def test_a_finding_whose_frame_holds_a_huge_integer_is_kept(tmp_path: Path) -> None:
    """The proxy reads integer literals of any length (stateshift.exactjson), so a shadow
    answering one reaches the comparator. The finding was counted in
    `stateshift_findings_total` and as a mismatch, then the store's orjson refused the
    integer (TypeError): no sample (`compare show` says "no findings"), the game never marked
    diverged, so every later pair of it is judged again, counted as a new mismatch and fails
    the same way (a traceback per frame) instead of counting `diverged` (DESIGN.md, Drift)."""
    comparator = comparator_for(tmp_path)
    registry_value = comparator.metrics.findings.labels("answer")
    huge = 10**30
    comparator.take([record("primary", ack("u", 2)), record("shadow", ack("u", huge))])
    comparator.take([record("primary", ack("v", 3)), record("shadow", ack("v", huge))])
    assert registry_value._value.get() == comparator.store.count() == 1
    (finding,) = comparator.store.latest()
    assert (finding["kind"], finding["result"], finding["key"]) == ("answer", "mismatch", "u")
    assert comparator.status()["diverged"] == ["g1"]
    assert comparator.counts[("answer", "mismatch")] == 1
    assert comparator.counts[("answer", "diverged")] == 1


# ------------------------------------------------------------------ rules


async def test_a_rules_file_that_is_not_utf8_is_a_documented_error(tmp_path: Path) -> None:
    """`compare rules` documents "Exit codes: 0 ok, 2 the rules file is not valid" and
    `load_rules` promises to "exit 2 saying what is wrong with the file". A rules file saved
    in Latin-1 (an accent in a comment) raised UnicodeDecodeError, which `rules.load` did not
    turn into a RulesError: a traceback and exit 1 (the same for `stateshift proxy --rules`)."""
    rules = tmp_path / "rules.toml"
    rules.write_bytes(
        '# r\xe8gles du caf\xe9\n[rules."*"]\nignore_keys = ["updated_at"]\n'.encode("latin-1")
    )
    code, _, err = await invoke("compare", "rules", "--rules", str(rules))
    assert code == 2, err
    assert "error:" in err
    assert "Traceback" not in err


async def test_a_sweep_honours_the_same_state_rule_as_live_comparison(tmp_path: Path) -> None:
    """rules.py documents `exclude_paths` as exact DeepDiff paths such as
    `root['state']['settings']['debug']` per message type, and the sweep compares with the
    `STATE` rules. But the sweep diffs the bare state (`root['settings']['debug']`), so the
    rule that hides the noise in every live STATE comparison does not apply: `compare sweep`
    (the runbook's "Confirm: a sweep finds nothing" after adding a noise rule) reports a
    finding and exits 1, and the proxy's own sweeps mark such games diverged."""
    rules = tmp_path / "rules.toml"
    rules.write_text(
        '[rules."*"]\nignore_keys = ["updated_at", "server_time", "session_id"]\n'
        "[rules.STATE]\nexclude_paths = [\"root['state']['settings']['debug']\"]\n"
    )
    state_rules = load(rules).for_type("STATE")
    primary, shadow = game_state("g1", debug="on"), game_state("g1", debug="off")
    live = compare(
        {"type": "STATE", "game_id": "g1", "version": 3, "state": primary},
        {"type": "STATE", "game_id": "g1", "version": 3, "state": shadow},
        state_rules,
    )
    assert live.equal  # the rule works for live comparison
    old = await start_legacy(tmp_path)
    new = await start_new(tmp_path)
    try:
        async with AdminClient(old.url, ADMIN) as admin:
            await admin.import_state(primary)
        async with AdminClient(new.url, ADMIN) as admin:
            await admin.import_state(shadow)
        code, out, _ = await invoke(
            "compare", "sweep", "--old", old.url, "--new", new.url, "--rules", str(rules), "--json"
        )
    finally:
        await new.stop()
        await old.stop()
    report = json.loads(out)
    assert report["findings"] == [], report["findings"][0]["paths"]
    assert (code, report["matched"]) == (0, 1)


# ------------------------------------------------------------------ CLI


class VanishingAdmin:
    """An admin path that lists one game and drops the connection on every GET_STATE."""

    def __init__(self) -> None:
        self.url = ""

    async def handle(self, ws: ServerConnection) -> None:
        async for raw in ws:
            msg = orjson.loads(raw)
            kind, re_id = msg.get("type"), msg.get("id")
            if kind == "CONNECT":
                answer = {"type": "CONNECTED", "re": re_id, "player_id": "ops", "role": "admin"}
            elif kind == "LIST_GAMES":
                answer = {"type": "GAMES", "re": re_id, "games": [{"game_id": "g1", "version": 3}]}
                answer["next"] = None
            else:
                await ws.close(1011)
                return
            await ws.send(json.dumps(answer))


async def test_a_server_lost_during_a_sweep_exits_2_with_an_error(tmp_path: Path) -> None:
    """`compare sweep`: "Exit codes: 0 no finding, 1 findings, 2 usage or connection errors",
    and sweep() documents that an unreachable server raises `AdminUnreachable`. The workers
    run in an asyncio.TaskGroup, which wraps it in an ExceptionGroup that the CLI's
    `except AdminError` does not catch: a traceback and exit 1, which a script reads as
    "findings" about a server that merely went away."""
    fake = VanishingAdmin()
    new = await start_new(tmp_path)
    try:
        async with AdminClient(new.url, ADMIN) as admin:
            await admin.import_state(game_state("g1"))
        async with serve(fake.handle, "127.0.0.1", 0) as server:
            fake.url = f"ws://127.0.0.1:{server.sockets[0].getsockname()[1]}"
            code, _, err = await invoke(
                "compare", "sweep", "--old", fake.url, "--new", new.url, "--timeout", "5"
            )
    finally:
        await new.stop()
    assert code == 2, err
    assert "error:" in err
    assert "Traceback" not in err


# ------------------------------------------------------------------ snapshot sweeps under a ramp


async def test_a_proxy_sweep_under_a_ramp_names_each_games_own_primary(tmp_path: Path) -> None:
    """Under `switchover ramp` the primary is chosen per game (`Route.primary_for`, and the
    resync uses it), but `LiveComparison.sweep_now` reads every game with `route.primary` as
    the primary. With a 100 % ramp (every game's primary is the new server) a game that only
    the new server has is recorded as "missing on the primary", with the old server's
    (absent) copy shown as the primary's: `compare explain` tells on-call the opposite of
    the truth about which server lacks the game."""
    async with start_stack(tmp_path, comparator=True) as stack:
        stack.proxy.set_route(Route(primary="old", ramp=100.0))
        assert stack.proxy.route.primary_for("r1") == "new"
        only_on_new = game_state("r1")
        async with AdminClient(stack.new.url, ADMIN) as admin:
            await admin.import_state(only_on_new)
        sweep = await stack.live.sweep_now()
        assert sweep["findings"] == 1
        (summary,) = stack.live.comparator.store.latest()
        finding = stack.live.comparator.store.get(summary["id"])
    assert finding is not None
    assert finding["missing"] == "shadow", (finding["missing"], finding["versions"])
    assert finding["primary"] == only_on_new


async def test_after_a_switch_a_disturbed_games_mismatches_around_its_resync_are_set_apart(
    tmp_path: Path,
) -> None:
    """After a flip the old server is the shadow. Restarted (or lost) under the watch, its
    games are marked not comparable and resynced; the frames tapped around the resync pair
    badly (the shadow's catch-up, answers read at another moment) and were counted as
    mismatches since the switch: the watch rolled the clients back onto the old server
    that had just failed. They are now counted apart until `pair_timeout` after the
    resync; a game left alone counts as before."""

    async def done(game_id: str) -> int:
        return 3

    comparator = StateComparator(
        Tap(), defaults(), FindingStore(tmp_path / "f.db"), CollectorRegistry(), pair_timeout=3600
    )
    comparator.mark_epoch(time.time())
    comparator.mark_not_comparable("g1", "shadow lost")
    assert await comparator.resync("g1", via=done) == 3
    comparator.take([record("primary", ack("u", 9)), record("shadow", ack("u", 10))])
    assert comparator.counts[("answer", "mismatch")] == 1  # compared and counted, as ever
    assert comparator.excluded_since_epoch == 1
    assert comparator.excluded_findings == {comparator.diverged["g1"]}
    other = TapRecord(2, "upstream", "primary", "old", 0.0, "g2", "", ack("v", 4))
    twin = TapRecord(2, "upstream", "shadow", "new", 0.0, "g2", "", ack("v", 5))
    comparator.take([other, twin])  # a game left alone since the switch
    assert comparator.counts[("answer", "mismatch")] == 2
    assert comparator.excluded_since_epoch == 1
    comparator.mark_epoch(time.time())  # the next switch starts afresh
    assert (comparator.excluded_since_epoch, comparator.excluded_findings) == (0, set())
    await comparator.stop()
