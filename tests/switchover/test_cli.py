"""`stateshift switchover` against real proxies and servers: exit codes, rendering, readiness
with no traffic, flip/rollback cycles under load that close and lose nothing, failed flips that
change nothing, fleets that never end with mixed routes, auto-rollback on a breach."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from websockets.exceptions import ConnectionClosed

from proxy.route import Route
from tests.proxy.conftest import Client, start_legacy, start_new, token
from tests.support import timeout, wait_until
from tests.switchover.conftest import (
    Outcome,
    ProxyStack,
    Stack,
    cli,
    game_state,
    start_players,
)

#: thresholds a small test load can meet: the latency bound is loose because the two
#: in-process servers differ in speed and the test does not judge speed
EASY = ("--min-comparisons", "10", "--max-latency-ratio", "1000", "--window", "60")


async def test_help_documents_the_exit_codes():
    outcome = await cli("--help", width=200)
    assert outcome.code == 0
    assert "3 inconclusive" in " ".join(outcome.stdout.split())
    for command in ("status", "check", "flip", "rollback", "ramp", "finalize", "history"):
        outcome = await cli(command, "--help", width=200)
        assert outcome.code == 0
        assert "Exit" in outcome.stdout, command


async def test_help_documents_every_readiness_flag_with_its_default():
    for command in ("check", "flip", "ramp"):
        outcome = await cli(command, "--help", width=200)
        text = " ".join(outcome.stdout.replace("│", " ").split())  # cells joined
        assert outcome.code == 0
        # rich reads "[...]" as markup: these vanished from the help before
        assert "TOML file with a [readiness] table" in text, command
        for flag, default in (
            ("--window", "(default 300)"),
            ("--min-comparisons", "(default 200)"),
            ("--max-mismatch-ratio", "(default 0.001)"),
            ("--max-diverged", "(default 0)"),
            ("--max-shadow-drops", "(default 0)"),
            ("--max-latency-ratio", "(default 2)"),
        ):
            assert flag in text, (command, flag)
            start = text.index(flag)
            entry = text[start : text.find(" --", start + len(flag))]
            assert default in entry, (command, flag, entry)


async def test_without_a_proxy_or_a_token_it_is_a_usage_error(stack: Stack):
    outcome = await cli("check")
    assert outcome.code == 2
    assert "--proxy" in outcome.stderr
    outcome = await cli("check", "--proxy", "ws://127.0.0.1:9", "--token", "")
    assert outcome.code == 2
    assert "STATESHIFT_ADMIN_TOKEN" in outcome.stderr


async def test_an_unreachable_proxy_is_a_connection_error(stack: Stack):
    outcome = await cli("check", "--proxy", "ws://127.0.0.1:9", "--timeout", "2")
    assert outcome.code == 2
    assert "UNREACHABLE" in outcome.stderr


async def test_bad_thresholds_are_a_usage_error(stack: Stack, tmp_path: Path):
    config = tmp_path / "bad.toml"
    config.write_text("[readiness]\nmin_comparison = 1\n")
    outcome = await cli("check", "--proxy", "ws://127.0.0.1:9", "--config", str(config))
    assert outcome.code == 2
    assert "min_comparison" in outcome.stderr


async def test_check_is_inconclusive_with_no_traffic_and_is_recorded(stack: Stack):
    proxy = await stack.add_proxy()
    outcome = await cli("check", "--proxy", proxy.admin)
    assert outcome.code == 3, outcome
    assert "INCONCLUSIVE" in outcome.stdout
    assert "too little traffic" in outcome.stdout
    outcome = await cli("check", "--proxy", proxy.admin, "--json")
    assert outcome.code == 3
    doc = outcome.doc
    assert doc["result"] == "inconclusive"
    gates = {g["name"]: g for g in doc["gates"]}
    assert (gates["comparisons"]["figure"], gates["comparisons"]["result"]) == (0, "inconclusive")
    assert gates["mismatch_ratio"]["result"] == "inconclusive"
    assert "pass" not in {g["result"] for g in doc["gates"] if g["name"] == "comparisons"}
    events = await proxy.history()
    assert [(e["kind"], e["result"], e["actor"]) for e in events[:2]] == [
        ("check", "inconclusive", "migration-engineer")
    ] * 2
    # without a passing check, flip refuses and changes nothing
    outcome = await cli("flip", "--proxy", proxy.admin)
    assert outcome.code == 3
    assert "refused" in outcome.stdout
    assert proxy.route().primary == "old"


def refusal(outcome: Outcome) -> object:
    """Why a switch was refused, in full: the gates that did not pass (else the whole output)."""
    try:
        gates = outcome.doc["readiness"]["gates"]
    except (KeyError, TypeError, ValueError):
        return outcome
    return [gate for gate in gates if gate.get("result") != "pass"] or outcome


def findings(proxy: ProxyStack) -> list[dict[str, object]]:
    """The comparator's newest findings, in full (what a failed readiness check rests on)."""
    return [proxy.live.store.get(f["id"]) or f for f in proxy.live.store.latest(5)]


@pytest.mark.slow
async def test_twenty_flip_rollback_cycles_under_load_close_nothing_lose_nothing(stack: Stack):
    """20 clients in 4 games; every ACKed update is on both servers exactly once."""
    proxy = await stack.add_proxy()
    # The switch refuses (`stalled`) when a server owes an answer for longer than
    # `stall_timeout` (1 s by default). Here both servers, the proxy, its comparator and the
    # 20 players share one event loop; on a loaded machine (the whole suite on 2 cores) an
    # answer takes longer than that, and the refusal is right. This test judges that a
    # switch closes nothing and loses nothing, not speed (as EASY for latency): a bound
    # that only the machine's load can cross, scaled like every other.
    proxy.board.stall_timeout = timeout(5)
    players = start_players(proxy.proxy.url, games=4, per_game=5)

    async def progress(what: str) -> None:
        """Every player got at least one more ACK (so every game ran under the new route)."""
        before = dict(players.acked)
        await wait_until(
            lambda: all(players.acked[n] > before[n] for n in before),
            within=timeout(20),
            what=what,
        )

    await progress("traffic before the first flip")
    await wait_until(lambda: sum(proxy.live.comparator.counts.values()) >= 10, what="comparisons")
    paused = []
    for cycle in range(20):
        for command, primary in (("flip", "new"), ("rollback", "old")):
            outcome = await cli(
                command, "--proxy", proxy.admin, "--json", *(EASY if command == "flip" else ())
            )
            assert outcome.code == 0, (cycle, command, refusal(outcome), findings(proxy))
            (result,) = outcome.doc["switch"]["proxies"]
            assert result["state"] == "committed"
            paused.append(result["paused_ms"])
            assert proxy.route().primary == primary
            assert len(proxy.proxy.sessions) == 20  # nobody was disconnected
            await progress(f"traffic after {command} {cycle}")
    codes = await players.finish()
    assert codes == [1000] * 20  # every player closed its own connection, normally
    await wait_until(lambda: proxy.proxy.order.idle(), what="the shadow to catch up")
    for g in range(4):
        old, new = (
            await game_state(stack.old.url, f"game{g}"),
            await game_state(stack.new.url, f"game{g}"),
        )
        mine = {n: c for n, c in players.acked.items() if n.startswith(f"p{g}-")}
        assert old["scores"] == new["scores"] == mine  # each ACK applied exactly once, on both
        assert old["version"] == new["version"]
        for key in ("status", "current_player", "timer", "settings"):
            assert old[key] == new[key]
    assert proxy.live.comparator.status()["diverged"] == []
    kinds = [e["kind"] for e in await proxy.history(200)]
    assert kinds.count("commit") == 40
    assert kinds.count("check") == 20
    assert (kinds.count("flip"), kinds.count("rollback")) == (20, 20)


async def test_a_flip_that_fails_midway_leaves_the_route_and_the_clients(
    stack: Stack, monkeypatch: pytest.MonkeyPatch
):
    """The shadow server stops during PREPARE (after the quiesce, before the verification)."""
    proxy = await stack.add_proxy()
    client = await Client.open(f"{proxy.proxy.url}/v1/games/midway")
    await client.request(type="CONNECT", id="c", token=token("alice"))
    await client.request(type="STATE_UPDATE", id="u1", updates={"score_deltas": {"alice": 1}})
    quiesce = proxy.board._quiesce

    async def quiesce_then_the_shadow_dies() -> None:
        await quiesce()
        await stack.new.stop()

    monkeypatch.setattr(proxy.board, "_quiesce", quiesce_then_the_shadow_dies)
    outcome = await cli("flip", "--proxy", proxy.admin, "--force", "--reason", "midway")
    assert outcome.code == 1, outcome
    assert "failed" in outcome.stdout
    assert proxy.route().primary == "old"
    assert proxy.proxy.gate.is_set()  # forwarding resumed
    await client.send(type="HEARTBEAT", id="still-here")
    answer = await client.until(lambda f: f.get("re") == "still-here")
    assert answer["type"] == "HEARTBEAT_ACK"
    await client.send(type="STATE_UPDATE", id="u2", updates={"score_deltas": {"alice": 1}})
    ack = await client.until(lambda f: f.get("re") == "u2")
    assert ack["type"] == "ACK"
    events = await proxy.history()
    assert ("flip", "forced") in {(e["kind"], e["result"]) for e in events}
    assert ("abort", "aborted") in {(e["kind"], e["result"]) for e in events}
    await client.ws.close()


async def test_a_two_proxy_flip_with_one_proxy_down_changes_nothing(stack: Stack):
    up = await stack.add_proxy()
    down = await stack.add_proxy()
    down_admin = down.admin
    await down.control.stop()
    outcome = await cli(
        "flip", "--proxy", up.admin, "--proxy", down_admin, "--force", "--json", "--timeout", "3"
    )
    assert outcome.code == 2, outcome  # a connection error, and nothing was touched
    states = {p["url"]: p["state"] for p in outcome.doc["switch"]["proxies"]}
    assert sorted(states.values()) == ["unchanged", "unreachable"]
    assert up.route().primary == "old"
    assert up.proxy.gate.is_set()
    # without --force the readiness check cannot be made: the same, before anything is sent
    outcome = await cli("flip", "--proxy", up.admin, "--proxy", down_admin, "--timeout", "3")
    assert outcome.code == 2
    assert up.route().primary == "old"


async def test_a_two_proxy_flip_aborts_on_the_other_when_one_cannot_prepare(
    stack: Stack, tmp_path: Path
):
    """One proxy's shadow server is down: its PREPARE fails, the other (prepared, paused) is
    aborted: its route stays the old one and its clients carry on."""
    lonely_new = await start_new(tmp_path, name="lonely")
    healthy = await stack.add_proxy()
    broken = await stack.add_proxy(new_url=lonely_new.url)
    client = await Client.open(f"{healthy.proxy.url}/v1/games/fleet")
    await client.request(type="CONNECT", id="c", token=token("bob"))
    other = await Client.open(f"{broken.proxy.url}/v1/games/fleet2")
    await other.request(type="CONNECT", id="c", token=token("eve"))
    await lonely_new.stop()
    await wait_until(
        lambda: all(s.up.get("new") is None for s in broken.proxy.sessions.values()),
        what="the broken proxy's shadow connection to drop",
    )
    outcome = await cli(
        "flip", "--proxy", healthy.admin, "--proxy", broken.admin, "--force", "--json"
    )
    assert outcome.code == 1, outcome
    states = sorted(p["state"] for p in outcome.doc["switch"]["proxies"])
    assert states == ["aborted", "failed"]
    assert healthy.route().primary == broken.route().primary == "old"
    assert healthy.proxy.gate.is_set()
    assert broken.proxy.gate.is_set()
    kinds = {(e["kind"], e["result"]) for e in await healthy.history()}
    assert {("abort", "ok"), ("abort", "aborted")} <= kinds  # the proxy's and the CLI's
    answer = await client.request(type="HEARTBEAT", id="carry-on")
    assert answer["type"] == "HEARTBEAT_ACK"
    for c in (client, other):
        try:
            await c.ws.close()
        except ConnectionClosed:
            pass


@contextlib.asynccontextmanager
async def one_proxy(
    tmp_path: Path, old_faults: tuple[str, ...] = (), slow_new: bool = False
) -> AsyncIterator[ProxyStack]:
    """A proxy (its comparator and switchboard) in front of the old server (with
    `old_faults`) and the new one; with `slow_new`, a reference server answering 40 ms
    late stands in for the new one."""
    async with contextlib.AsyncExitStack() as exits:
        old = await start_legacy(tmp_path, *old_faults)
        exits.push_async_callback(old.stop)
        new = await start_new(tmp_path)
        exits.push_async_callback(new.stop)
        new_url = None
        if slow_new:
            slow = await start_legacy(tmp_path, "slow:40", name="slow-new")
            exits.push_async_callback(slow.stop)
            new_url = slow.url
        yield await Stack(tmp_path, exits, old, new).add_proxy(new_url=new_url)


async def watched(admin: str, seconds: int, *command: str) -> Outcome:
    """`switchover COMMAND --force --auto-rollback SECONDS` on one proxy, checked every
    0.5 s with a bar of one comparison, as JSON."""
    return await cli(
        *command,
        *("--proxy", admin, "--force", "--auto-rollback", str(seconds), "--check-every", "0.5"),
        *("--min-comparisons", "1", "--json"),
    )


async def test_auto_rollback_on_a_breach_rolls_back_and_records_the_figures(
    tmp_path: Path,
):
    """The new server answers slowly: fine as the shadow, a latency breach as the primary
    (its p99 over twice the old server's): the flip is rolled back.

    The players are paced below what the slow server can absorb (one update at a time per
    game, 40 ms each), so that it does not fall ever further behind as the shadow. On a
    starved machine it may still lag past the pairing timeout, and the unpaired answers then
    breach the mismatch gates as well: the latency gate must be among the breaches, not the
    only one."""
    async with one_proxy(tmp_path, slow_new=True) as proxy:
        players = start_players(proxy.proxy.url, games=1, per_game=3, pace=0.2)
        await wait_until(lambda: players.total() >= 6, within=timeout(20), what="traffic")
        outcome = await watched(proxy.admin, 20, "flip")
        assert outcome.code == 1, outcome
        doc = outcome.doc
        assert doc["switch"]["ok"] is True  # the flip itself worked
        breach = doc["auto_rollback"]
        assert "primary_latency" in [g["name"] for g in breach["breached"]], breach
        assert breach["rollback"]["ok"] is True
        assert proxy.route().primary == "old"
        events = await proxy.history()
        assert [e["kind"] for e in events[:3]] == ["auto-rollback", "rollback", "commit"]
        (recorded,) = [e for e in events if e["kind"] == "auto-rollback"]
        assert recorded["result"] == "ok"
        assert recorded["details"]["figures"]["primary_p99"] > 0
        codes = await players.finish()
        assert codes == [1000] * 3


async def test_a_slow_old_server_after_the_flip_is_no_reason_to_roll_back_to_it(
    tmp_path: Path,
):
    """The old server answers slowly: after the flip it is the shadow, over twice the new
    primary's p99. That failed the `shadow_latency` gate, and the watch rolled the clients
    back onto the slow server. The watch judges the new server: no breach."""
    async with one_proxy(tmp_path, old_faults=("slow:40",)) as proxy:
        players = start_players(proxy.proxy.url, games=1, per_game=3, pace=0.2)
        await wait_until(lambda: players.total() >= 6, within=timeout(20), what="traffic")
        outcome = await watched(proxy.admin, 4, "flip")
        assert outcome.code == 0, outcome
        assert "auto_rollback" not in outcome.doc
        assert proxy.route().primary == "new"
        codes = await players.finish()
        assert codes == [1000] * 3


async def test_a_game_diverged_before_a_forced_flip_does_not_roll_it_back(tmp_path: Path):
    """The watch judges what happens after the flip: a game diverged before it (the flip
    forced past the failing gate; the game has no client now, so the flip's verification
    does not read it) rolled the flip back at the first round."""
    async with one_proxy(tmp_path, old_faults=("score-delta-off-by-one",)) as proxy:
        players = start_players(proxy.proxy.url, games=1, per_game=2, pace=0.05)
        await wait_until(
            lambda: proxy.live.comparator.status()["diverged"] == ["game0"],
            within=timeout(20),
            what="the game to diverge",
        )
        assert await players.finish() == [1000] * 2  # the game is left, diverged
        outcome = await watched(proxy.admin, 3, "flip")
        assert outcome.code == 0, outcome.doc
        assert "auto_rollback" not in outcome.doc
        assert proxy.route().primary == "new"
        assert proxy.live.comparator.status()["diverged"] == ["game0"]


async def test_a_raised_ramp_is_watched_and_ramped_back_on_a_breach(tmp_path: Path):
    """`ramp --auto-rollback`: the new server answers slowly; under a 50 % ramp it is the
    primary of game1 (game0 stays on the old server): its p99 as a primary, over twice the
    old server's, is a breach, and the share goes back to where it was (0 %)."""
    async with one_proxy(tmp_path, slow_new=True) as proxy:
        ramp = Route(primary="old", ramp=50.0)
        assert [ramp.primary_for(g) for g in ("game0", "game1")] == ["old", "new"]
        players = start_players(proxy.proxy.url, games=2, per_game=2, pace=0.2)
        await wait_until(lambda: players.total() >= 8, within=timeout(20), what="traffic")
        outcome = await watched(proxy.admin, 20, "ramp", "50")
        assert outcome.code == 1, outcome
        doc = outcome.doc
        assert doc["switch"]["ok"] is True  # the ramp itself worked
        breach = doc["auto_rollback"]
        assert "primary_latency" in [g["name"] for g in breach["breached"]], breach
        assert breach["rollback"]["ok"] is True
        assert doc["message"].endswith("ramped back to 0%"), doc["message"]
        assert proxy.route() == Route(primary="old")
        events = await proxy.history()
        assert events[0]["kind"] == "auto-rollback"
        assert events[0]["result"] == "ok"
        codes = await players.finish()
        assert codes == [1000] * 4


async def test_a_flip_from_a_ramp_is_rolled_back_to_that_ramp(tmp_path: Path):
    """A flip from a 50 % ramp to a slow new server: the breach takes the fleet back where it
    was, the 50 % ramp, not all the way to the old server."""
    async with one_proxy(tmp_path, slow_new=True) as proxy:
        players = start_players(proxy.proxy.url, games=2, per_game=2, pace=0.2)
        await wait_until(lambda: players.total() >= 8, within=timeout(20), what="traffic")
        ramped = await cli("ramp", "50", "--proxy", proxy.admin, "--force", "--json")
        assert ramped.code == 0, ramped.doc
        outcome = await watched(proxy.admin, 20, "flip")
        assert outcome.code == 1, outcome
        assert outcome.doc["message"].endswith("rolled back to 50%"), outcome.doc["message"]
        assert proxy.route() == Route(primary="old", ramp=50.0)
        codes = await players.finish()
        assert codes == [1000] * 4


async def test_finalize_needs_a_flip_and_a_confirmation_and_ends_rollback(stack: Stack):
    proxy = await stack.add_proxy()
    outcome = await cli("finalize", "--proxy", proxy.admin, "--yes")
    assert outcome.code == 1
    assert "flip first" in outcome.stdout
    assert (await cli("flip", "--proxy", proxy.admin, "--force")).code == 0
    outcome = await cli("finalize", "--proxy", proxy.admin, answer="n\n")
    assert outcome.code == 1
    assert "declined" in outcome.stdout
    assert proxy.route().mirroring is True
    outcome = await cli("finalize", "--proxy", proxy.admin, answer="y\n")
    assert outcome.code == 0, outcome
    assert proxy.route().mirroring is False
    outcome = await cli("rollback", "--proxy", proxy.admin)
    assert outcome.code == 1
    assert "finalized" in outcome.stdout
    assert proxy.route().primary == "new"
    # a flip repeated after finalize is done already (it was refused: "no switch back")
    outcome = await cli("flip", "--proxy", proxy.admin, "--json")
    assert outcome.code == 0, outcome.doc
    assert "already flipped" in outcome.doc["message"]
    assert proxy.route().mirroring is False


async def test_ramp_moves_a_share_of_games_and_back(stack: Stack):
    proxy = await stack.add_proxy()
    outcome = await cli("ramp", "30", "--proxy", proxy.admin)
    assert outcome.code == 3  # raising the share needs evidence, like a flip
    assert proxy.route().ramp is None
    outcome = await cli("ramp", "30", "--proxy", proxy.admin, "--force", "--json")
    assert outcome.code == 0, outcome
    assert proxy.route().ramp == 30.0
    outcome = await cli("ramp", "10", "--proxy", proxy.admin)  # lowering needs no check
    assert outcome.code == 0, outcome
    assert proxy.route().ramp == 10.0
    assert (await cli("ramp", "0", "--proxy", proxy.admin)).code == 0
    assert (proxy.route().primary, proxy.route().ramp) == ("old", None)
    assert (await cli("ramp", "101", "--proxy", proxy.admin)).code == 2


async def test_status_and_history_show_the_route_figures_and_events(stack: Stack):
    proxy = await stack.add_proxy()
    client = await Client.open(f"{proxy.proxy.url}/v1/games/shown")
    await client.request(type="CONNECT", id="c", token=token("carol"))
    await client.request(type="STATE_UPDATE", id="u", updates={"score_deltas": {"carol": 2}})
    await wait_until(lambda: sum(proxy.live.comparator.counts.values()) >= 1, what="a comparison")
    assert (await cli("flip", "--proxy", proxy.admin, "--force", "--reason", "go")).code == 0
    outcome = await cli("status", "--proxy", proxy.admin)
    assert outcome.code == 0, outcome
    text = outcome.stdout
    assert "route: primary new, mirroring" in text
    assert "connections: 1 (1 mirrored, shadow connected for 1" in text
    assert "diverged games (0): none" in text
    assert "commit" in text
    outcome = await cli("status", "--proxy", proxy.admin, "--json")
    (doc,) = outcome.doc["proxies"].values()
    assert doc["status"]["route"]["primary"] == "new"
    outcome = await cli("history", "--proxy", proxy.admin, "--limit", "10")
    assert outcome.code == 0
    assert "migration-engineer" in outcome.stdout
    assert "reason=go" in outcome.stdout
    outcome = await cli("history", "--proxy", proxy.admin, "--json")
    kinds = [e["kind"] for e in outcome.doc["events"]]
    # newest first: the CLI's flip, the proxy's commit, the CLI's record of the --force
    assert kinds[:3] == ["flip", "commit", "flip"]
    assert [e["result"] for e in outcome.doc["events"][:3]] == ["ok", "ok", "forced"]
    await client.ws.close()
    await asyncio.sleep(0)


async def test_a_check_over_a_window_longer_than_the_proxy_has_run_says_so(stack: Stack):
    """A rehearsal: right after a proxy restart, `check` printed "readiness over 300 s" and
    READY on counters the restart had wiped (the drops of the outage before it). The JSON
    said `complete: false`; the table said nothing. It says so now, under the table."""
    proxy = await stack.add_proxy()
    outcome = await cli("check", "--proxy", proxy.admin, "--window", "3600")
    assert "covering less: a proxy started within the window" in outcome.stdout, outcome.stdout
    assert "a proxy started less than the window ago" in outcome.stdout, outcome.stdout


async def test_a_switchs_paused_figure_is_the_whole_pause_its_proxy_recorded(stack: Stack):
    """A rehearsal: the flip's table said "paused 4.1 ms" where the proxy's history said
    8.4 ms. The CLI showed the PREPARE's pause (until the proxy was ready), not the whole
    pause the COMMIT reports (until the clients were released)."""
    proxy = await stack.add_proxy()
    outcome = await cli("flip", "--proxy", proxy.admin, "--force", "--json")
    assert outcome.code == 0, outcome.stdout
    (reported,) = [p["paused_ms"] for p in outcome.doc["switch"]["proxies"]]
    commits = [e for e in await proxy.history() if e["kind"] == "commit"]
    assert commits, await proxy.history()
    assert reported == commits[0]["details"]["paused_ms"]


async def test_check_and_status_warn_when_the_proxies_are_not_on_one_route(stack: Stack):
    """A rehearsal flipped one proxy of two (`flip --proxy A`); `check --proxy A --proxy B`
    then said READY and `status` showed the two routes without a word: only a Prometheus
    alert said that a game's clients may be served by two primaries."""
    first, second = await stack.add_proxy(), await stack.add_proxy()
    flipped = await cli("flip", "--proxy", first.admin, "--force")
    assert flipped.code == 0, flipped.stdout
    fleet = ("--proxy", first.admin, "--proxy", second.admin)
    check = await cli("check", *fleet, "--json")
    assert "not on one route" in check.doc["warning"], check.doc
    status = await cli("status", *fleet)
    assert "warning: the proxies are not on one route" in status.stdout, status.stdout
    # one route again: no warning
    await cli("flip", "--proxy", second.admin, "--force")
    assert "warning" not in (await cli("status", *fleet)).stdout
