"""The protocol's rules as pure functions: identifiers, message envelopes, update validation,
state transitions, joins and imports. No I/O and no event loop: the asyncio layer feeds frames
in and writes what these functions return.

Validation follows PROTOCOL.md and `docs/protocol-notes.md`: a value of the wrong JSON type is
`BAD_MESSAGE`, a value of the right type that breaks a rule is `INVALID_STATE` (note 16).
"""

from __future__ import annotations

import contextlib
import json
import math
import re
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Final, NewType

import orjson

from server.errors import (
    BadMessage,
    Forbidden,
    InvalidState,
    StateServerError,
    UnknownType,
)

GameId = NewType("GameId", str)
PlayerId = NewType("PlayerId", str)
Version = NewType("Version", int)

IDENTIFIER: Final = re.compile(r"[A-Za-z0-9_.-]{1,64}")
INITIAL_TIME: Final = re.compile(r"0|[1-9][0-9]{0,7}")
STATUSES: Final = frozenset({"waiting", "active", "paused", "finished"})
TRANSITIONS: Final = frozenset(
    {
        ("waiting", "active"),
        ("active", "paused"),
        ("paused", "active"),
        ("active", "finished"),
        ("paused", "finished"),
    }
)
SCORE_MIN: Final = -1_000_000_000
SCORE_MAX: Final = 1_000_000_000
TIMER_MAX: Final = 86_400_000
DEFAULT_TIMER_MS: Final = 60_000
MAX_PLAYERS: Final = 64
MAX_SETTINGS: Final = 64
MAX_SETTING_LEN: Final = 1024
MAX_ID_LEN: Final = 64
#: the largest version an import may set (note 31): exact in every JSON implementation
MAX_VERSION: Final = 2**53 - 1
UPDATE_KEYS: Final = frozenset(
    {"status", "current_player", "scores", "score_deltas", "timer", "settings"}
)
#: 19 digits or more: a number orjson may not read as the integer it is
LONG_NUMBER: Final = re.compile(r"[0-9]{19}")
#: RFC 3339's digits are ASCII (`\d` would take any Unicode digit, and strptime reads them)
TIMESTAMP: Final = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}\.[0-9]{3}Z")

#: Every client message type of PROTOCOL.md.
MESSAGE_TYPES: Final = frozenset(
    {
        "CONNECT",
        "HEARTBEAT",
        "STATE_UPDATE",
        "GET_STATE",
        "DISCONNECT",
        "LIST_GAMES",
        "IMPORT_STATE",
    }
)
#: Every server-to-client message type of PROTOCOL.md: the answers, the `STATE` broadcast and
#: `ERROR` (the comparator's ignore rules are keyed by these, `compare.rules`).
ANSWER_TYPES: Final = frozenset(
    {"CONNECTED", "HEARTBEAT_ACK", "ACK", "STATE", "DISCONNECTED", "GAMES", "ERROR"}
)


def is_identifier(value: object) -> bool:
    """True for a string of 1..64 characters of `[A-Za-z0-9_.-]`."""
    return isinstance(value, str) and IDENTIFIER.fullmatch(value) is not None


def is_int(value: object) -> bool:
    """True for a JSON integer (booleans are not integers on the wire, note 7)."""
    return type(value) is int


_last_stamp: list[Any] = [None, ""]  # (millisecond, its text): many changes share one ms


def is_timestamp(value: object) -> bool:
    """An RFC 3339 UTC timestamp with milliseconds that names a real instant
    (`2026-13-45T99:99:99.999Z` has the shape, not the meaning)."""
    if not isinstance(value, str) or TIMESTAMP.fullmatch(value) is None:
        return False
    try:
        datetime.strptime(value, "%Y-%m-%dT%H:%M:%S.%fZ")
    except ValueError:
        return False
    return True


def timestamp(epoch: float) -> str:
    """RFC 3339 UTC with milliseconds: `2026-11-26T10:00:00.123Z`."""
    # The millisecond that `datetime.fromtimestamp` shows: it rounds to microseconds
    # (half to even), then `isoformat` truncates.
    fraction, whole = math.modf(epoch)
    micro = round(fraction * 1e6)
    millisecond = (int(whole) * 1_000_000 + micro) // 1000
    if _last_stamp[0] == millisecond:
        return str(_last_stamp[1])
    text = datetime.fromtimestamp(epoch, UTC).isoformat(timespec="milliseconds")
    text = text[:-6] + "Z"
    _last_stamp[0], _last_stamp[1] = millisecond, text
    return text


# --------------------------------------------------------------------------- game state


@dataclass(slots=True)
class GameState:
    """One game's state, as on the wire (PROTOCOL.md "Game state")."""

    game_id: str
    status: str = "waiting"
    current_player: str | None = None
    scores: dict[str, int] = field(default_factory=dict)
    timer: dict[str, int] = field(default_factory=dict)
    settings: dict[str, str] = field(default_factory=dict)
    version: int = 0
    updated_at: str = ""

    def to_wire(self) -> dict[str, Any]:
        """The state object sent in `CONNECTED`, `STATE` and broadcasts (note 15)."""
        return {
            "game_id": self.game_id,
            "status": self.status,
            "current_player": self.current_player,
            "scores": self.scores,
            "timer": self.timer,
            "settings": self.settings,
            "version": self.version,
            "updated_at": self.updated_at,
        }

    def copy(self) -> GameState:
        """A copy whose dicts can be changed without touching this one."""
        return GameState(
            self.game_id,
            self.status,
            self.current_player,
            dict(self.scores),
            dict(self.timer),
            dict(self.settings),
            self.version,
            self.updated_at,
        )


def join(state: GameState | None, game_id: str, player: str, now: float) -> GameState | None:
    """The state after `player` connects, or None when that is not a change.

    A new game is created with its first player in one change at version 1; a player not yet
    in `scores` joins with score 0 and the game's initial time.
    """
    if state is None:
        new = GameState(game_id=game_id)
    elif player in state.scores:
        return None
    elif len(state.scores) >= MAX_PLAYERS:
        raise Forbidden(f"the game already has {MAX_PLAYERS} players")
    else:
        new = state.copy()
    initial = new.settings.get("initial_time_ms")
    new.scores[player] = 0
    new.timer[player] = int(initial) if initial is not None else DEFAULT_TIMER_MS
    new.version += 1
    new.updated_at = timestamp(now)
    return new


# --------------------------------------------------------------------------- requests


@dataclass(slots=True)
class Request:
    """A client message that passed the envelope checks (note 1)."""

    type: str
    id: str
    body: dict[str, Any]


def parse_request(raw: str | bytes) -> Request:
    """Check a frame's envelope: JSON object, readable `id`, known `type` (notes 1-3).

    Errors carry `re` when the id was readable.
    """
    if isinstance(raw, bytes):
        raise BadMessage("binary frames are not accepted; send JSON in a text frame")
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError:
        body = _loads_slow(raw)  # what orjson refuses may still be JSON (1e400, note 30)
    else:
        if LONG_NUMBER.search(raw) is not None:
            # orjson reads integers beyond 64 bits as floats: read them exactly, unless the
            # standard library cannot read the frame at all (nesting orjson could read)
            with contextlib.suppress(BadMessage):
                body = _loads_slow(raw)
    if not isinstance(body, dict):
        raise BadMessage("a message must be a JSON object")
    msg_id = body.get("id")
    if not isinstance(msg_id, str) or not 1 <= len(msg_id) <= MAX_ID_LEN:
        raise BadMessage("`id` must be a string of 1 to 64 characters")
    msg_type = body.get("type")
    if not isinstance(msg_type, str):
        raise with_re(BadMessage("`type` must be a string"), msg_id)
    if msg_type not in MESSAGE_TYPES:
        raise with_re(UnknownType(f"unknown message type {msg_type[:64]!r}"), msg_id)
    return Request(msg_type, msg_id, body)


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


#: Python converts at most this many digits (`sys.get_int_max_str_digits`); longer literals
#: become `BEYOND` (keeping their sign): out of every field's range, as their value is
BIG_DIGITS: Final = 4300
BEYOND: Final = 10**4299  # 4,300 digits: still printable (the surrogate check dumps it)


def _int(literal: str) -> int:
    """A JSON integer literal of any length (note 30): exact up to `BIG_DIGITS` digits, past
    that only its sign and its size matter (no range reaches it), and converting it exactly
    would cost time quadratic in its length."""
    if len(literal) <= BIG_DIGITS:
        return int(literal)
    return -BEYOND if literal.startswith("-") else BEYOND


def _loads_slow(raw: str) -> Any:
    """Strict JSON that keeps integers of any size (note 30); NaN and Infinity stay
    refused, as in orjson."""
    try:
        body = json.loads(raw, parse_constant=_reject_constant, parse_int=_int)
        # an unpaired surrogate escape is not text (note 35); orjson refuses it too
        json.dumps(body, ensure_ascii=False).encode()
    except (ValueError, RecursionError) as exc:
        raise BadMessage("the frame is not valid JSON") from exc
    return body


def with_re(error: StateServerError, re_id: str | None) -> StateServerError:
    """Attach the offending message's id to an error (its `re`)."""
    error.re = re_id
    return error


# --------------------------------------------------------------------------- updates


_UNSET: Final[Any] = object()


@dataclass(slots=True)
class Update:
    """A `STATE_UPDATE`'s `updates`, well typed (shape checked, rules not yet)."""

    status: str | None = None
    current_player: Any = _UNSET  # str | None when set
    scores: dict[str, int] | None = None
    score_deltas: dict[str, int] | None = None
    timer: dict[str, int] | None = None
    settings: dict[str, str | None] | None = None


def _int_map(name: str, value: object) -> dict[str, int]:
    if not isinstance(value, dict):
        raise BadMessage(f"`{name}` must be an object of player id to integer")
    for item in value.values():
        if not is_int(item):
            raise BadMessage(f"`{name}` values must be integers")
    return value


def parse_update(body: dict[str, Any]) -> tuple[Update, int | None]:
    """Check the shape of a `STATE_UPDATE` (types only: `BAD_MESSAGE`); return it and
    `expected_version`."""
    updates = body.get("updates")
    if not isinstance(updates, dict) or not updates:
        raise BadMessage("`updates` must be a non-empty object")
    unknown = updates.keys() - UPDATE_KEYS
    if unknown:
        raise BadMessage(f"unknown key in `updates`: {sorted(unknown)[0][:64]!r}")
    expected = body.get("expected_version")  # null is absent (note 32)
    if expected is not None and not is_int(expected):
        raise BadMessage("`expected_version` must be an integer")
    update = Update()
    if "status" in updates:
        if not isinstance(updates["status"], str):
            raise BadMessage("`status` must be a string")
        update.status = updates["status"]
    if "current_player" in updates:
        player = updates["current_player"]
        if player is not None and not isinstance(player, str):
            raise BadMessage("`current_player` must be a player id or null")
        update.current_player = player
    if "scores" in updates:
        update.scores = _int_map("scores", updates["scores"])
    if "score_deltas" in updates:
        update.score_deltas = _int_map("score_deltas", updates["score_deltas"])
    if "timer" in updates:
        update.timer = _int_map("timer", updates["timer"])
    if "settings" in updates:
        settings = updates["settings"]
        if not isinstance(settings, dict):
            raise BadMessage("`settings` must be an object of key to string or null")
        for item in settings.values():
            if item is not None and not isinstance(item, str):
                raise BadMessage("`settings` values must be strings or null")
        update.settings = settings
    return update, expected


def _check_players(name: str, values: dict[str, int], state: GameState) -> None:
    for player in values:
        if player not in state.scores:
            raise InvalidState(f"`{name}` names {player[:64]!r}, who is not in the game")


def _check_setting(key: str, value: str | None) -> None:
    if not is_identifier(key):
        raise InvalidState(f"setting key {key[:64]!r} breaks the identifier rules")
    if value is None:
        return
    if len(value) > MAX_SETTING_LEN:
        raise InvalidState(f"setting {key!r} is longer than {MAX_SETTING_LEN} characters")
    if key == "initial_time_ms" and (
        INITIAL_TIME.fullmatch(value) is None or int(value) > TIMER_MAX
    ):
        raise InvalidState("`initial_time_ms` must be the decimal text of 0..86400000")


def _check_score(player: str, value: int) -> None:
    if not SCORE_MIN <= value <= SCORE_MAX:
        raise InvalidState(f"score of {player!r} out of range")


def apply_update(state: GameState, update: Update, now: float) -> GameState:
    """The state after `update`, validated whole (note 20), or `INVALID_STATE`."""
    if state.status == "finished":
        raise InvalidState("the game is finished")
    # A state's dicts are never changed once it is built: the new state copies only those
    # this update changes and shares the others (and `history` skips shared ones at once).
    new = GameState(
        state.game_id,
        state.status,
        state.current_player,
        dict(state.scores)
        if update.scores is not None or update.score_deltas is not None
        else state.scores,
        dict(state.timer) if update.timer is not None else state.timer,
        dict(state.settings) if update.settings is not None else state.settings,
        state.version,
        state.updated_at,
    )
    if update.status is not None:
        target = update.status
        if target not in STATUSES:
            raise InvalidState(f"unknown status {target[:64]!r}")
        if target != state.status and (state.status, target) not in TRANSITIONS:
            raise InvalidState(f"status cannot go from {state.status} to {target}")
        new.status = target
    if update.current_player is not _UNSET:
        player = update.current_player
        if player is not None and player not in state.scores:
            raise InvalidState("`current_player` is not in the game")
        new.current_player = player
    if update.scores is not None:
        _check_players("scores", update.scores, state)
        new.scores.update(update.scores)
    if update.score_deltas is not None:
        _check_players("score_deltas", update.score_deltas, state)
        for player, delta in update.score_deltas.items():
            new.scores[player] += delta
    # every rule is checked on the result (note 20): a delta may bring a set score back
    if update.scores is not None:
        for player in update.scores:
            _check_score(player, new.scores[player])
    if update.score_deltas is not None:
        for player in update.score_deltas:
            if update.scores is None or player not in update.scores:
                _check_score(player, new.scores[player])
    if update.timer is not None:
        _check_players("timer", update.timer, state)
        for player, value in update.timer.items():
            if not 0 <= value <= TIMER_MAX:
                raise InvalidState(f"timer of {player!r} out of range")
            new.timer[player] = value
    if update.settings is not None:
        for key, setting in update.settings.items():
            _check_setting(key, setting)
            if setting is None:
                new.settings.pop(key, None)
            else:
                new.settings[key] = setting
        if len(new.settings) > MAX_SETTINGS:
            raise InvalidState(f"more than {MAX_SETTINGS} settings")
    new.version += 1
    new.updated_at = timestamp(now)
    return new


# --------------------------------------------------------------------------- admin


def parse_import(value: object, now: float) -> GameState:
    """Check an `IMPORT_STATE`'s `state` (note 24) and return it as a `GameState`."""
    if not isinstance(value, dict):
        raise BadMessage("`state` must be a state object")
    game_id = value.get("game_id")
    status = value.get("status")
    version = value.get("version")
    if not isinstance(game_id, str) or not isinstance(status, str) or type(version) is not int:
        raise BadMessage("`state` needs `game_id`, `status` (strings) and `version` (integer)")
    if "current_player" not in value:
        raise BadMessage("`state` needs `current_player`")
    player = value["current_player"]
    if player is not None and not isinstance(player, str):
        raise BadMessage("`current_player` must be a player id or null")
    scores = _int_map("scores", value.get("scores"))
    timer = _int_map("timer", value.get("timer"))
    settings = value.get("settings")
    if not isinstance(settings, dict) or not all(isinstance(v, str) for v in settings.values()):
        raise BadMessage("`settings` must be an object of key to string")
    updated_at = value.get("updated_at")

    if not is_identifier(game_id):
        raise InvalidState("`game_id` breaks the identifier rules")
    if status not in STATUSES:
        raise InvalidState(f"unknown status {status[:64]!r}")
    if not 1 <= version <= MAX_VERSION:
        raise InvalidState("`version` must be from 1 to 2^53 - 1")
    if scores.keys() != timer.keys():
        raise InvalidState("`scores` and `timer` must have the same players")
    if len(scores) > MAX_PLAYERS:
        raise InvalidState(f"more than {MAX_PLAYERS} players")
    for pid, score in scores.items():
        if not is_identifier(pid):
            raise InvalidState(f"player id {pid[:64]!r} breaks the identifier rules")
        _check_score(pid, score)
        if not 0 <= timer[pid] <= TIMER_MAX:
            raise InvalidState(f"timer of {pid!r} out of range")
    if player is not None and player not in scores:
        raise InvalidState("`current_player` is not in the game")
    if len(settings) > MAX_SETTINGS:
        raise InvalidState(f"more than {MAX_SETTINGS} settings")
    for key, setting in settings.items():
        _check_setting(key, setting)
    if not is_timestamp(updated_at):  # note 24: kept when valid, else now
        updated_at = timestamp(now)
    assert isinstance(updated_at, str)
    return GameState(game_id, status, player, scores, timer, settings, version, updated_at)


def parse_list_games(body: dict[str, Any]) -> tuple[str | None, int]:
    """`LIST_GAMES`'s `after` and `limit` (note 23)."""
    after = body.get("after")
    if after is not None and not is_identifier(after):
        raise BadMessage("`after` must be a game id")  # note 33
    limit = body.get("limit")
    if limit is None:  # absent or null (note 32)
        limit = 100
    if not is_int(limit) or not 1 <= limit <= 1000:
        raise BadMessage("`limit` must be an integer from 1 to 1000")
    return after, limit


# --------------------------------------------------------------------------- history


HistoryRow = tuple[str, str, str, int | str | None, int, str]
"""(table, game_id, key, value, version, timestamp); value None records a removal."""


def history(old: GameState | None, new: GameState) -> list[HistoryRow]:
    """One row per score, timer and setting that the change from `old` to `new` changed."""
    rows: list[HistoryRow] = []
    stamp = new.updated_at
    for table, before, after in (
        ("scores", old.scores if old else {}, new.scores),
        ("timers", old.timer if old else {}, new.timer),
        ("settings", old.settings if old else {}, new.settings),
    ):
        if before is after or before == after:  # most changes leave most tables alone
            continue
        for key, value in after.items():
            if before.get(key) != value:
                rows.append((table, new.game_id, key, value, new.version, stamp))
        if not before.keys() <= after.keys():
            for key in before.keys() - after.keys():
                rows.append((table, new.game_id, key, None, new.version, stamp))
    return rows
