"""Shadow ordering: which client frame may go to the shadow now (pure, no I/O).

Two clients of one game race; the primary decides the order with its versions. If the shadow
applied the same updates in arrival order, every concurrent `set` would become a false
mismatch. So every shadow-bound frame waits in its connection's FIFO until the primary has
answered it, which gives it a *placement*:

- `CLAIM v`: it made version v (an `ACK`, or a `CONNECTED` that joined): released when the
  shadow has applied v-1;
- `AFTER p`: it happened when the primary was at version p (a refused update, a `GET_STATE`,
  a `CONNECT` that did not join): released once the shadow has applied p. p is what the
  frame's own connection showed when the primary answered it (a `CONFLICT` says it), not
  the newest version read on any connection: the proxy reads each socket on its own, and
  another connection's newer `ACK` may be read first;
- `FREE`: it has no place in the game's order (heartbeats, frames without a readable id);
- `SKIP`: the primary did not process it (`RATE_LIMITED`): never mirrored.

State-changing frames (`STATE_UPDATE`, `CONNECT`, `IMPORT_STATE`) go one at a time per game:
the next waits for the shadow's answer to the previous. A `CLAIM` also waits while another
connection of the game has a change the primary has not answered yet (it may have been
decided first: a refusal placed before the claimed version). An admin connection has no
game: its frames go at once, but an `IMPORT_STATE` waits for the primary's answer; accepted
for a game with connections here, whose order it cannot be placed in, it is not mirrored
and the game is marked not comparable (reason `import`) until a resync.

A version the proxy never sees a claim for (a change made elsewhere) is a *gap*: after
`gap_timeout` the game is marked not comparable and the order moves on. A shadow that does
not answer within `answer_timeout` is declared stalled for that connection.

The caller feeds events (`client_frame`, `primary_answer`, `shadow_answer`, …) and sends what
`take_releases()` returns; `take_events()` reports drops and games that stopped being
comparable.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from typing import Any, Final

WAITING: Final = 0
FREE: Final = 1
SKIP: Final = 2
CLAIM: Final = 3
AFTER: Final = 4

#: types whose effect on the shadow depends on their order in the game
STATE_CHANGING: Final = frozenset({"STATE_UPDATE", "CONNECT", "IMPORT_STATE"})
#: types that never need the primary's answer to be placed
UNORDERED: Final = frozenset({"HEARTBEAT", "DISCONNECT"})
#: the longest readable message id (PROTOCOL.md; shorter or longer ones are answered `re: null`)
MAX_ID: Final = 64


def readable_id(value: object) -> str | None:
    """A message's `id` when the servers can read it (a string of 1 to 64 characters, note 2
    of docs/protocol-notes.md), else None: such a frame is answered with `re: null`, so no
    answer will ever carry it."""
    if isinstance(value, str) and 0 < len(value) <= MAX_ID:
        return value
    return None


@dataclass(eq=False, slots=True, init=False)
class Entry:
    """One client frame on its way to the shadow (one per client frame: `__init__` is
    written out, so that mypyc compiles it; a dataclass's generated one is interpreted)."""

    data: bytes
    msg_id: str | None
    msg_type: str | None
    exclusive: bool
    kind: int = WAITING
    at: int = 0
    released_at: float = 0.0
    #: never going to the shadow (lost with it, or sent while it was gone); a version it
    #: makes is skipped in the game's order when the primary's answer tells which
    dropped: bool = False
    #: a client frame without a readable id: answered `ERROR` with `re: null`
    nameless: bool = False
    #: when it was forwarded to the primary
    sent: float = 0.0
    #: the game an admin `IMPORT_STATE` replaces
    target: str | None = None

    def __init__(
        self,
        data: bytes,
        msg_id: str | None,
        msg_type: str | None,
        exclusive: bool,
        kind: int = WAITING,
    ) -> None:
        self.data = data
        self.msg_id = msg_id
        self.msg_type = msg_type
        self.exclusive = exclusive
        self.kind = kind
        self.at = 0
        self.released_at = 0.0
        self.dropped = False
        self.nameless = False
        self.sent = 0.0
        self.target = None


@dataclass(eq=False, slots=True)
class ConnOrder:
    """A client connection's shadow-bound FIFO."""

    conn_id: int
    game_id: str | None
    entries: deque[Entry] = field(default_factory=deque)
    shadow_open: bool = False
    dead: bool = False
    #: released frames whose answer the shadow still owes, with their release time
    unanswered: deque[tuple[Entry, float]] = field(default_factory=deque)
    #: frames with an id the primary has not answered yet, in the order sent: an answer is
    #: for the oldest of them with its `re` (answers come in the order of the requests, and
    #: a client may use one id twice)
    awaiting: deque[Entry] = field(default_factory=deque)
    #: released frames without a readable id whose `re: null` answer the shadow still owes
    nulls: int = 0
    #: the newest version this connection's primary stream showed (answers, broadcasts): a
    #: refusal on it was decided at that version (note 36), whatever other sockets show
    seen: int = 0


@dataclass(eq=False, slots=True)
class GameOrder:
    """A game's position in the shadow: the last version the shadow applied, in order."""

    game_id: str
    released: int | None = None
    busy: Entry | None = None
    busy_conn: ConnOrder | None = None
    known: int = 0
    skipped: set[int] = field(default_factory=set)
    conns: set[ConnOrder] = field(default_factory=set)
    gap_since: float | None = None
    #: a resync is reading the primary: nothing ordered goes to the shadow meanwhile
    held: bool = False
    #: versions up to this one are in the shadow's imported copy: their frames are not sent
    floor: int | None = None
    #: recent primary states: version -> players, to tell a join from a reconnect
    players: dict[int, frozenset[str]] = field(default_factory=dict)
    #: a claim waits for another connection's undecided change (see `_undecided`): `tick`
    #: pumps the game again, since that wait ends by itself after `answer_timeout`
    deferred: bool = False


@dataclass(frozen=True, slots=True)
class Event:
    """Something the harness must count or act on."""

    kind: str  # "drop" | "not_comparable" | "not_mirrored" (reason: the message id)
    reason: str
    conn_id: int | None = None
    game_id: str | None = None
    frames: int = 0


class ShadowOrder:
    """Per-connection FIFOs and per-game release order for shadow-bound frames."""

    def __init__(
        self,
        max_buffer: int = 1024,
        gap_timeout: float = 5.0,
        answer_timeout: float = 5.0,
        keep_states: int = 64,
    ) -> None:
        self.max_buffer = max_buffer
        self.gap_timeout = gap_timeout
        self.answer_timeout = answer_timeout
        self.keep_states = keep_states
        self.conns: dict[int, ConnOrder] = {}
        self.games: dict[str, GameOrder] = {}
        #: what `take_releases` and `take_events` return (read them to know if there is any)
        self.releases: list[tuple[int, bytes, str | None, bool]] = []
        self.events: list[Event] = []

    # ----------------------------------------------------------------- connections

    def add_conn(self, conn_id: int, game_id: str | None) -> None:
        """A client connection opened (game paths carry their game id)."""
        conn = ConnOrder(conn_id, game_id)
        self.conns[conn_id] = conn
        if game_id is not None:
            self._game(game_id).conns.add(conn)

    def shadow_opened(self, conn_id: int, now: float) -> None:
        """The connection's shadow upstream is open: its FIFO may flow."""
        conn = self.conns.get(conn_id)
        if conn is not None and not conn.dead:
            conn.shadow_open = True
            self._pump(conn, now)

    def shadow_closed(self, conn_id: int) -> bool:
        """The connection's shadow upstream closed without a fault of its own (its deadline
        for a `CONNECT` the client has not sent yet): if nothing sent to it is unanswered,
        the connection's frames wait for the next one, nothing is lost, and True is
        returned. False (nothing changed) when something in flight would be lost: that is
        a loss (`shadow_lost`)."""
        conn = self.conns.get(conn_id)
        if conn is None or conn.dead:
            return False
        game = self.games.get(conn.game_id) if conn.game_id is not None else None
        if conn.unanswered or conn.nulls or (game is not None and game.busy_conn is conn):
            return False
        conn.shadow_open = False
        return True

    def shadow_lost(self, conn_id: int, reason: str, now: float) -> None:
        """The shadow of this connection is gone (refused, crashed, overflow, stalled…):
        drop what it holds, count it, and let the game's order move on without it."""
        conn = self.conns.get(conn_id)
        if conn is None or conn.dead:
            return
        conn.dead = True
        conn.shadow_open = False
        conn.unanswered.clear()
        conn.nulls = 0
        dropped = len(conn.entries)
        self.events.append(Event("drop", reason, conn_id, conn.game_id, dropped))
        game = self.games.get(conn.game_id) if conn.game_id is not None else None
        if game is not None:
            self._not_comparable(game, reason)
            if game.busy_conn is conn:
                self._answered(game, now)
        self._drop_entries(conn, game)
        if game is not None:
            self._advance(game)
            self._pump_game(game, now)

    def primary_lost(self, conn_id: int, now: float) -> None:
        """The connection's primary closed under its client (crashed, or closed on its own):
        what it never answered will never be placed. Those frames are dropped from the
        FIFO (what it answered keeps its place, and the shadow still answers what it was
        sent), and the game is marked not comparable (`primary_lost`) when one of them could
        change it: the primary may have applied it before it went. Without this the FIFO
        waited `answer_timeout` for answers that never come, then gave the shadow up as
        `stall`, and held the game's other connections meanwhile."""
        conn = self.conns.get(conn_id)
        if conn is None or conn.dead:
            return
        entries = conn.entries
        first = next((i for i, entry in enumerate(entries) if entry.kind == WAITING), None)
        if first is None:
            return
        game = self.games.get(conn.game_id) if conn.game_id is not None else None
        unanswered = list(entries)[first:]
        for _ in unanswered:
            entries.pop()
        changes = False
        for entry in unanswered:
            entry.dropped = True
            if entry.kind == CLAIM and game is not None:
                game.skipped.add(entry.at)
            if entry.kind == WAITING and (entry.nameless or entry.msg_type in STATE_CHANGING):
                changes = True
        dropped = set(map(id, unanswered))
        conn.awaiting = deque(e for e in conn.awaiting if id(e) not in dropped)
        if game is not None:
            if changes:
                self._not_comparable(game, "primary_lost")
            self._advance(game)
            self._pump_game(game, now)

    def revive(
        self, conn_id: int, replay: bytes | None, now: float, replay_id: str | None = None
    ) -> None:
        """A lost shadow reconnected: start a fresh FIFO, replaying the client's CONNECT
        first (the game stays not comparable until it is resynced)."""
        conn = self.conns.get(conn_id)
        if conn is None:
            return
        conn.dead = False
        game = self.games.get(conn.game_id) if conn.game_id is not None else None
        self._drop_entries(conn, game)
        conn.unanswered.clear()
        conn.nulls = 0
        if replay is not None:
            conn.entries.append(Entry(replay, replay_id, "CONNECT", False, FREE))
        self.shadow_opened(conn_id, now)

    def roles_swapped(self, conn_id: int) -> list[str | None]:
        """A flip made this connection's shadow its primary: what the old shadow still owed
        will come back as the primary's frames, never as the shadow's answers, so it is not
        waited for (else it would be declared a stall `answer_timeout` later). Returns the
        `re` of each of those answers, in order: an id, or None for an `ERROR` answering a
        frame without a readable id (the broadcasts it owes are the relay's business:
        `flipped`)."""
        conn = self.conns.get(conn_id)
        if conn is None:
            return []
        owed: list[str | None] = [
            entry.msg_id for entry, _ in conn.unanswered if entry.msg_id is not None
        ]
        owed.extend([None] * conn.nulls)
        conn.unanswered.clear()
        conn.nulls = 0
        return owed

    def hold(self, game_id: str) -> None:
        """Stop releasing this game's ordered frames (a resync is about to read the primary)."""
        self._game(game_id).held = True

    def busy(self, game_id: str) -> bool:
        """True while a frame of this game is in flight to the shadow."""
        game = self.games.get(game_id)
        return game is not None and game.busy is not None

    def resume(self, game_id: str, floor: int | None, now: float) -> None:
        """End a hold. With `floor`, the shadow now holds the primary's state at that version:
        frames placed at or before it are not sent, the order continues after it."""
        game = self._game(game_id)
        game.held = False
        if floor is not None:
            game.floor = floor
            game.released = floor
            game.skipped = {v for v in game.skipped if v > floor}
            game.gap_since = None
        self._pump_game(game, now)

    def pending(self, conn_id: int) -> int:
        """Frames of this connection still waiting or in flight to the shadow."""
        conn = self.conns.get(conn_id)
        if conn is None or conn.dead:
            return 0
        game = self.games.get(conn.game_id) if conn.game_id is not None else None
        busy = 1 if game is not None and game.busy_conn is conn else 0
        return len(conn.entries) + max(busy, len(conn.unanswered))

    def remove_conn(self, conn_id: int, now: float) -> None:
        """The client connection and both upstreams are closed."""
        conn = self.conns.pop(conn_id, None)
        if conn is None:
            return
        game = self.games.get(conn.game_id) if conn.game_id is not None else None
        if game is None:
            return
        if not conn.dead:
            for entry in conn.entries:
                if entry.kind == CLAIM:
                    game.skipped.add(entry.at)
        if game.busy_conn is conn:
            self._answered(game, now)
        game.conns.discard(conn)
        if not game.conns and game.busy is None:
            del self.games[game.game_id]
        else:
            self._pump_game(game, now)

    # ----------------------------------------------------------------- frames

    def client_frame(
        self, conn_id: int, data: bytes, msg: dict[str, Any] | None, now: float
    ) -> bool:
        """A client frame was forwarded to the primary; queue its shadow copy.

        `msg` is the frame parsed (None when it is not a JSON object). Returns False when the
        connection's buffer overflowed (its shadow is then lost, reason `overflow`).
        """
        conn = self.conns.get(conn_id)
        if conn is None:
            return True
        msg_id = readable_id(msg.get("id")) if msg is not None else None
        msg_type = msg.get("type") if msg is not None else None
        if not isinstance(msg_type, str):
            msg_type = None
        entry = Entry(data, msg_id, msg_type, msg_type in STATE_CHANGING)
        entry.nameless = msg_id is None
        entry.sent = now
        if conn.game_id is None and msg_type == "IMPORT_STATE":
            state = msg.get("state") if msg is not None else None
            target = state.get("game_id") if isinstance(state, dict) else None
            entry.target = target if isinstance(target, str) else None
        if msg_id is not None:
            awaiting = conn.awaiting
            awaiting.append(entry)
            if len(awaiting) > self.max_buffer:
                awaiting.popleft()  # never answered (the primary closed?): forget it
        if conn.dead:
            entry.dropped = True  # the primary's answer may still make a version: skip it
            return True
        if len(conn.entries) + len(conn.unanswered) >= self.max_buffer:
            # Waiting to go, or gone and still owed an answer: either way the shadow is this
            # far behind, and memory must stay bounded.
            entry.dropped = True
            self.shadow_lost(conn_id, "overflow", now)
            return False
        if msg_id is None or msg_type in UNORDERED or (conn.game_id is None and not entry.target):
            entry.kind = FREE
        conn.entries.append(entry)
        if len(conn.entries) == 1:
            self._pump(conn, now)
        return True

    def primary_frame(self, conn_id: int, frame: dict[str, Any], now: float) -> None:
        """A frame from the primary (already relayed to the client): learn versions from it
        and place the client frame it answers."""
        conn = self.conns.get(conn_id)
        if conn is None or conn.game_id is None:
            if conn is not None and "re" in frame:
                self._place_admin(conn, frame, now)
            return
        game = self._game(conn.game_id)
        frame_type = frame.get("type")
        version = frame.get("version")
        state = frame.get("state")
        if isinstance(state, dict):
            version = state.get("version", version)
            scores = state.get("scores")
            if type(version) is int and isinstance(scores, dict):
                self._remember(game, version, frozenset(scores))
        if type(version) is int and frame_type != "ERROR":
            if version > game.known:
                game.known = version
            if version > conn.seen:
                conn.seen = version
        if "re" not in frame:
            return  # a broadcast: nothing to place
        entry = self._awaited(conn, frame.get("re"))
        if entry is None or entry.kind != WAITING:
            return
        if frame_type == "ACK" and type(version) is int:
            entry.kind, entry.at = CLAIM, version
        elif frame_type == "CONNECTED" and type(version) is int:
            if self._joined(game, frame.get("player_id"), version):
                entry.kind, entry.at = CLAIM, version
            else:
                entry.kind, entry.at = AFTER, version
        elif frame_type == "STATE" and type(version) is int:
            entry.kind, entry.at = AFTER, version
        elif frame_type == "ERROR" and frame.get("code") == "RATE_LIMITED":
            entry.kind = SKIP  # the primary did not process it: neither may the shadow
        elif frame_type == "ERROR":
            # where the primary refused it: a CONFLICT says; else what this connection had
            # seen (not game.known: another socket's newer ACK may have been read first)
            conflict = frame.get("version")
            at = conflict if type(conflict) is int else (conn.seen or game.known)
            entry.kind, entry.at = AFTER, at
        else:
            entry.kind = FREE
        if entry.dropped:
            if entry.kind == CLAIM:  # a version the shadow will never get from here
                game.skipped.add(entry.at)
                self._advance(game)
                self._pump_game(game, now)
            return
        self._pump(conn, now)

    def shadow_frame(self, conn_id: int, frame: dict[str, Any], now: float) -> None:
        """A frame from the shadow: an answer to the frame in flight frees the game."""
        conn = self.conns.get(conn_id)
        if conn is None or "re" not in frame:
            return
        re_id = frame.get("re")
        if re_id is None:  # the answer to the oldest frame without a readable id
            if conn.nulls:
                conn.nulls -= 1
            return
        unanswered = conn.unanswered
        answered: Entry | None = None
        for index, (entry, _) in enumerate(unanswered):
            if entry.msg_id == re_id:  # the oldest with that id: answers come in order
                answered = entry
                del unanswered[index]
                break
        if answered is None or conn.game_id is None:
            return
        game = self.games.get(conn.game_id)
        if game is not None and game.busy is answered:
            self._answered(game, now)
            self._pump_game(game, now)

    def tick(self, now: float) -> None:
        """Time passes: declare stalled shadows (a frame unanswered for `answer_timeout`)
        and gaps."""
        for conn in list(self.conns.values()):
            if conn.unanswered and now - conn.unanswered[0][1] > self.answer_timeout:
                self.shadow_lost(conn.conn_id, "stall", now)
        for game in list(self.games.values()):
            if (
                game.gap_since is not None
                and now - game.gap_since > self.gap_timeout
                and not self._undecided(game, None, now)
            ):
                self._skip_gap(game, now)
            elif game.deferred:
                game.deferred = False
                self._pump_game(game, now)

    # ----------------------------------------------------------------- output

    def take_releases(self) -> list[tuple[int, bytes, str | None, bool]]:
        """Frames to send to the shadow now, as (conn_id, data, message id, urgent), in
        order. An urgent frame has a place in its game's order: it changes the state (the
        order waits for its answer) or reads it at a version (a later change of the game,
        from another connection, must not overtake it)."""
        releases, self.releases = self.releases, []
        return releases

    def take_events(self) -> list[Event]:
        """Drops and games that stopped being comparable since the last call."""
        events, self.events = self.events, []
        return events

    def idle(self) -> bool:
        """True when nothing waits for the shadow: every FIFO empty, no answer pending."""
        return all(game.busy is None for game in self.games.values()) and all(
            not conn.entries for conn in self.conns.values() if not conn.dead
        )

    def buffered(self) -> int:
        """Frames waiting in all FIFOs (the buffer depth metric)."""
        return sum(len(conn.entries) for conn in self.conns.values())

    # ----------------------------------------------------------------- internals

    def _game(self, game_id: str) -> GameOrder:
        game = self.games.get(game_id)
        if game is None:
            game = self.games[game_id] = GameOrder(game_id)
        return game

    def _remember(self, game: GameOrder, version: int, players: frozenset[str]) -> None:
        game.players[version] = players
        if len(game.players) > self.keep_states:
            del game.players[min(game.players)]

    def _joined(self, game: GameOrder, player: object, version: int) -> bool:
        """Did the CONNECT answered at `version` add `player`? Yes when the newest earlier
        state the proxy saw lacked the player, or for a game created by it (version 1)."""
        earlier = [v for v in game.players if v < version]
        if not earlier:
            return version == 1
        return player not in game.players[max(earlier)]

    def _awaited(self, conn: ConnOrder, re_id: object) -> Entry | None:
        """The frame an answer of the primary is for (taken off `awaiting`), or None."""
        awaiting = conn.awaiting
        if not awaiting or not isinstance(re_id, str):
            return None
        if awaiting[0].msg_id == re_id:  # the usual case: the oldest is answered first
            return awaiting.popleft()
        for index, entry in enumerate(awaiting):
            if entry.msg_id == re_id:
                del awaiting[index]
                return entry
        return None

    def _drop_entries(self, conn: ConnOrder, game: GameOrder | None) -> None:
        """Everything still in the connection's FIFO will never reach the shadow: versions
        already claimed are skipped now, the others when the primary answers."""
        for entry in conn.entries:
            entry.dropped = True
            if entry.kind == CLAIM and game is not None:
                game.skipped.add(entry.at)
        conn.entries.clear()

    def _place_admin(self, conn: ConnOrder, frame: dict[str, Any], now: float) -> None:
        entry = self._awaited(conn, frame.get("re"))
        if entry is not None and entry.kind == WAITING and not entry.dropped:
            rate_limited = frame.get("type") == "ERROR" and frame.get("code") == "RATE_LIMITED"
            entry.kind = SKIP if rate_limited else FREE
            game = self.games.get(entry.target) if entry.target is not None else None
            if game is not None and frame.get("type") == "ACK":
                # It replaced the game at a place in the primary's order that an admin
                # connection does not show: not mirrored; the game is not comparable until
                # a resync copies the primary's state (the import included) in order.
                entry.kind = SKIP
                self._not_comparable(game, "import")
            self._pump(conn, now)

    def _not_comparable(self, game: GameOrder, reason: str) -> None:
        self.events.append(Event("not_comparable", reason, None, game.game_id))

    def _answered(self, game: GameOrder, now: float) -> None:
        entry = game.busy
        game.busy = game.busy_conn = None
        if entry is not None and entry.kind == CLAIM:
            game.released = max(game.released or 0, entry.at)
            self._advance(game)

    def _advance(self, game: GameOrder) -> None:
        while game.released is not None and game.released + 1 in game.skipped:
            game.released += 1
            game.skipped.discard(game.released)

    def _skip_gap(self, game: GameOrder, now: float) -> None:
        """A version never claimed here: move on to the lowest waiting placement."""
        # the version the shadow must be at for each blocked head to go: v-1 for a CLAIM v,
        # p for an AFTER p
        due = [
            c.entries[0].at - 1 if c.entries[0].kind == CLAIM else c.entries[0].at
            for c in game.conns
            if c.entries and c.entries[0].kind in (CLAIM, AFTER)
        ]
        game.gap_since = None
        if not due or game.released is None:
            return
        if min(due) > game.released:
            self._not_comparable(game, "gap")
        game.released = max(game.released, min(due))
        self._advance(game)
        self._pump_game(game, now)

    def _pump_game(self, game: GameOrder, now: float) -> None:
        for conn in list(game.conns):
            self._pump(conn, now)

    def _pump(self, conn: ConnOrder, now: float) -> None:
        """Release what can go from this connection's FIFO, then from the game's others."""
        if conn.game_id is None:
            self._pump_free(conn, now)
            return
        game = self._game(conn.game_id)
        progress = True
        while progress:
            progress = False
            # Placements that are due go before the next version (they are "at their place").
            alone = len(game.conns) == 1 and conn in game.conns
            candidates = (conn,) if alone else (conn, *game.conns)
            for other in candidates:
                if self._release_heads(other, game, now, claims=False):
                    progress = True
            for other in candidates:
                if self._release_heads(other, game, now, claims=True):
                    progress = True
                    break
        self._update_gap(game, now)

    def _pump_free(self, conn: ConnOrder, now: float) -> None:
        while conn.entries and conn.shadow_open and not conn.dead:
            head = conn.entries[0]
            if head.kind == WAITING:
                return
            conn.entries.popleft()
            if head.kind == SKIP:
                self._not_mirrored(conn, head)
            else:
                self._emit(conn, head, now)

    def _release_heads(self, conn: ConnOrder, game: GameOrder, now: float, claims: bool) -> bool:
        released_any = False
        while conn.entries and conn.shadow_open and not conn.dead:
            head = conn.entries[0]
            if head.kind == WAITING:
                break
            if head.kind == SKIP:
                conn.entries.popleft()
                self._not_mirrored(conn, head)
                continue
            if head.kind == FREE:
                self._release(conn, game, head, now)
                released_any = True
                continue
            if game.floor is not None and head.at <= game.floor and head.msg_type != "CONNECT":
                # Already in the shadow's resynced copy. (A CONNECT still goes: its
                # connection needs it, and the copy already holds its join.)
                conn.entries.popleft()
                self._not_mirrored(conn, head)
                continue
            if game.held:
                break
            if game.released is None:
                # The first placement seen for this game sets the base of its order.
                game.released = head.at - 1 if head.kind == CLAIM else head.at
            if head.kind == CLAIM:
                if not claims or game.busy is not None:
                    break
                if head.at > game.released + 1:
                    break  # an earlier version is not placed yet
                if self._undecided(game, conn, now):
                    game.deferred = True
                    break  # a change not placed yet may have been decided before this one
            elif head.at > game.released or (head.exclusive and game.busy is not None):
                break
            self._release(conn, game, head, now)
            released_any = True
            if head.kind == CLAIM:
                break  # one version at a time
        return released_any

    def _undecided(self, game: GameOrder, but: ConnOrder | None, now: float) -> bool:
        """Whether a connection of the game (other than `but`) has a change at its head that
        the primary has not answered yet: until it does, its place in the game's order is
        unknown, and it may come before a version already claimed (the proxy reads each
        connection's socket on its own). Not for longer than `answer_timeout` after it was
        sent: an answer that late is not read (its client does not read, so the proxy
        stopped reading its primary), and the game's other changes must not wait for it
        until the comparator calls their shadow copies missing."""
        for c in game.conns:
            if c is not but and c.entries and not c.dead and c.shadow_open:
                head = c.entries[0]
                if (
                    head.kind == WAITING
                    and head.exclusive
                    and now - head.sent < self.answer_timeout
                ):
                    return True
        return False

    def _not_mirrored(self, conn: ConnOrder, entry: Entry) -> None:
        if entry.msg_id is not None:
            self.events.append(Event("not_mirrored", entry.msg_id, conn.conn_id, conn.game_id))

    def _emit(self, conn: ConnOrder, entry: Entry, now: float) -> None:
        urgent = entry.exclusive or entry.kind == CLAIM or entry.kind == AFTER
        self.releases.append((conn.conn_id, entry.data, entry.msg_id, urgent))
        if entry.msg_id is not None:
            conn.unanswered.append((entry, now))
        elif entry.nameless:
            conn.nulls += 1

    def _release(self, conn: ConnOrder, game: GameOrder, entry: Entry, now: float) -> None:
        conn.entries.popleft()
        entry.released_at = now
        self._emit(conn, entry, now)
        if entry.exclusive and entry.msg_id is not None and entry.kind in (CLAIM, AFTER):
            game.busy, game.busy_conn = entry, conn

    def _update_gap(self, game: GameOrder, now: float) -> None:
        """Start (or stop) the gap clock: placed frames wait for a version nobody claimed."""
        if game.busy is not None or game.released is None:
            game.gap_since = None
            return
        blocked = any(
            c.entries and c.entries[0].kind in (CLAIM, AFTER) and not c.dead and c.shadow_open
            for c in game.conns
        )
        if not blocked:
            game.gap_since = None
        elif game.gap_since is None:
            game.gap_since = now
