"""The storage layer's schema and migrations (`server.storage.Storage` over a real SQLite
file): what a new database gets, and how a database made by an earlier version migrates."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from server import storage as storage_module
from server.rules import GameState
from server.storage import Storage

HISTORY_INDEXES = {"scores_by_game", "timers_by_game", "settings_by_game"}


def indexes(path: Path) -> set[str]:
    """The explicit indexes of a database file (not SQLite's automatic ones)."""
    with sqlite3.connect(path) as db:
        rows = db.execute("SELECT name FROM sqlite_master WHERE type = 'index' AND sql IS NOT NULL")
        return {row[0] for row in rows}


def applied(path: Path) -> list[tuple[int, str]]:
    with sqlite3.connect(path) as db:
        return db.execute("SELECT version, name FROM schema_migrations ORDER BY version").fetchall()


def state(game_id: str, version: int, scores: dict[str, int]) -> GameState:
    return GameState(
        game_id,
        "active",
        None,
        scores,
        dict.fromkeys(scores, 60000),
        {},
        version,
        "2026-11-26T00:00:00.000Z",
    )


def test_the_migrations_are_numbered_in_order_without_gaps() -> None:
    numbers = [number for number, _name, _sql in storage_module.migrations()]
    assert numbers == list(range(1, len(numbers) + 1))
    assert numbers[:2] == [1, 2]


async def test_a_new_database_gets_every_migration_and_no_history_index(tmp_path: Path) -> None:
    path = tmp_path / "new.db"
    store = Storage(path)
    await store.open()
    await store.close()
    names = [name for _number, name, _sql in storage_module.migrations()]
    assert applied(path) == list(enumerate(names, start=1))
    # the history tables are append-only audit logs, written in rowid (commit) order;
    # migration 2 dropped their by-game indexes (see its comment)
    assert indexes(path).isdisjoint(HISTORY_INDEXES)
    # reopening applies nothing again
    store = Storage(path)
    await store.open()
    await store.close()
    assert applied(path) == list(enumerate(names, start=1))


async def test_a_database_at_migration_1_migrates_keeping_its_data(tmp_path: Path) -> None:
    path = tmp_path / "old.db"
    every = storage_module.migrations()
    # the version that shipped only migration 1 made this database
    old = Storage(path, upto=1)
    await old.open()
    await old.commit(
        [state("g1", 1, {"a": 0, "b": 0})],
        [
            ("scores", "g1", "a", 0, 1, "t1"),
            ("scores", "g1", "b", 0, 1, "t1"),
            ("timers", "g1", "a", 60000, 1, "t1"),
            ("settings", "g1", "k", "v", 1, "t1"),
        ],
    )
    await old.commit(
        [state("g1", 2, {"a": 3, "b": 0}), state("g2", 1, {"c": 0})],
        [("scores", "g1", "a", 3, 2, "t2"), ("scores", "g2", "c", 0, 1, "t2")],
    )
    await old.close()
    assert applied(path) == [(1, every[0][1])]
    assert indexes(path) >= HISTORY_INDEXES
    tables = ("scores", "timers", "settings")
    with sqlite3.connect(path) as db:
        history = {
            t: db.execute(f"SELECT rowid, * FROM {t} ORDER BY rowid").fetchall() for t in tables
        }
    assert [len(history[t]) for t in tables] == [4, 1, 1]

    store = Storage(path)
    await store.open()
    try:
        loaded = await store.load("g1")
        assert loaded is not None
        assert (loaded.version, loaded.scores) == (2, {"a": 3, "b": 0})
        # and it goes on committing after the migration
        await store.commit([state("g2", 2, {"c": 1})], [("scores", "g2", "c", 1, 2, "t3")])
    finally:
        await store.close()

    assert applied(path) == [(number, name) for number, name, _sql in every]
    assert indexes(path).isdisjoint(HISTORY_INDEXES)
    with sqlite3.connect(path) as db:
        assert db.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
        after = {
            t: db.execute(f"SELECT rowid, * FROM {t} ORDER BY rowid").fetchall() for t in tables
        }
        games = db.execute("SELECT game_id, version FROM game_state ORDER BY game_id").fetchall()
    # every row kept, in commit order; the new one appended after them
    assert after["scores"][:4] == history["scores"]
    assert [row[1:] for row in after["scores"][4:]] == [("g2", "c", 1, 2, "t3")]
    assert after["timers"] == history["timers"]
    assert after["settings"] == history["settings"]
    assert games == [("g1", 2), ("g2", 2)]
