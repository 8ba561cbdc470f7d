"""The proxy's durable state (`--state PATH`, SQLite): the route and the event history.

The route survives a restart (a proxy that comes back must not silently return to the old
primary); the history records every check, flip, rollback, ramp and abort with who, when,
the figures and the result. Writes are rare and small: plain sqlite3 in a worker thread.
"""

from __future__ import annotations

import asyncio
import sqlite3
import time
from pathlib import Path
from typing import Any

import orjson

from proxy.route import Route

SCHEMA = """
CREATE TABLE IF NOT EXISTS route (
    id      INTEGER PRIMARY KEY CHECK (id = 1),
    route   JSON NOT NULL,
    updated TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS events (
    id      INTEGER PRIMARY KEY AUTOINCREMENT,
    at      TEXT NOT NULL,
    actor   TEXT NOT NULL,
    kind    TEXT NOT NULL,
    result  TEXT NOT NULL,
    details JSON NOT NULL
);
"""


def now_text() -> str:
    """UTC now, RFC 3339 with milliseconds."""
    t = time.time()
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(t)) + f".{int(t % 1 * 1000):03d}Z"


def _details(raw: object) -> Any:
    """An event's details; a row that is not JSON (edited by hand, a disk fault) is shown
    as it is rather than making the whole history unreadable."""
    try:
        return orjson.loads(raw) if isinstance(raw, (str, bytes)) else {"unreadable": raw}
    except orjson.JSONDecodeError:
        return {"unreadable": str(raw)[:1000]}


class ProxyState:
    """Route and history in one SQLite file."""

    def __init__(self, path: Path | str) -> None:
        self.path = str(path)
        with self._db() as db:
            db.executescript(SCHEMA)

    def _db(self) -> sqlite3.Connection:
        db = sqlite3.connect(self.path, timeout=5)
        db.execute("PRAGMA journal_mode = WAL")
        db.execute("PRAGMA synchronous = FULL")
        return db

    def load_route(self, default: Route) -> Route:
        """The persisted route, or `default` (persisted) on first start."""
        with self._db() as db:
            row = db.execute("SELECT route FROM route WHERE id = 1").fetchone()
        if row is None:
            self._save_route(default)
            return default
        return Route.from_dict(orjson.loads(row[0]))

    def _save_route(self, route: Route) -> None:
        with self._db() as db:
            db.execute(
                "INSERT INTO route (id, route, updated) VALUES (1, ?, ?) "
                "ON CONFLICT (id) DO UPDATE SET route = excluded.route, updated = excluded.updated",
                (orjson.dumps(route.to_dict()).decode(), now_text()),
            )

    async def save_route(self, route: Route) -> None:
        """Persist the route durably (before the proxy acts on it)."""
        await asyncio.to_thread(self._save_route, route)

    def _record(self, actor: str, kind: str, result: str, details: dict[str, Any]) -> int:
        with self._db() as db:
            cursor = db.execute(
                "INSERT INTO events (at, actor, kind, result, details) VALUES (?, ?, ?, ?, ?)",
                (now_text(), actor, kind, result, orjson.dumps(details).decode()),
            )
            return int(cursor.lastrowid or 0)

    async def record(self, actor: str, kind: str, result: str, details: dict[str, Any]) -> int:
        """Append one event to the history; return its id."""
        return await asyncio.to_thread(self._record, actor, kind, result, details)

    def _history(self, limit: int) -> list[dict[str, Any]]:
        with self._db() as db:
            rows = db.execute(
                "SELECT id, at, actor, kind, result, details FROM events ORDER BY id DESC LIMIT ?",
                (limit,),
            ).fetchall()
        return [
            {
                "id": r[0],
                "at": r[1],
                "actor": r[2],
                "kind": r[3],
                "result": r[4],
                "details": _details(r[5]),
            }
            for r in rows
        ]

    async def history(self, limit: int = 50) -> list[dict[str, Any]]:
        """The newest `limit` events, newest first."""
        return await asyncio.to_thread(self._history, limit)
