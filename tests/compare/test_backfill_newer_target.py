"""Backfill never moves a target's version backwards.

BUG (CLI audit): `copy_game` imported the source's state whenever the two states differed,
without comparing versions. A target with a NEWER version (the new server already primary
after a flip, or fed by mirrored traffic) was overwritten: its version went backwards and
acknowledged updates were lost, while the run said "copied" and exited 0 ("a rerun is
always safe"). The audit's repro: a game updated once on the old server (version 2), five
times on the new one (version 6); `backfill --from OLD --to NEW` put it back at version 2.

Now such a game is not overwritten: it is reported ("newer on target: not overwritten"),
counted with the failures (exit 1, as documented for failed games) and reported again by
every full rerun; `--overwrite-newer` is the explicit opt-in to import anyway.
Servers run in-process on 127.0.0.1 (port 0), the CLI as a subprocess where exit codes
matter; no test waits on time, only on answers (bounded by `timeout`)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from compare.admin import AdminClient
from compare.backfill import Checkpoint, backfill
from legacy.service import LegacyServer
from server.app import StateServer
from tests.compare.test_backfill import state
from tests.compare.test_backfill_reruns import cli
from tests.proxy.conftest import Client, token

ADMIN = token("ops", "admin")


async def update(url: str, game_id: str, times: int) -> None:
    """`times` acknowledged score deltas by a player on the game path (each one version)."""
    alice = await Client.open(f"{url}/v1/games/{game_id}")
    try:
        await alice.request(type="CONNECT", id="c", token=token("alice"))
        for n in range(times):
            msg_id = f"u{n}"
            await alice.send(type="STATE_UPDATE", id=msg_id, updates={"score_deltas": {"alice": 1}})
            ack = await alice.until(lambda frame: frame.get("re") == msg_id)  # noqa: B023 (awaited here)
            assert ack["type"] == "ACK", ack
    finally:
        await alice.ws.close()


async def get(url: str, game_id: str) -> dict[str, Any] | None:
    async with AdminClient(url, ADMIN) as admin:
        return await admin.get_state(game_id)


async def seed(url: str, *states: dict[str, Any]) -> None:
    async with AdminClient(url, ADMIN) as admin:
        for one in states:
            await admin.import_state(one)


async def audit_repro(old: LegacyServer, new: StateServer) -> dict[str, Any]:
    """The audit's game: version 2 on the old server, version 6 on the new one; returns the
    new server's state."""
    await update(old.url, "g1", 1)
    await update(new.url, "g1", 5)
    source, target = await get(old.url, "g1"), await get(new.url, "g1")
    assert source is not None
    assert target is not None
    assert (source["version"], target["version"]) == (2, 6)
    return target


async def test_cli_backfill_does_not_overwrite_a_newer_target_and_exits_1(
    servers: tuple[LegacyServer, StateServer],
) -> None:
    """The audit's repro through the CLI: the newer game is reported, not overwritten."""
    old, new = servers
    before = await audit_repro(old, new)
    code, out, err = await cli("backfill", "--from", old.url, "--to", new.url, "--json")
    report = json.loads(out)
    after = await get(new.url, "g1")
    assert after == before, (code, report)  # version 6 and its acknowledged updates kept
    assert code == 1, (code, out, err)  # the documented code for failed games
    assert (report["ok"], report["copied"], report["failed"]) == (False, 0, 1)
    assert report["newer_on_target"] == 1
    (failure,) = report["failures"]
    assert failure["game_id"] == "g1"
    assert "newer on target: not overwritten" in failure["error"]
    assert "target version 6, source version 2" in failure["error"]

    # for people: the summary and the progress line say so too
    code, out, err = await cli("backfill", "--from", old.url, "--to", new.url)
    assert code == 1, (code, out, err)
    assert "newer on target" in out
    assert "g1: newer on target: not overwritten" in err
    assert await get(new.url, "g1") == before


async def test_overwrite_newer_is_an_explicit_opt_in(
    servers: tuple[LegacyServer, StateServer],
) -> None:
    """`--overwrite-newer`: the source wins (the operator's decision), exit 0."""
    old, new = servers
    await audit_repro(old, new)
    code, out, err = await cli(
        "backfill", "--from", old.url, "--to", new.url, "--overwrite-newer", "--json"
    )
    assert code == 0, (code, out, err)
    assert json.loads(out)["copied"] == 1
    assert await get(new.url, "g1") == await get(old.url, "g1")


async def test_reruns_leave_a_newer_target_alone_and_copy_everything_else(
    servers: tuple[LegacyServer, StateServer], tmp_path: Path
) -> None:
    """Only the newer game is held back: a missing game, an older one and one at the same
    version with another state (the source is authoritative there) are copied. Reruns with
    the runbook's checkpoint report the newer game every time and never overwrite it."""
    old, new = servers
    before = await audit_repro(old, new)
    await seed(
        old.url,
        state("missing"),
        state("older", 5, scores={"alice": 9, "bob": 1}),
        state("same", 4, scores={"alice": 8, "bob": 1}),
    )
    await seed(new.url, state("older", 3), state("same", 4))
    mark = Checkpoint(tmp_path / "backfill.ckpt", old.url, new.url)
    for run in range(2):
        async with AdminClient(old.url, ADMIN) as s, AdminClient(new.url, ADMIN) as t:
            report = await backfill(s, t, checkpoint=mark)
        assert [f.game_id for f in report.failures] == ["g1"], report.to_json()
        assert (report.failures[0].result, report.newer, report.ok) == ("newer", 1, False)
        assert (report.copied, report.equal) == ((3, 0) if run == 0 else (0, 3))
        assert await get(new.url, "g1") == before
        # not a game to retry (a retry cannot change it): the run completes, and the next
        # one (a refresh from the first game) reports it again
        assert mark.load_all()[1:] == ([], True)
    for game_id in ("missing", "older", "same"):
        assert await get(new.url, game_id) == await get(old.url, game_id)


async def test_dry_run_reports_a_newer_target(
    servers: tuple[LegacyServer, StateServer],
) -> None:
    old, new = servers
    before = await audit_repro(old, new)
    async with AdminClient(old.url, ADMIN) as s, AdminClient(new.url, ADMIN) as t:
        report = await backfill(s, t, dry_run=True)
    assert (report.copied, report.newer, report.failed) == (0, 1, 1)
    assert "newer on target: not overwritten" in report.failures[0].detail
    assert await get(new.url, "g1") == before
