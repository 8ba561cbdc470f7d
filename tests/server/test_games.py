"""The group-commit writer on its own (`server.games.Games` over a real SQLite file): drain,
flush and commit waiters, a failed batch, and changes submitted before the writer starts."""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest

from server.errors import DatabaseError
from server.fanout import Outbox
from server.games import Change, Games
from server.metrics import ServerMetrics
from server.rules import GameState, join
from server.storage import Storage


@pytest.fixture
async def storage(tmp_path: Path) -> AsyncIterator[Storage]:
    store = Storage(tmp_path / "games.db")
    await store.open()
    try:
        yield store
    finally:
        await store.close()


def bumped(state: GameState | None) -> GameState:
    assert state is not None
    new = state.copy()
    new.version += 1
    new.scores["alice"] += 1
    return new


async def test_drain_waits_for_changes_submitted_before_the_writer_starts(storage: Storage):
    games = Games(storage, ServerMetrics())
    game = await games.acquire("g1")
    committed: list[int] = []

    def on_commit(change: Change, out: Outbox) -> None:
        committed.append(change.new.version)

    games.submit(game, join(game.head, "g1", "alice", 0.0) or bumped(game.head), on_commit)
    games.submit(game, bumped(game.head), on_commit)
    games.start()
    await asyncio.wait_for(games.drain(), 10)
    assert committed == [1, 2]
    assert game.committed is not None
    assert game.committed.version == 2
    assert game.pending == 0
    loaded = await storage.load("g1")
    assert loaded is not None
    assert loaded.version == 2
    games.release(game)
    await games.stop()


async def test_flush_and_commit_wait_for_durability_in_order(storage: Storage):
    games = Games(storage, ServerMetrics())
    games.start()
    game = await games.acquire("g1")
    order: list[str] = []

    def noted(name: str) -> Callable[[Change, Outbox], None]:
        def on_commit(change: Change, out: Outbox) -> None:
            order.append(f"{name}@{change.new.version}")

        return on_commit

    await games.commit(game, join(game.head, "g1", "alice", 0.0) or bumped(game.head), noted("a"))
    games.submit(game, bumped(game.head), noted("b"))  # nobody waits for this one
    games.submit(game, bumped(game.head), noted("c"))
    assert game.pending == 2
    await asyncio.wait_for(games.flush(game), 10)  # waits for the newest, hence both
    assert game.pending == 0
    assert order == ["a@1", "b@2", "c@3"]
    await asyncio.wait_for(games.commit(game, bumped(game.head), noted("d")), 10)
    assert order[-1] == "d@4"
    loaded = await storage.load("g1")
    assert loaded is not None
    assert loaded.version == 4
    games.release(game)
    await games.stop()


async def test_a_failed_batch_fails_every_waiter_and_resets_heads(storage: Storage, tmp_path: Path):
    games = Games(storage, ServerMetrics())
    games.start()
    game = await games.acquire("g1")
    await games.commit(game, join(game.head, "g1", "alice", 0.0) or bumped(game.head), _ignore)
    with sqlite3.connect(tmp_path / "games.db") as db:
        db.execute(
            "CREATE TRIGGER boom BEFORE UPDATE ON game_state WHEN NEW.version = 2 "
            "BEGIN SELECT RAISE(ABORT, 'disk on fire'); END"
        )
    failures: list[str] = []

    def on_fail(change: Change, exc: DatabaseError) -> None:
        failures.append(exc.message)

    games.submit(game, bumped(game.head), _ignore, on_fail)
    waited = asyncio.ensure_future(games.commit(game, bumped(game.head), _ignore, on_fail))
    await asyncio.wait_for(games.flush(game), 10)  # a failure ends the flush too
    with pytest.raises(DatabaseError):
        await asyncio.wait_for(waited, 10)
    assert len(failures) == 2
    assert all("disk on fire" in f for f in failures)
    assert game.pending == 0
    assert game.head is game.committed
    assert game.committed is not None
    assert game.committed.version == 1
    with sqlite3.connect(tmp_path / "games.db") as db:
        db.execute("DROP TRIGGER boom")
    await asyncio.wait_for(games.commit(game, bumped(game.head), _ignore), 10)
    loaded = await storage.load("g1")
    assert loaded is not None
    assert loaded.version == 2
    games.release(game)
    await games.stop()


def _ignore(change: Change, out: Outbox) -> None:
    pass
