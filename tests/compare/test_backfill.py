"""Backfill: the pure frontier and checkpoint, then real copies from the reference old server
to the new one: exact, idempotent, resumable, and a failing game reported without stopping
the others."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from compare.admin import AdminClient
from compare.backfill import (
    BackfillReport,
    Checkpoint,
    CheckpointError,
    Frontier,
    GameResult,
    backfill,
)
from compare.rules import defaults
from compare.sweep import sweep
from legacy.service import LegacyServer
from server.app import StateServer
from tests.proxy.conftest import Client, start_legacy, start_new, token

ADMIN = token("ops", "admin")


def state(game_id: str, version: int = 3, **changes: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "game_id": game_id,
        "status": "paused",
        "current_player": "bob",
        "scores": {"alice": 7, "bob": 1},
        "timer": {"alice": 500, "bob": 900},
        "settings": {"mode": "classic"},
        "version": version,
        "updated_at": "2026-11-20T08:00:00.456Z",
    }
    base.update(changes)
    return base


# ------------------------------------------------------------------ pure core


def test_frontier_moves_only_over_a_prefix_of_finished_games() -> None:
    frontier = Frontier()
    for game_id in ("a", "b", "c", "d"):
        frontier.start(game_id)
    assert not frontier.finish("b", ok=True)
    assert [frontier.last] == [None]  # (a list: mypy would keep the narrowing)
    assert frontier.finish("a", ok=True)
    assert frontier.last == "b"
    assert frontier.finish("c", ok=True)
    assert frontier.last == "c"


def test_frontier_moves_past_a_failed_game_and_keeps_it_to_retry() -> None:
    frontier = Frontier("0")
    for game_id in ("a", "b", "c"):
        frontier.start(game_id)
    frontier.finish("b", ok=False)
    frontier.finish("c", ok=True)
    assert frontier.last == "0"  # `a` is not done yet
    frontier.finish("a", ok=True)
    assert (frontier.last, frontier.retry) == ("c", ["b"])
    frontier.start("d")
    frontier.finish("d", ok=True)
    assert (frontier.last, frontier.retry) == ("d", ["b"])


def test_checkpoint_round_trips_and_refuses_another_pair_of_servers(tmp_path: Path) -> None:
    path = tmp_path / "ck.json"
    mark = Checkpoint(path, "ws://old", "ws://new")
    assert mark.load_all()[0] is None
    mark.save("g42")
    assert mark.load_all()[0] == "g42"
    with pytest.raises(CheckpointError, match="not from ws://other"):
        Checkpoint(path, "ws://other", "ws://new").load_all()
    path.write_text("not json")
    with pytest.raises(CheckpointError):
        mark.load_all()[0]


def test_report_counts_and_json() -> None:
    report = BackfillReport()
    report.add(GameResult("a", "copied"))
    report.add(GameResult("b", "equal"))
    report.add(GameResult("c", "failed", "target: INVALID_STATE: no"))
    assert (report.games, report.copied, report.equal, report.failed) == (3, 1, 1, 1)
    assert not report.ok
    assert report.to_json()["failures"] == [{"game_id": "c", "error": "target: INVALID_STATE: no"}]


# ------------------------------------------------------------------ real servers


async def play(url: str, game_id: str, settings_chunks: int = 0) -> None:
    """A short game on the old server; `settings_chunks` of 16 settings of 1 KiB each."""
    alice = await Client.open(f"{url}/v1/games/{game_id}")
    try:
        await alice.request(type="CONNECT", id="c", token=token("alice"))
        updates: list[dict[str, Any]] = [{"status": "active"}, {"score_deltas": {"alice": 3}}]
        for chunk in range(settings_chunks):
            updates.append({"settings": {f"k{chunk}_{n}": "x" * 1024 for n in range(16)}})
        for n, update in enumerate(updates):
            msg_id = f"u{n}"
            await alice.send(type="STATE_UPDATE", id=msg_id, updates=update)
            ack = await alice.until(lambda frame: frame.get("re") == msg_id)  # noqa: B023 (awaited in this iteration)
            assert ack["type"] == "ACK", ack
    finally:
        await alice.ws.close()


GAMES = [f"g{n:02d}" for n in range(12)]


@pytest.fixture
async def servers(tmp_path: Path) -> AsyncIterator[tuple[LegacyServer, StateServer]]:
    """The old server with twelve games (four played, eight imported), an empty new one."""
    old = await start_legacy(tmp_path)
    new = await start_new(tmp_path)
    for game_id in GAMES[:4]:
        await play(old.url, game_id)
    async with AdminClient(old.url, ADMIN) as admin:
        for n, game_id in enumerate(GAMES[4:]):
            await admin.import_state(state(game_id, n + 2))
    yield old, new
    await new.stop()
    await old.stop()


async def copy(source: str, target: str, **kwargs: Any) -> BackfillReport:
    async with AdminClient(source, ADMIN) as s, AdminClient(target, ADMIN) as t:
        return await backfill(s, t, **kwargs)


async def states(url: str) -> dict[str, Any]:
    async with AdminClient(url, ADMIN) as admin:
        return {g: await admin.get_state(g) for g in await admin.listing()}


async def test_backfill_copies_every_game_exactly_and_a_sweep_then_finds_nothing(
    servers: tuple[LegacyServer, StateServer],
) -> None:
    old, new = servers
    report = await copy(old.url, new.url)
    assert (report.games, report.copied, report.equal, report.failed) == (12, 12, 0, 0)
    assert report.ok
    copied = await states(new.url)
    assert copied == await states(old.url)  # updated_at and versions included
    assert sorted(copied) == GAMES
    async with AdminClient(old.url, ADMIN) as p, AdminClient(new.url, ADMIN) as s:
        swept = await sweep(p, s, defaults())
    assert (swept.compared, swept.matched, swept.findings) == (12, 12, [])


async def test_backfill_run_twice_copies_nothing_the_second_time(
    servers: tuple[LegacyServer, StateServer],
) -> None:
    old, new = servers
    await copy(old.url, new.url)
    again = await copy(old.url, new.url)
    assert (again.games, again.copied, again.equal, again.failed) == (12, 0, 12, 0)


async def test_backfill_copies_again_a_game_that_changed_since(
    servers: tuple[LegacyServer, StateServer],
) -> None:
    old, new = servers
    await copy(old.url, new.url)
    await play(old.url, "g01")  # two more updates on the source
    again = await copy(old.url, new.url)
    assert (again.copied, again.equal) == (1, 11)
    assert await states(new.url) == await states(old.url)


async def test_dry_run_counts_what_would_be_copied_and_imports_nothing(
    servers: tuple[LegacyServer, StateServer],
) -> None:
    old, new = servers
    report = await copy(old.url, new.url, dry_run=True)
    assert (report.games, report.copied, report.equal) == (12, 12, 0)
    assert report.to_json()["dry_run"] is True
    assert await states(new.url) == {}


async def test_backfill_resumes_after_its_checkpoint(
    servers: tuple[LegacyServer, StateServer], tmp_path: Path
) -> None:
    old, new = servers
    mark = Checkpoint(tmp_path / "backfill.json", old.url, new.url)
    first = await copy(old.url, new.url, checkpoint=mark, limit=5, concurrency=3)
    assert (first.games, first.copied, first.stopped_early) == (5, 5, True)
    assert first.checkpoint == mark.load_all()[0] == "g04"
    assert sorted(await states(new.url)) == GAMES[:5]
    rest = await copy(old.url, new.url, checkpoint=mark)
    assert rest.resumed_after == "g04"
    assert (rest.games, rest.copied, rest.equal, rest.stopped_early) == (7, 7, 0, False)
    assert mark.load_all()[0] == "g11"
    assert await states(new.url) == await states(old.url)


async def test_a_failing_game_is_reported_holds_the_checkpoint_and_the_rest_are_copied(
    servers: tuple[LegacyServer, StateServer], tmp_path: Path
) -> None:
    """A state larger than one frame (64 settings of 1 KiB) cannot be imported: the target
    closes the connection (1009). That game fails; the others are copied."""
    old, new = servers
    await play(old.url, "g05x", settings_chunks=4)
    mark = Checkpoint(tmp_path / "backfill.json", old.url, new.url)
    seen: list[GameResult] = []
    report = await copy(old.url, new.url, checkpoint=mark, on_result=seen.append)
    assert (report.games, report.copied, report.failed) == (13, 12, 1)
    (failure,) = report.failures
    assert failure.game_id == "g05x"
    assert "1009" in failure.detail
    # the checkpoint moved on; a rerun from it retries the failed game first
    after, retry, complete = mark.load_all()
    assert (after, retry, complete) == ("g11", ["g05x"], False)
    assert "g05x" not in await states(new.url)
    assert len(seen) == 13
    assert json.loads(json.dumps(report.to_json()))["failed"] == 1
