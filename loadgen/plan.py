"""What simulated players send, and the report's arithmetic. Pure: no sockets, no clock.

A `PlayerPlan` is one player's behaviour in one game. It keeps what the player knows of the
game (the players it has seen, the status it set, whose turn it is) and picks each next
update so that every one is *valid* on the server: it only names players it has seen in a
state (players never leave), only the game's host (its first player) changes the status and
only along allowed transitions, never `finished` (a finished game refuses every update), and
keeps numbers in range. Invalid messages are chosen on purpose, each with the error code
PROTOCOL.md documents for it, so that a wrong answer is a finding, not noise.
"""

from __future__ import annotations

import math
import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

#: the protocol's per-connection rate (PROTOCOL.md "Limits"): 50 messages/s, burst 100
PROTOCOL_RATE: Final = 50.0
#: what one connection may send per second in all (updates, heartbeats, invalid messages):
#: a margin under the protocol's limit, so that jitter never trips RATE_LIMITED
CONNECTION_BUDGET: Final = 40.0
#: seconds between a player's heartbeats
HEARTBEAT_EVERY: Final = 1.0
#: the most updates a player may send per second (budget minus heartbeats)
MAX_CONNECTION_RATE: Final = CONNECTION_BUDGET - 1.0 / HEARTBEAT_EVERY

#: invalid message kind -> (the error code it must get, whether its `re` is readable)
INVALID: Final[dict[str, tuple[str, bool]]] = {
    "bad_json": ("BAD_MESSAGE", False),
    "unknown_type": ("UNKNOWN_TYPE", True),
    "ill_typed": ("BAD_MESSAGE", True),
}

SETTINGS_THEMES: Final = ("classic", "night", "blitz", "marathon")


def connection_rate(rate: float, connections: int) -> float:
    """Updates per second for each connection: `rate` shared out, capped under the limit."""
    if connections <= 0 or rate <= 0:
        return 0.0
    return min(rate / connections, MAX_CONNECTION_RATE)


def invalid_frame(kind: str, msg_id: str, player: str) -> str:
    """The text of an invalid message of `kind` (see `INVALID` for the answer it must get)."""
    if kind == "bad_json":
        # cut off mid-object: not JSON, so its id is unreadable (note 2: `re` is null)
        return '{"type": "STATE_UPDATE", "id": "' + msg_id + '", "updates": {'
    if kind == "unknown_type":
        return '{"type": "TELEPORT", "id": "' + msg_id + '"}'
    if kind == "ill_typed":
        # a score that is not an integer: BAD_MESSAGE (note 16), nothing applied
        return (
            '{"type": "STATE_UPDATE", "id": "' + msg_id + '", '
            '"updates": {"scores": {"' + player + '": "ten"}}}'
        )
    raise ValueError(f"unknown invalid message kind {kind!r}")


@dataclass
class PlayerPlan:
    """One player's choices in one game (`host`: the player that starts the game)."""

    player: str
    game: str
    host: bool
    rng: random.Random
    #: players seen in a state of the game (never shrinks: players never leave)
    players: list[str] = field(default_factory=list)
    #: the status the host last asked for (only the host changes it)
    status: str = "waiting"
    current: str | None = None
    timer: int = 60_000
    round: int = 0
    #: while True, no score deltas are chosen (the demo's fault window)
    hold_deltas: bool = False

    def see(self, state: Mapping[str, Any]) -> None:
        """Learn from a state (CONNECTED, a STATE broadcast or answer)."""
        scores = state.get("scores")
        if isinstance(scores, Mapping):
            for player in scores:
                if player not in self.players:
                    self.players.append(player)
            self.players.sort()
        timer = state.get("timer")
        if isinstance(timer, Mapping) and isinstance(timer.get(self.player), int):
            self.timer = timer[self.player]
        current = state.get("current_player")
        if current is None or isinstance(current, str):
            self.current = current
        status = state.get("status")
        if self.host and isinstance(status, str) and status in ("active", "paused", "waiting"):
            # after a reconnect the host resumes from what the server says
            self.status = status

    def next_update(self) -> dict[str, Any]:
        """The `updates` object of this player's next STATE_UPDATE (always valid)."""
        rng = self.rng
        me = self.player
        if self.host and self.status == "waiting":
            self.status = "active"
            return {"status": "active", "current_player": me}
        roll = rng.random()
        if self.host and roll < 0.03:
            self.status = "paused" if self.status == "active" else "active"
            return {"status": self.status}
        if roll < 0.50 and not self.hold_deltas:
            return {"score_deltas": {me: rng.choice((1, 1, 2, 3, 5, 10, -1))}}
        if roll < 0.70:
            self.timer = max(0, self.timer - rng.randint(100, 2_000))
            return {"timer": {me: self.timer}}
        if roll < 0.85 and self.players:
            # end of my turn: hand it to the next player I know of, with my clock stopped
            others = self.players
            nxt = others[(others.index(me) + 1) % len(others)] if me in others else others[0]
            self.current = nxt
            return {"current_player": nxt, "timer": {me: self.timer}}
        if roll < 0.95:
            self.round += 1
            return {"settings": {"round": str(self.round)}}
        theme = rng.choice((*SETTINGS_THEMES, None))  # None removes the key
        return {"settings": {"theme": theme}}


def percentile(samples: Sequence[float], q: float) -> float | None:
    """The nearest-rank `q`-th percentile (0 < q <= 100) of sorted `samples`, or None."""
    if not samples:
        return None
    rank = max(1, math.ceil(q / 100.0 * len(samples)))
    return samples[min(rank, len(samples)) - 1]
