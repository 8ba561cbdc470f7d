"""SQLite storage of the new server (aiosqlite): the documented schema, numbered migrations,
and batch commits.

Two connections: the writer commits batches (WAL, `synchronous=FULL`: a commit is on disk
when it returns), the reader loads games and pages through them without waiting for the
writer (WAL readers do not block on writers).

The history tables (`scores`, `timers`, `settings`) are an append-only audit log: rows are
only inserted, in commit order (rowid order), and nothing here reads them. They have no
index (migration 0002 dropped the by-game ones: each cost a WAL page per changed player per
commit); to query them by game, index a copy of the database, e.g.
`CREATE INDEX scores_by_game ON scores (game_id, player_id, version);`.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Awaitable, Callable, Iterable
from importlib import resources
from pathlib import Path
from typing import Any, TypeVar

import aiosqlite
import orjson

from server.errors import DatabaseError
from server.rules import GameState, HistoryRow

UPSERT_STATE = """
INSERT INTO game_state (game_id, status, current_player, scores, timer, settings, version,
                        updated_at)
VALUES (?, ?, ?, ?, ?, ?, ?, ?)
ON CONFLICT (game_id) DO UPDATE SET
    status = excluded.status, current_player = excluded.current_player,
    scores = excluded.scores, timer = excluded.timer, settings = excluded.settings,
    version = excluded.version, updated_at = excluded.updated_at
"""
INSERT_HISTORY = {
    "scores": "INSERT INTO scores (game_id, player_id, score, version, timestamp) "
    "VALUES (?, ?, ?, ?, ?)",
    "timers": "INSERT INTO timers (game_id, player_id, remaining_ms, version, timestamp) "
    "VALUES (?, ?, ?, ?, ?)",
    "settings": "INSERT INTO settings (game_id, key, value, version, timestamp) "
    "VALUES (?, ?, ?, ?, ?)",
}
T = TypeVar("T")
SELECT_STATE = (
    "SELECT game_id, status, current_player, scores, timer, settings, version, updated_at "
    "FROM game_state WHERE game_id = ?"
)


def _write_batch(
    db: sqlite3.Connection,
    upserts: list[tuple[object, ...]],
    by_table: dict[str, list[tuple[object, ...]]],
) -> None:
    """One batch's transaction, run in aiosqlite's thread: the upserts, the history rows,
    COMMIT (durable when it returns: WAL, `synchronous=FULL`); rolled back on any error."""
    try:
        db.executemany(UPSERT_STATE, upserts)
        for table, values in by_table.items():
            db.executemany(INSERT_HISTORY[table], values)
        db.commit()
    except BaseException:
        try:
            db.rollback()
        except sqlite3.Error:
            pass  # the connection is broken; the original error says why
        raise


async def _in_thread(db: aiosqlite.Connection, fn: Callable[..., T], *args: Any) -> T:
    """Run `fn(sqlite3_connection, *args)` in the aiosqlite connection's own thread, after
    what is already queued there (aiosqlite's `_execute`, which all its methods use)."""
    run: Callable[..., Awaitable[T]] = db._execute
    return await run(lambda: fn(db._conn, *args))


def migrations() -> list[tuple[int, str, str]]:
    """The numbered migrations shipped with the server: (number, name, SQL), in order."""
    found = []
    for entry in resources.files("server.migrations").iterdir():
        name = entry.name
        if name.endswith(".sql") and name[:4].isdigit():
            found.append((int(name[:4]), name, entry.read_text(encoding="utf-8")))
    return sorted(found)


async def _configure(db: aiosqlite.Connection) -> None:
    await db.execute("PRAGMA journal_mode = WAL")
    await db.execute("PRAGMA synchronous = FULL")
    await db.execute("PRAGMA busy_timeout = 5000")


class Storage:
    """The game database: open (and migrate), load, list, commit batches, close."""

    def __init__(self, path: Path | str, *, upto: int | None = None) -> None:
        self.path = str(path)
        #: apply the migrations up to this number only (None: all; tests make the database
        #: an older release left)
        self.upto = upto
        self._writer: aiosqlite.Connection | None = None
        self._reader: aiosqlite.Connection | None = None

    async def open(self) -> None:
        """Open both connections and apply pending migrations."""
        failure: sqlite3.Error | None = None
        try:
            self._writer = await aiosqlite.connect(self.path)
            await _configure(self._writer)
            await self._migrate(self._writer)
            self._reader = await aiosqlite.connect(self.path)
            await _configure(self._reader)
        except sqlite3.Error as exc:
            failure = exc
        # closed outside the except block (`stateshift.native.unsafe_awaits`)
        if failure is not None:
            await self.close()
            raise DatabaseError(f"cannot open database {self.path}: {failure}") from failure

    async def _migrate(self, db: aiosqlite.Connection) -> None:
        await db.execute(
            "CREATE TABLE IF NOT EXISTS schema_migrations ("
            "version INTEGER PRIMARY KEY, name TEXT NOT NULL, applied_at TEXT NOT NULL)"
        )
        await db.commit()
        rows = await db.execute_fetchall("SELECT version FROM schema_migrations")
        applied = {row[0] for row in rows}
        for number, name, sql in migrations():
            if number in applied or (self.upto is not None and number > self.upto):
                continue
            # One script, one transaction: a migration is applied whole or not at all.
            await db.executescript(
                f"BEGIN;\n{sql}\nINSERT INTO schema_migrations VALUES "
                f"({number}, '{name}', strftime('%Y-%m-%dT%H:%M:%fZ', 'now'));\nCOMMIT;"
            )

    @property
    def writer(self) -> aiosqlite.Connection:
        assert self._writer is not None, "storage is not open"
        return self._writer

    @property
    def reader(self) -> aiosqlite.Connection:
        assert self._reader is not None, "storage is not open"
        return self._reader

    async def load(self, game_id: str) -> GameState | None:
        """The committed state of one game, or None when it does not exist."""
        try:
            rows = list(await self.reader.execute_fetchall(SELECT_STATE, (game_id,)))
        except sqlite3.Error as exc:
            raise DatabaseError(f"cannot load game: {exc}") from exc
        if not rows:
            return None
        row = rows[0]
        gid, status, player, scores, timer, settings, version, updated_at = row
        return GameState(
            gid,
            status,
            player,
            orjson.loads(scores),
            orjson.loads(timer),
            orjson.loads(settings),
            version,
            updated_at,
        )

    async def list_games(self, after: str | None, limit: int) -> list[tuple[str, int]]:
        """Up to `limit` (game_id, version) pairs after `after`, ordered by game_id."""
        try:
            rows = await self.reader.execute_fetchall(
                "SELECT game_id, version FROM game_state WHERE game_id > ? "
                "ORDER BY game_id LIMIT ?",
                (after or "", limit),
            )
            return [(row[0], row[1]) for row in rows]
        except sqlite3.Error as exc:
            raise DatabaseError(f"cannot list games: {exc}") from exc

    async def commit(self, states: Iterable[GameState], rows: Iterable[HistoryRow]) -> None:
        """Write the final state of each changed game and the history rows in one
        transaction; return once it is durable."""
        latest = {state.game_id: state for state in states}
        by_table: dict[str, list[tuple[object, ...]]] = {}
        for table, game_id, key, value, version, stamp in rows:
            by_table.setdefault(table, []).append((game_id, key, value, version, stamp))
        dumps = orjson.dumps
        upserts = [
            (
                s.game_id,
                s.status,
                s.current_player,
                dumps(s.scores).decode(),
                dumps(s.timer).decode(),
                dumps(s.settings).decode(),
                s.version,
                s.updated_at,
            )
            for s in latest.values()
        ]
        try:
            # The whole transaction is one call in aiosqlite's thread: one hand-off there and
            # one back per commit, instead of one per statement.
            await _in_thread(self.writer, _write_batch, upserts, by_table)
        except (sqlite3.Error, ValueError, OverflowError) as exc:
            raise DatabaseError(f"commit failed: {exc}") from exc

    async def close(self) -> None:
        """Close both connections (idempotent)."""
        for db in (self._reader, self._writer):
            if db is not None:
                try:
                    await db.close()
                except sqlite3.Error:
                    pass  # closing a broken connection: nothing left to save
        self._reader = self._writer = None
