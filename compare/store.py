"""Mismatch samples kept for investigation: a bounded SQLite table next to the proxy's state.

Each finding keeps both sides, the diff, the game, the versions and the time. Only the newest
`keep` findings are kept, so a storm of mismatches cannot fill the disk.
"""

from __future__ import annotations

import json
import sqlite3
import time
from pathlib import Path
from typing import Any

import orjson

SCHEMA = """
CREATE TABLE IF NOT EXISTS findings (
    id        INTEGER PRIMARY KEY AUTOINCREMENT,
    at        REAL NOT NULL,
    kind      TEXT NOT NULL,
    result    TEXT NOT NULL,
    game_id   TEXT,
    first     INTEGER NOT NULL,
    summary   JSON NOT NULL,
    detail    JSON NOT NULL
);
"""


def _dumps(value: Any) -> str:
    """JSON text of a finding's sample; integers past 64 bits (the proxy reads literals of any
    length, as the servers do) are written by the standard library, which orjson refuses."""
    try:
        return orjson.dumps(value, default=str).decode()
    except TypeError:
        return json.dumps(value, default=str)


class FindingStore:
    """Findings in SQLite, newest `keep` kept."""

    def __init__(self, path: Path | str, keep: int = 1000) -> None:
        self.path = str(path)
        self.keep = keep
        self._db = sqlite3.connect(self.path, check_same_thread=False, timeout=5)
        self._db.execute("PRAGMA journal_mode = WAL")
        self._db.executescript(SCHEMA)

    def add(self, finding: dict[str, Any]) -> int:
        """Store one finding (its `primary`, `shadow`, `diff` and `text` go in the detail);
        return its id."""
        detail_keys = ("primary", "shadow", "diff", "text")
        summary = {k: v for k, v in finding.items() if k not in detail_keys}
        detail = {k: finding.get(k) for k in detail_keys}
        with self._db:
            cursor = self._db.execute(
                "INSERT INTO findings (at, kind, result, game_id, first, summary, detail) "
                "VALUES (?, ?, ?, ?, ?, ?, ?)",
                (
                    finding.get("at", time.time()),
                    finding["kind"],
                    finding["result"],
                    finding.get("game_id"),
                    1 if finding.get("first") else 0,
                    _dumps(summary),
                    _dumps(detail),
                ),
            )
            finding_id = int(cursor.lastrowid or 0)
            self._db.execute("DELETE FROM findings WHERE id <= ?", (finding_id - self.keep,))
        return finding_id

    def latest(self, limit: int = 20) -> list[dict[str, Any]]:
        """Summaries of the newest findings, newest first."""
        rows = self._db.execute(
            "SELECT id, summary FROM findings ORDER BY id DESC LIMIT ?", (limit,)
        ).fetchall()
        return [{"id": row[0], **orjson.loads(row[1])} for row in rows]

    def get(self, finding_id: int) -> dict[str, Any] | None:
        """One finding with both sides and the diff, or None."""
        row = self._db.execute(
            "SELECT id, summary, detail FROM findings WHERE id = ?", (finding_id,)
        ).fetchone()
        if row is None:
            return None
        return {"id": row[0], **orjson.loads(row[1]), **orjson.loads(row[2])}

    def count(self) -> int:
        """Findings kept."""
        return int(self._db.execute("SELECT COUNT(*) FROM findings").fetchone()[0])

    def close(self) -> None:
        """Close the database."""
        self._db.close()
