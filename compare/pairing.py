"""Pairing: which shadow frame answers the same thing as which primary frame (pure).

Direct answers pair by (connection, `re`); broadcasts pair by (`game_id`, `version`), once
per side (every connection on a game receives the same broadcast: the first copy counts).
What stays alone longer than `timeout` is itself a finding: `unpaired`, with the side that
is missing. Frames the proxy never mirrored (the primary refused them for rate, or the
shadow's copy was dropped) are announced with `not_mirrored` and expect no pair.
"""

from __future__ import annotations

from collections import OrderedDict, deque
from collections.abc import Collection, Mapping
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
    #: for unpaired: when the frame left alone was tapped (the tap's clock); 0.0 for a pair
    at: float
    #: for unpaired: the upstream that sent the frame left alone ("old", "new"; "" unknown)
    upstream: str

    def __init__(
        self,
        kind: str,
        game_id: str | None,
        conn_id: int | None,
        key: str,
        primary: dict[str, Any] | None,
        shadow: dict[str, Any] | None,
        missing: str | None = None,
        at: float = 0.0,
        upstream: str = "",
    ) -> None:
        self.kind = kind
        self.game_id = game_id
        self.conn_id = conn_id
        self.key = key
        self.primary = primary
        self.shadow = shadow
        self.missing = missing
        self.at = at
        self.upstream = upstream

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
    """One frame waiting for its partner."""

    #: what it pairs by: ("answer", connection, `re`) or ("broadcast", game, version)
    key: tuple[Any, ...]
    #: its arrival number: its place in the queue that expiry walks (oldest first)
    seq: int
    side: str
    frame: dict[str, Any]
    at: float
    game_id: str | None
    conn_id: int | None
    kind: str
    upstream: str
    #: later frames of the same side under the same key (a reused request id), oldest first:
    #: each pairs, in order, with the other side's (None until there is one)
    more: deque[_Waiting] | None

    def __init__(
        self,
        key: tuple[Any, ...],
        seq: int,
        side: str,
        frame: dict[str, Any],
        at: float,
        game_id: str | None,
        conn_id: int | None,
        kind: str,
        upstream: str = "",
    ) -> None:
        self.key = key
        self.seq = seq
        self.side = side
        self.frame = frame
        self.at = at
        self.game_id = game_id
        self.conn_id = conn_id
        self.kind = kind
        self.upstream = upstream
        self.more = None


class Pairer:
    """Matches primary and shadow frames; reports the ones left alone.

    Every waiting frame, a reused request id's later ones included, is in one queue in
    arrival order: expiry walks it from the oldest (each frame expires on its own age), and
    `remember` bounds it (past the bound the oldest frame is dropped, and its partner with
    it when it comes)."""

    def __init__(self, timeout: float = 10.0, remember: int = 100_000) -> None:
        self.timeout = timeout
        self.remember = remember
        #: key -> the frame that pairs next under it (the first of its `more`)
        self._waiting: dict[tuple[Any, ...], _Waiting] = {}
        #: every frame waiting for its partner, `more` included, by arrival number (oldest
        #: first): a key's frames are in it in their order, so the oldest is a first one
        self._queue: OrderedDict[int, _Waiting] = OrderedDict()
        self._arrivals = 0
        #: frames dropped unpaired to keep within `remember` (not findings: `_drop_oldest`)
        self.dropped = 0
        #: broadcasts already taken per side (later copies of the same broadcast are ignored)
        self._seen: OrderedDict[tuple[str, str, int], None] = OrderedDict()
        #: primary answers announced as never mirrored and not seen yet (bounded like the rest)
        self._not_mirrored: OrderedDict[tuple[int, str], None] = OrderedDict()
        #: frames dropped by `forget_game` (a resync, a divergence) or for the bound -> their
        #: side: a partner arriving after that has nothing to be compared with
        #: (with how many of its answers: a reused id's chain is dropped whole)
        #: (and the side the dropped frames were on: a lost shadow's answers never come)
        self._forgotten: OrderedDict[tuple[Any, ...], tuple[str, int, str]] = OrderedDict()

    def not_mirrored(self, conn_id: int, msg_id: str) -> None:
        """The proxy will never send this client frame to the shadow: expect no pair."""
        key = ("answer", conn_id, msg_id)
        waiting = self._waiting.get(key)
        if waiting is None:
            self._not_mirrored[(conn_id, msg_id)] = None
            if len(self._not_mirrored) > self.remember:
                self._not_mirrored.popitem(last=False)
        elif waiting.side == PRIMARY and waiting.more:
            # a reused id: the newest of the primary's answers is this one
            del self._queue[waiting.more.pop().seq]
        else:
            self._drop(key)

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
                del self._not_mirrored[(conn_id, re_id)]
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
        if self._forgotten:
            # (A frame of the dropped side does not cancel the record: the partners of the
            # dropped frames come first, whatever that side sends meanwhile.)
            gone = self._forgotten.get(key)
            if gone is not None and gone[0] != source:
                if gone[1] > 1:  # a reused id: more partners of the dropped chain to come
                    self._forgotten[key] = (gone[0], gone[1] - 1, gone[2])
                else:
                    del self._forgotten[key]
                return None  # its partner was dropped (a resync, the bound): not compared
        other = self._waiting.get(key)
        if other is not None and (other.upstream or other.side) != source:
            del self._queue[other.seq]
            self._next(other)
            # Roles as the newer frame sees them (the two frames may straddle a flip).
            primary, shadow = (frame, other.frame) if side == PRIMARY else (other.frame, frame)
            answer_conn = conn_id if kind == "answer" else None
            return Pair(kind, game_id, answer_conn, str(key[2]), primary, shadow)
        waiting = _Waiting(key, self._arrivals, side, frame, at, game_id, conn_id, kind, upstream)
        self._arrivals += 1
        if other is None:
            self._waiting[key] = waiting
        elif other.more is None:
            # A reused request id: this side's answers pair, in order, with the other's.
            other.more = deque((waiting,))
        else:
            other.more.append(waiting)
        self._queue[waiting.seq] = waiting
        if len(self._queue) > self.remember:
            self._drop_oldest()
        return None

    def expire(self, now: float) -> list[Pair]:
        """Frames alone for longer than the timeout, as unpaired findings (oldest first)."""
        expired: list[Pair] = []
        queue = self._queue
        while queue:
            seq, waiting = next(iter(queue.items()))
            if now - waiting.at <= self.timeout:
                break
            del queue[seq]
            self._next(waiting)
            primary = waiting.frame if waiting.side == PRIMARY else None
            shadow = waiting.frame if waiting.side == SHADOW else None
            missing = SHADOW if waiting.side == PRIMARY else PRIMARY
            expired.append(
                Pair(
                    waiting.kind,
                    waiting.game_id,
                    waiting.conn_id,
                    str(waiting.key[2]),
                    primary,
                    shadow,
                    missing,
                    waiting.at,
                    waiting.upstream,
                )
            )
        return expired

    def _next(self, taken: _Waiting) -> None:
        """`taken`, the first under its key, left the queue: the next frame its side sent
        under the key pairs next (it keeps its own place in the queue, by its own age)."""
        more = taken.more
        if more:
            following = more.popleft()
            following.more = more if more else None
            self._waiting[taken.key] = following
        else:
            del self._waiting[taken.key]

    def _drop_oldest(self) -> None:
        """Past `remember`: the oldest frame is dropped. Not a finding (its partner may well be
        on its way, only late under a flood); its partner is dropped too when it comes
        (`_forgotten`): alone it would expire as an unpaired finding, and an answer's would
        pair with the next answer of a reused id (and every later one with the wrong partner)."""
        _, oldest = self._queue.popitem(last=False)
        self._next(oldest)
        self.dropped += 1
        self._forget(oldest.key, oldest.upstream or oldest.side, 1, oldest.side)

    def _drop(self, key: tuple[Any, ...]) -> _Waiting:
        """Drop every frame waiting under a key (the first is returned, with its `more`)."""
        first = self._waiting.pop(key)
        del self._queue[first.seq]
        if first.more:
            for waiting in first.more:
                del self._queue[waiting.seq]
        return first

    def _forget(self, key: tuple[Any, ...], source: str, count: int, side: str) -> None:
        gone = self._forgotten.get(key)
        if gone is not None and gone[0] == source:
            count += gone[1]
        self._forgotten[key] = (source, count, side)
        if len(self._forgotten) > self.remember:
            self._forgotten.popitem(last=False)

    def forget_game(self, game_id: str) -> None:
        """Drop everything waiting for a game (it stopped being comparable or was resynced).

        A dropped frame's partner may still come, and is dropped too when it does (it is
        remembered): an answer's (a heartbeat answered across a resync has no version for the
        resync's floor to skip it by), and a broadcast's: one the primary sent after the
        resync's import and before this drop is above the floor, and a slow shadow's copy
        of it came later, alone, and was an unpaired finding; that finding resynced the
        game, whose next resync did the same (a false finding per game every `timeout`)."""
        self.forget((), (game_id,))

    def forget_conn(self, conn_id: int) -> None:
        """Drop what waits for a connection (its shadow was lost)."""
        self.forget((conn_id,), ())

    def forget(
        self,
        conn_ids: Collection[int],
        game_ids: Collection[str],
        floors: Mapping[str, int] | None = None,
    ) -> None:
        """`forget_conn` of every connection and `forget_game` of every game given, in one
        pass over what waits: a shadow lost under thousands of clients loses them all in a
        few loop turns, and one pass per connection and per game took seconds (every
        client's frames waiting behind it).

        `floors`: each resynced game's floor (the comparator's). A broadcast at or below its
        game's floor is dropped without being remembered: the floor already skips its
        partner, if one ever comes (the order sends the shadow no copy of what the import
        holds), and a record of it would only take room from the ones that matter."""
        conns = conn_ids if isinstance(conn_ids, (set, frozenset)) else set(conn_ids)
        games = game_ids if isinstance(game_ids, (set, frozenset)) else set(game_ids)
        if not conns and not games:
            return
        by_game: list[tuple[Any, ...]] = []
        by_conn: list[tuple[Any, ...]] = []
        for key, waiting in self._waiting.items():
            if waiting.game_id in games:
                by_game.append(key)
            elif waiting.kind == "answer" and waiting.conn_id in conns:
                by_conn.append(key)
        for key in by_game:
            first = self._drop(key)
            if first.kind == "broadcast" and floors:
                floor = floors.get(key[1])
                if floor is not None and key[2] <= floor:
                    continue
            count = 1 + (len(first.more) if first.more else 0)
            self._forget(key, first.upstream or first.side, count, first.side)
        for key in by_conn:
            self._drop(key)
        if not conns:
            return
        if self._not_mirrored:
            self._not_mirrored = OrderedDict(
                (item, None) for item in self._not_mirrored if item[0] not in conns
            )
        # The lost shadow connection will never answer what it was sent: the primary's
        # answers dropped earlier (`forget_game`, the bound) wait for no partner any more,
        # and a record of them would swallow the revived shadow's answer to a reused id.
        if self._forgotten:
            self._forgotten = OrderedDict(
                (key, gone)
                for key, gone in self._forgotten.items()
                if not (key[0] == "answer" and key[1] in conns and gone[2] == PRIMARY)
            )

    def __len__(self) -> int:
        """Frames waiting for their partner (a reused id's later ones included)."""
        return len(self._queue)
