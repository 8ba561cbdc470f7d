"""The legacy server's games: an in-memory dict of states, rebuilt from the log at start.

Owns the change records (what one accepted change writes to the log) and their replay,
including the version rule: a join or an update is exactly one version after the previous
record of its game; an import sets the version it carries.

Record shapes (one JSON object per log line):

```
{"op": "join",   "game_id", "version", "updated_at", "player", "timer"}
{"op": "update", "game_id", "version", "updated_at", "change": {section: final values}}
{"op": "import", "game_id", "version", "updated_at", "state": {full state}}
```
"""

from __future__ import annotations

import bisect
from typing import Any

import orjson

from legacy.errors import JournalCorrupt
from legacy.rules import GameState, merge_join, merge_update


def join_record(game_id: str, version: int, at: str, player: str, millis: int) -> bytes:
    """The log line of a join (a creation when `version` is 1)."""
    return orjson.dumps(
        {
            "op": "join",
            "game_id": game_id,
            "version": version,
            "updated_at": at,
            "player": player,
            "timer": millis,
        },
        option=orjson.OPT_APPEND_NEWLINE,
    )


def update_record(game_id: str, version: int, at: str, change: dict[str, Any]) -> bytes:
    """The log line of an accepted `STATE_UPDATE` (its resolved final values)."""
    return orjson.dumps(
        {
            "op": "update",
            "game_id": game_id,
            "version": version,
            "updated_at": at,
            "change": change,
        },
        option=orjson.OPT_APPEND_NEWLINE,
    )


def import_record(state: GameState) -> bytes:
    """The log line of an `IMPORT_STATE` (the whole state, version included)."""
    return orjson.dumps(
        {
            "op": "import",
            "game_id": state["game_id"],
            "version": state["version"],
            "updated_at": state["updated_at"],
            "state": state,
        },
        option=orjson.OPT_APPEND_NEWLINE,
    )


class Games:
    """All games by id, plus their ids in byte order for `LIST_GAMES` paging."""

    def __init__(self) -> None:
        self.states: dict[str, GameState] = {}
        # Kept sorted on insert (creations are rare, listings page often).
        self._ids: list[str] = []

    def __len__(self) -> int:
        return len(self.states)

    def get(self, game_id: str) -> GameState | None:
        """The current state of a game, or None."""
        return self.states.get(game_id)

    def put(self, state: GameState) -> GameState | None:
        """Publish a new state of its game; return the previous one (None: created)."""
        game_id = state["game_id"]
        previous = self.states.get(game_id)
        if previous is None:
            bisect.insort(self._ids, game_id)
        self.states[game_id] = state
        return previous

    def restore(self, game_id: str, previous: GameState | None) -> None:
        """Undo a `put` (a change whose log write failed)."""
        if previous is not None:
            self.states[game_id] = previous
        elif self.states.pop(game_id, None) is not None:
            del self._ids[bisect.bisect_left(self._ids, game_id)]

    def page(self, after: str | None, limit: int) -> tuple[list[GameState], str | None]:
        """Up to `limit` games after `after` in id order, and the `next` cursor."""
        start = 0 if after is None else bisect.bisect_right(self._ids, after)
        ids = self._ids[start : start + limit]
        more = start + limit < len(self._ids)
        return [self.states[game_id] for game_id in ids], (ids[-1] if more and ids else None)

    def replay(self, record: dict[str, Any]) -> None:
        """Apply one log record, checking the version rule; raise `JournalCorrupt` if broken."""
        try:
            op = record["op"]
            game_id = record["game_id"]
            version = record["version"]
            at = record["updated_at"]
            current = self.states.get(game_id)
            if op == "import":
                state: GameState = record["state"]
                if state["game_id"] != game_id or state["version"] != version:
                    raise JournalCorrupt("import record disagrees with its state")
                self.put(state)
                return
            expected = 1 if current is None else current["version"] + 1
            if version != expected:
                raise JournalCorrupt(f"{game_id}: version {version} where {expected} was due")
            if op == "join":
                self.put(
                    merge_join(current, game_id, record["player"], record["timer"], version, at)
                )
            elif op == "update" and current is not None:
                self.put(merge_update(current, record["change"], version, at))
            else:
                raise JournalCorrupt(f"cannot replay {op!r} on game {game_id}")
        except (KeyError, TypeError, AttributeError) as exc:
            raise JournalCorrupt(f"malformed record: {exc!r}") from exc
