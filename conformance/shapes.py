"""Pure rules of PROTOCOL.md the suite judges answers by: timestamps, state objects, transitions.

Each `*_problems` function returns a list of human-readable problems (empty when the object
conforms), so a failure can say everything that is wrong at once.
"""

from __future__ import annotations

import re
from typing import Any, TypeGuard

IDENTIFIER = re.compile(r"[A-Za-z0-9_.-]{1,64}")
# RFC 3339, UTC, exactly milliseconds: "2026-11-26T10:00:00.123Z" (PROTOCOL.md "server_time")
TIMESTAMP = re.compile(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{3}(Z|\+00:00)")
STATUSES = ("waiting", "active", "paused", "finished")
ALLOWED = {
    ("waiting", "active"),
    ("active", "paused"),
    ("paused", "active"),
    ("active", "finished"),
    ("paused", "finished"),
}
STATE_KEYS = {
    "game_id",
    "status",
    "current_player",
    "scores",
    "timer",
    "settings",
    "version",
    "updated_at",
}
SCORE_MIN, SCORE_MAX = -1_000_000_000, 1_000_000_000
TIMER_MAX = 86_400_000
DEFAULT_TIMER = 60_000


def is_int(value: Any) -> TypeGuard[int]:
    """A JSON integer (not a bool)."""
    return isinstance(value, int) and not isinstance(value, bool)


def is_identifier(value: Any) -> bool:
    """1 to 64 characters of [A-Za-z0-9_.-]."""
    return isinstance(value, str) and IDENTIFIER.fullmatch(value) is not None


def is_timestamp(value: Any) -> bool:
    """An RFC 3339 UTC timestamp with milliseconds."""
    return isinstance(value, str) and TIMESTAMP.fullmatch(value) is not None


def transition_accepted(current: str, new: str) -> bool:
    """Whether setting `status` to `new` from `current` is accepted (notes 18, 19)."""
    if current == "finished":
        return False
    return current == new or (current, new) in ALLOWED


def state_problems(state: Any, game_id: str | None = None) -> list[str]:
    """What is wrong with a full game state object (PROTOCOL.md "Game state", note 15)."""
    if not isinstance(state, dict):
        return [f"state is not an object: {state!r}"]
    problems: list[str] = []
    missing = STATE_KEYS - state.keys()
    extra = state.keys() - STATE_KEYS
    if missing:
        problems.append(f"state lacks {sorted(missing)}")
    if extra:
        problems.append(f"state has unexpected keys {sorted(extra)}")
    if game_id is not None and state.get("game_id") != game_id:
        problems.append(f"state.game_id is {state.get('game_id')!r}, expected {game_id!r}")
    if "status" in state and state["status"] not in STATUSES:
        problems.append(f"state.status {state['status']!r} is not a status")
    version = state.get("version")
    if "version" in state and not (is_int(version) and version >= 1):
        problems.append(f"state.version {version!r} is not an integer >= 1")
    if "updated_at" in state and not is_timestamp(state["updated_at"]):
        problems.append(f"state.updated_at {state['updated_at']!r} is not RFC 3339 UTC with ms")
    scores, timer, settings = state.get("scores"), state.get("timer"), state.get("settings")
    if "scores" in state and not (
        isinstance(scores, dict) and all(is_int(v) for v in scores.values())
    ):
        problems.append(f"state.scores {scores!r} is not an object of integers")
    if "timer" in state and not (
        isinstance(timer, dict) and all(is_int(v) for v in timer.values())
    ):
        problems.append(f"state.timer {timer!r} is not an object of integers")
    if isinstance(scores, dict) and isinstance(timer, dict) and scores.keys() != timer.keys():
        problems.append(
            f"state.scores and state.timer keys differ: {sorted(scores)} vs {sorted(timer)}"
        )
    if "settings" in state and not (
        isinstance(settings, dict) and all(isinstance(v, str) for v in settings.values())
    ):
        problems.append(f"state.settings {settings!r} is not an object of strings")
    current = state.get("current_player")
    if current is not None and not (isinstance(scores, dict) and current in scores):
        problems.append(f"state.current_player {current!r} is not a player of the game")
    return problems


def without_volatile(state: dict[str, Any]) -> dict[str, Any]:
    """`state` without `updated_at` (for comparing states across changes)."""
    return {k: v for k, v in state.items() if k != "updated_at"}
