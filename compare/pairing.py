"""Pairing: which shadow frame answers the same thing as which primary frame (pure).

Direct answers pair by (connection, `re`); broadcasts pair by (`game_id`, `version`), once
per side (every connection on a game receives the same broadcast: the first copy counts).
What stays alone longer than `timeout` is itself a finding: `unpaired`, with the side that
is missing. Frames the proxy never mirrored (the primary refused them for rate, or the
shadow's copy was dropped) are announced with `not_mirrored` and expect no pair.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, Final

PRIMARY: Final = "primary"
SHADOW: Final = "shadow"


@dataclass(slots=True, init=False)
class Pair:
    """Two frames to compare, or one frame whose partner never came (`__init__` written
    out, so that mypyc compiles it: a dataclass's generated one runs interpreted)."""

    kind: str  # "answer" | "broadcast"
    game_id: str | None
    conn_id: int | None
    key: str
    primary: dict[str, Any] | None
    shadow: dict[str, Any] | None
    #: for unpaired: the side that never answered
    missing: str | None

    def __init__(
        self,
        kind: str,
        game_id: str | None,
        conn_id: int | None,
        key: str,
        primary: dict[str, Any] | None,
        shadow: dict[str, Any] | None,
        missing: str | None = None,
    ) -> None:
        self.kind = kind
        self.game_id = game_id
        self.conn_id = conn_id
        self.key = key
        self.primary = primary
        self.shadow = shadow
        self.missing = missing

    def version(self, side: str) -> int | None:
        """The version a side's frame shows (top level or in its state), if any."""
        frame = self.primary if side == PRIMARY else self.shadow
        if frame is None:
            return None
        state = frame.get("state")
        version = state.get("version") if isinstance(state, dict) else frame.get("version")
        return version if type(version) is int else None


@dataclass(slots=True, init=False)
class _Waiting:
    side: str
    frame: dict[str, Any]
    at: float
    game_id: str | None
    conn_id: int | None
    kind: str
    upstream: str
    #: later frames of the same side under the same key (a reused request id), oldest first:
    #: each pairs, in order, with the other side's
    more: list[_Waiting]

    def __init__(
        self,
        side: str,
        frame: dict[str, Any],
        at: float,
        game_id: str | None,
        conn_id: int | None,
        kind: str,
        upstream: str = "",
    ) -> None:
        self.side = side
        self.frame = frame
        self.at = at
        self.game_id = game_id
        self.conn_id = conn_id
        self.kind = kind
        self.upstream = upstream
        self.more = []


class Pairer:
    """Matches primary and shadow frames; reports the ones left alone."""

    def __init__(self, timeout: float = 10.0, remember: int = 100_000) -> None:
        self.timeout = timeout
        self.remember = remember
        self._waiting: OrderedDict[tuple[Any, ...], _Waiting] = OrderedDict()
        #: broadcasts already taken per side (later copies of the same broadcast are ignored)
        self._seen: OrderedDict[tuple[str, str, int], None] = OrderedDict()
        self._not_mirrored: set[tuple[int, str]] = set()
        #: answers dropped by `forget_game` (a resync, a divergence) -> their side: a partner
        #: arriving after that has nothing to be compared with
        #: (with how many of its answers: a reused id's chain is dropped whole)
        self._forgotten: OrderedDict[tuple[Any, ...], tuple[str, int]] = OrderedDict()

    def not_mirrored(self, conn_id: int, msg_id: str) -> None:
        """The proxy will never send this client frame to the shadow: expect no pair."""
        key = ("answer", conn_id, msg_id)
        waiting = self._waiting.get(key)
        if waiting is not None and waiting.side == PRIMARY and waiting.more:
            waiting.more.pop()  # a reused id: the newest of the primary's answers is this one
        elif self._waiting.pop(key, None) is None:
            self._not_mirrored.add((conn_id, msg_id))

    def add(
        self,
        side: str,
        frame: dict[str, Any],
        at: float,
        game_id: str | None,
        conn_id: int,
        upstream: str = "",
    ) -> Pair | None:
        """Take one upstream frame; return a complete pair when it completes one.

        Frames pair across upstreams (old with new) when `upstream` is given: a flip swaps
        the roles, and a frame sent before it may arrive after it; the role only decides
        which frame is called primary."""
        source = upstream or side
        re_id = frame.get("re")
        if isinstance(re_id, str):
            if side == PRIMARY and (conn_id, re_id) in self._not_mirrored:
                self._not_mirrored.discard((conn_id, re_id))
                return None
            key: tuple[Any, ...] = ("answer", conn_id, re_id)
            kind = "answer"
        elif frame.get("type") == "STATE" and "re" not in frame:
            bgame, version = frame.get("game_id"), frame.get("version")
            if not isinstance(bgame, str) or type(version) is not int:
                return None
            seen = (source, bgame, version)
            if seen in self._seen:
                return None
            self._seen[seen] = None
            if len(self._seen) > self.remember:
                self._seen.popitem(last=False)
            key = ("broadcast", bgame, version)
            kind = "broadcast"
            game_id = bgame
        else:
            return None  # an ERROR without a readable id: nothing to pair it with
        if kind == "answer" and self._forgotten:
            gone = self._forgotten.pop(key, None)
            if gone is not None and gone[0] != source:
                if gone[1] > 1:  # a reused id: more partners of the dropped chain to come
                    self._forgotten[key] = (gone[0], gone[1] - 1)
                return None  # its partner was dropped (a resync, a divergence): not compared
        other = self._waiting.get(key)
        if other is not None and (other.upstream or other.side) == source:
            # A reused request id: this side's answers pair, in order, with the other's.
            other.more.append(_Waiting(side, frame, at, game_id, conn_id, kind, upstream))
            return None
        if other is None:
            self._waiting[key] = _Waiting(side, frame, at, game_id, conn_id, kind, upstream)
            if len(self._waiting) > self.remember:
                self._waiting.popitem(last=False)
            return None
        self._next(key, other)
        # Roles as the newer frame sees them (the two frames may straddle a flip).
        primary, shadow = (frame, other.frame) if side == PRIMARY else (other.frame, frame)
        answer_conn = conn_id if kind == "answer" else None
        return Pair(kind, game_id, answer_conn, str(key[2]), primary, shadow)

    def expire(self, now: float) -> list[Pair]:
        """Frames alone for longer than the timeout, as unpaired findings (oldest first)."""
        expired: list[Pair] = []
        while self._waiting:
            key, waiting = next(iter(self._waiting.items()))
            if now - waiting.at <= self.timeout:
                break
            self._next(key, waiting)
            primary = waiting.frame if waiting.side == PRIMARY else None
            shadow = waiting.frame if waiting.side == SHADOW else None
            missing = SHADOW if waiting.side == PRIMARY else PRIMARY
            expired.append(
                Pair(
                    waiting.kind,
                    waiting.game_id,
                    waiting.conn_id,
                    str(key[2]),
                    primary,
                    shadow,
                    missing,
                )
            )
        return expired

    def _next(self, key: tuple[Any, ...], taken: _Waiting) -> None:
        """`taken` leaves the queue: the next frame its side sent under the key waits."""
        del self._waiting[key]
        if taken.more:
            following = taken.more.pop(0)
            following.more = taken.more
            self._waiting[key] = following

    def forget_game(self, game_id: str) -> None:
        """Drop everything waiting for a game (it stopped being comparable or was resynced).

        An answer's partner may still come (a heartbeat answered across a resync has no
        version for the resync's floor to skip it by): it is remembered, and dropped too."""
        for key in [k for k, w in self._waiting.items() if w.game_id == game_id]:
            waiting = self._waiting.pop(key)
            if waiting.kind == "answer":
                self._forgotten[key] = (waiting.upstream or waiting.side, 1 + len(waiting.more))
                if len(self._forgotten) > self.remember:
                    self._forgotten.popitem(last=False)

    def forget_conn(self, conn_id: int) -> None:
        """Drop what waits for a connection (its shadow was lost)."""
        for key in [
            k for k, w in self._waiting.items() if w.conn_id == conn_id and w.kind == "answer"
        ]:
            del self._waiting[key]
        self._not_mirrored = {item for item in self._not_mirrored if item[0] != conn_id}

    def __len__(self) -> int:
        return len(self._waiting)
