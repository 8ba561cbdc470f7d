"""Game state rules of the legacy server: identifiers, updates, joins, imports, timestamps.

Pure functions over plain dicts, no I/O. A game state is the wire object itself (a dict in
the protocol's key order) and is never mutated once published: every change builds a new
dict, sharing the sections it does not touch. That makes a state a consistent snapshot that
can be encoded later (after the fsync) and lets a failed write be undone by putting the
previous dict back.

Each accepted change is described by a small *change record* holding final values (a score
after its delta, a removed setting as null), so replaying the log needs no rule and no fault:
`merge_update` / `merge_join` rebuild exactly what was served.
"""

from __future__ import annotations

import re
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Final, TypedDict

from legacy.errors import BadMessage, FloatForInt, InvalidState

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
DEFAULT_TIMER: Final = 60_000
MAX_PLAYERS: Final = 64
MAX_SETTINGS: Final = 64
MAX_SETTING_LEN: Final = 1024
# Note 31: the largest integer every JSON implementation holds exactly.
MAX_VERSION: Final = 2**53 - 1
UPDATE_KEYS: Final = frozenset(
    {"status", "current_player", "scores", "score_deltas", "timer", "settings"}
)

_IDENTIFIER = re.compile(r"[A-Za-z0-9_.-]{1,64}")
_INITIAL_TIME = re.compile(r"0|[1-9][0-9]*")
_TIMESTAMP = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}\.[0-9]{3}Z")


class GameState(TypedDict):
    """The protocol's game state object, in wire key order."""

    game_id: str
    status: str
    current_player: str | None
    scores: dict[str, int]
    timer: dict[str, int]
    settings: dict[str, str]
    version: int
    updated_at: str


def is_identifier(value: object) -> bool:
    """True for a string of 1..64 characters of `[A-Za-z0-9_.-]`."""
    return isinstance(value, str) and _IDENTIFIER.fullmatch(value) is not None


def expect_int(value: object, what: str) -> int:
    """Return `value` if it is a JSON integer (not bool, not float), else `BAD_MESSAGE`."""
    if type(value) is int:
        return value
    if type(value) is float:
        # orjson turns integer literals beyond 64 bits into floats; the session re-reads
        # the frame exactly before deciding this is really a fraction (notes 7 and 30).
        raise FloatForInt(f"{what} must be an integer")
    raise BadMessage(f"{what} must be an integer")


# --- timestamps -------------------------------------------------------------------------

_second_cache: list[Any] = [None, ""]


def format_ms(epoch_ms: int) -> str:
    """RFC 3339 UTC with milliseconds for a time in ms since the epoch."""
    seconds, millis = divmod(epoch_ms, 1000)
    # Many changes share a second: format the date part once per second.
    if _second_cache[0] != seconds:
        _second_cache[1] = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds))
        _second_cache[0] = seconds
    return f"{_second_cache[1]}.{millis:03d}Z"


def is_timestamp(value: object) -> bool:
    """True for an RFC 3339 UTC timestamp with exactly milliseconds (`…T10:00:00.123Z`)."""
    if not isinstance(value, str) or _TIMESTAMP.fullmatch(value) is None:
        return False
    try:
        datetime.strptime(value, "%Y-%m-%dT%H:%M:%S.%fZ")
    except ValueError:
        return False
    return True


# --- updates ----------------------------------------------------------------------------


@dataclass(slots=True)
class Update:
    """A `STATE_UPDATE.updates` object whose shape has been checked (types, known keys)."""

    status: str | None = None
    set_current_player: bool = False
    current_player: str | None = None
    scores: dict[str, int] = field(default_factory=dict)
    score_deltas: dict[str, int] = field(default_factory=dict)
    timer: dict[str, int] = field(default_factory=dict)
    settings: dict[str, str | None] = field(default_factory=dict)


def _int_map(value: object, what: str) -> dict[str, int]:
    if not isinstance(value, dict):
        raise BadMessage(f"{what} must be an object")
    for key, number in value.items():
        expect_int(number, f"{what}.{key}")
    return value


def parse_update(value: object) -> Update:
    """Check the shape of `updates` (note 16: wrong JSON types are `BAD_MESSAGE`)."""
    if not isinstance(value, dict):
        raise BadMessage("updates must be an object")
    if not value:
        raise BadMessage("updates must not be empty")
    unknown = value.keys() - UPDATE_KEYS
    if unknown:
        raise BadMessage(f"unknown key in updates: {sorted(unknown)[0]}")
    update = Update()
    if "status" in value:
        status = value["status"]
        if not isinstance(status, str):
            raise BadMessage("updates.status must be a string")
        update.status = status
    if "current_player" in value:
        player = value["current_player"]
        if player is not None and not isinstance(player, str):
            raise BadMessage("updates.current_player must be a string or null")
        update.set_current_player = True
        update.current_player = player
    if "scores" in value:
        update.scores = _int_map(value["scores"], "updates.scores")
    if "score_deltas" in value:
        update.score_deltas = _int_map(value["score_deltas"], "updates.score_deltas")
    if "timer" in value:
        update.timer = _int_map(value["timer"], "updates.timer")
    if "settings" in value:
        settings = value["settings"]
        if not isinstance(settings, dict):
            raise BadMessage("updates.settings must be an object")
        for key, text in settings.items():
            if text is not None and not isinstance(text, str):
                raise BadMessage(f"updates.settings.{key} must be a string or null")
        update.settings = settings
    return update


def _check_setting(key: str, text: str) -> None:
    if not is_identifier(key):
        raise InvalidState(f"setting key {key!r} breaks the identifier rules")
    if len(text) > MAX_SETTING_LEN:
        raise InvalidState(f"setting {key} is longer than {MAX_SETTING_LEN} characters")
    if key == "initial_time_ms" and (
        _INITIAL_TIME.fullmatch(text) is None or int(text) > TIMER_MAX
    ):
        raise InvalidState(f"initial_time_ms must be an integer in [0, {TIMER_MAX}]")


def resolve_update(state: GameState, update: Update, delta_bias: int = 0) -> dict[str, Any]:
    """Check `update` against `state` (note 20) and return its change record (final values).

    `delta_bias` is added to every score delta: 0 normally, 1 under the
    `score-delta-off-by-one` fault.
    """
    if state["status"] == "finished":
        raise InvalidState("the game is finished")
    change: dict[str, Any] = {}
    players = state["scores"]
    if update.status is not None:
        status = update.status
        if status not in STATUSES:
            raise InvalidState(f"unknown status {status!r}")
        if status != state["status"] and (state["status"], status) not in TRANSITIONS:
            raise InvalidState(f"status cannot change from {state['status']} to {status}")
        change["status"] = status
    if update.set_current_player:
        player = update.current_player
        if player is not None and player not in players:
            raise InvalidState(f"current_player {player!r} is not in the game")
        change["current_player"] = player
    if update.scores or update.score_deltas:
        scores: dict[str, int] = {}
        for player, score in update.scores.items():
            if player not in players:
                raise InvalidState(f"player {player!r} is not in the game")
            scores[player] = score
        for player, delta in update.score_deltas.items():
            if player not in players:
                raise InvalidState(f"player {player!r} is not in the game")
            scores[player] = scores.get(player, players[player]) + delta + delta_bias
        for player, score in scores.items():
            if not SCORE_MIN <= score <= SCORE_MAX:
                raise InvalidState(f"score of {player} out of range")
        change["scores"] = scores
    if update.timer:
        for player, millis in update.timer.items():
            if player not in players:
                raise InvalidState(f"player {player!r} is not in the game")
            if not 0 <= millis <= TIMER_MAX:
                raise InvalidState(f"timer of {player} out of range")
        change["timer"] = update.timer
    if update.settings:
        count = len(state["settings"])
        current = state["settings"]
        for key, text in update.settings.items():
            if text is None:
                if not is_identifier(key):
                    raise InvalidState(f"setting key {key!r} breaks the identifier rules")
                count -= key in current
            else:
                _check_setting(key, text)
                count += key not in current
        if count > MAX_SETTINGS:
            raise InvalidState(f"more than {MAX_SETTINGS} settings")
        change["settings"] = update.settings
    return change


def merge_update(state: GameState, change: Mapping[str, Any], version: int, at: str) -> GameState:
    """Return a new state: `state` with a resolved change record applied."""
    new = state.copy()
    if "status" in change:
        new["status"] = change["status"]
    if "current_player" in change:
        new["current_player"] = change["current_player"]
    if "scores" in change:
        new["scores"] = {**state["scores"], **change["scores"]}
    if "timer" in change:
        new["timer"] = {**state["timer"], **change["timer"]}
    if "settings" in change:
        settings = dict(state["settings"])
        for key, text in change["settings"].items():
            if text is None:
                settings.pop(key, None)
            else:
                settings[key] = text
        new["settings"] = settings
    new["version"] = version
    new["updated_at"] = at
    return new


# --- creation and joins -----------------------------------------------------------------


def join_timer(state: GameState | None) -> int:
    """The timer a joining player starts with: `initial_time_ms`, else 60,000."""
    if state is not None:
        text = state["settings"].get("initial_time_ms")
        if text is not None:
            return int(text)
    return DEFAULT_TIMER


def merge_join(
    state: GameState | None, game_id: str, player: str, millis: int, version: int, at: str
) -> GameState:
    """Return a new state with `player` joined (creating the game when `state` is None)."""
    if state is None:
        return GameState(
            game_id=game_id,
            status="waiting",
            current_player=None,
            scores={player: 0},
            timer={player: millis},
            settings={},
            version=version,
            updated_at=at,
        )
    new = state.copy()
    new["scores"] = {**state["scores"], player: 0}
    new["timer"] = {**state["timer"], player: millis}
    new["version"] = version
    new["updated_at"] = at
    return new


# --- imports ----------------------------------------------------------------------------

_IMPORT_FIELDS: Final = ("game_id", "status", "current_player", "scores", "timer", "settings")


def parse_import(value: object, now: str) -> GameState:
    """Check a full state for `IMPORT_STATE` (note 24) and return it as stored."""
    if not isinstance(value, dict):
        raise BadMessage("state must be an object")
    for name in (*_IMPORT_FIELDS, "version"):
        if name not in value:
            raise BadMessage(f"state.{name} is missing")
    game_id = value["game_id"]
    status = value["status"]
    player = value["current_player"]
    if not isinstance(game_id, str):
        raise BadMessage("state.game_id must be a string")
    if not isinstance(status, str):
        raise BadMessage("state.status must be a string")
    if player is not None and not isinstance(player, str):
        raise BadMessage("state.current_player must be a string or null")
    scores = _int_map(value["scores"], "state.scores")
    timer = _int_map(value["timer"], "state.timer")
    settings = value["settings"]
    if not isinstance(settings, dict):
        raise BadMessage("state.settings must be an object")
    for key, text in settings.items():
        if not isinstance(text, str):
            raise BadMessage(f"state.settings.{key} must be a string")
    version = expect_int(value["version"], "state.version")

    if not is_identifier(game_id):
        raise InvalidState("state.game_id breaks the identifier rules")
    if status not in STATUSES:
        raise InvalidState(f"unknown status {status!r}")
    if not 1 <= version <= MAX_VERSION:
        raise InvalidState(f"state.version must be in [1, {MAX_VERSION}]")
    if scores.keys() != timer.keys():
        raise InvalidState("scores and timer must have the same players")
    if len(scores) > MAX_PLAYERS:
        raise InvalidState(f"more than {MAX_PLAYERS} players")
    for name, score in scores.items():
        if not is_identifier(name):
            raise InvalidState(f"player id {name!r} breaks the identifier rules")
        if not SCORE_MIN <= score <= SCORE_MAX:
            raise InvalidState(f"score of {name} out of range")
        if not 0 <= timer[name] <= TIMER_MAX:
            raise InvalidState(f"timer of {name} out of range")
    if player is not None and player not in scores:
        raise InvalidState(f"current_player {player!r} is not in the game")
    if len(settings) > MAX_SETTINGS:
        raise InvalidState(f"more than {MAX_SETTINGS} settings")
    for key, text in settings.items():
        _check_setting(key, text)
    stamp = value.get("updated_at")
    updated_at = stamp if isinstance(stamp, str) and is_timestamp(stamp) else now
    return GameState(
        game_id=game_id,
        status=status,
        current_player=player,
        scores=dict(scores),
        timer=dict(timer),
        settings=dict(settings),
        version=version,
        updated_at=updated_at,
    )
