"""One client connection's protocol, as a pure state machine fed frames and a clock.

`Session.handle(frame, now)` checks a frame in the order of note 1, applies an accepted
change to the in-memory `Games`, and returns an `Outcome`: the encoded answer, the log line
to make durable before the answer leaves, the `STATE` broadcast, the game to subscribe to,
and the close code, if any. The asyncio layer (`legacy.service`) only moves these bytes, so
everything here is tested without sockets or an event loop.

Faults that change what the server *decides* (`score-delta-off-by-one`, `refuse-auth`,
`reorder-settings`, `clock-skew`) are parameters of `Context`; faults that change what the
server *sends* live in the service.
"""

from __future__ import annotations

import math
import time
import uuid
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Final

import orjson

from legacy.auth import Identity, verify_token
from legacy.errors import (
    BadMessage,
    Conflict,
    FloatForInt,
    Forbidden,
    InvalidState,
    NotFound,
    RateLimited,
    Refusal,
    Unauthenticated,
    UnknownType,
)
from legacy.rules import (
    MAX_PLAYERS,
    GameState,
    expect_int,
    format_ms,
    is_identifier,
    join_timer,
    merge_join,
    merge_update,
    parse_import,
    parse_update,
    resolve_update,
)
from legacy.store import Games, import_record, join_record, update_record
from stateshift.exactjson import exact_json

MESSAGE_TYPES: Final = (
    "CONNECT",
    "HEARTBEAT",
    "STATE_UPDATE",
    "GET_STATE",
    "DISCONNECT",
    "LIST_GAMES",
    "IMPORT_STATE",
)
INVALID_LABEL: Final = "invalid"  # metric label of frames without a known type
ADMIN_ONLY: Final = frozenset({"LIST_GAMES", "IMPORT_STATE"})
REFUSAL_WINDOW: Final = 10.0
MAX_REFUSALS: Final = 200
DEFAULT_PAGE: Final = 100
MAX_PAGE: Final = 1000


def wall_clock_ms() -> int:
    """Milliseconds since the epoch, from the system clock."""
    return time.time_ns() // 1_000_000


@dataclass(slots=True)
class Context:
    """What every session of one server shares: the games, the secret, the decision faults."""

    games: Games
    secret: str
    clock_ms: Callable[[], int] = wall_clock_ms
    skew_ms: int = 0
    delta_bias: int = 0
    refuse_auth: bool = False
    reorder_settings: bool = False
    rate: float = 50.0
    burst: float = 100.0

    def now(self) -> str:
        """The current time as the server states it (RFC 3339 ms, skewed by the fault)."""
        return format_ms(self.clock_ms() + self.skew_ms)

    def present(self, state: GameState) -> GameState | dict[str, Any]:
        """The state as it goes on the wire (settings keys reversed under the fault)."""
        if self.reorder_settings and len(state["settings"]) > 1:
            return {**state, "settings": dict(reversed(state["settings"].items()))}
        return state

    def encode_state(self, state: GameState, re: str | None = None) -> bytes:
        """A `STATE` frame: an answer when `re` is given, else the broadcast."""
        if re is None:
            message: dict[str, Any] = {"type": "STATE"}
        else:
            message = {"type": "STATE", "re": re}
        message["game_id"] = state["game_id"]
        message["version"] = state["version"]
        message["state"] = self.present(state)
        return orjson.dumps(message)


@dataclass(slots=True)
class Outcome:
    """What the I/O layer must do for one frame, in this order.

    1. If `record`: append it to the log and wait for the sync (or undo with `undo`).
    2. Send `reply` on this connection; then send `broadcast` to the game's connections.
    3. If `subscribe`: add this connection to that game's broadcast set.
    4. If `close`: close the connection with that code.

    `ordered` asks for delivery in commit order even without a record, because the reply
    shows state that may not be synced yet.
    """

    label: str
    reply: bytes | None = None
    code: str | None = None  # the ERROR code, for metrics
    record: bytes | None = None
    undo: tuple[str, GameState | None] | None = None
    broadcast: tuple[str, bytes] | None = None
    subscribe: str | None = None
    close: int | None = None
    reason: str = ""
    ordered: bool = False
    fault: str | None = None
    re: str | None = None


class RateLimiter:
    """Token bucket (`rate` per second, `burst` deep) plus the 4429 abuse window (note 25)."""

    __slots__ = ("_last", "_rate", "_refusals", "_tokens", "burst")

    def __init__(self, rate: float, burst: float, now: float) -> None:
        self._rate = rate
        self.burst = burst
        self._tokens = burst
        self._last = now
        self._refusals: deque[float] = deque()

    def take(self, now: float) -> int:
        """Spend one token: 0 when the message may pass, else the wait in ms (>= 1)."""
        tokens = self._tokens + (now - self._last) * self._rate
        self._last = now
        if tokens > self.burst:
            tokens = self.burst
        if tokens >= 1.0:
            self._tokens = tokens - 1.0
            return 0
        self._tokens = tokens
        return max(1, math.ceil((1.0 - tokens) / self._rate * 1000.0))

    def refuse(self, now: float) -> bool:
        """Count a refusal; True when it makes more than 200 within the last 10 s (abuse)."""
        refusals = self._refusals
        refusals.append(now)
        while refusals[0] <= now - REFUSAL_WINDOW:
            refusals.popleft()
        return len(refusals) > MAX_REFUSALS


def _readable_id(message: object) -> str | None:
    """The message's `id` if readable (note 2), else None."""
    if isinstance(message, dict):
        mid = message.get("id")
        if isinstance(mid, str) and 0 < len(mid) <= 64:
            return mid
    return None


class Session:
    """The protocol state of one connection on a game path (`game_id`) or the admin path."""

    def __init__(self, ctx: Context, game_id: str | None, now: float) -> None:
        self.ctx = ctx
        self.game_id = game_id
        self.identity: Identity | None = None
        self.session_id = uuid.uuid4().hex
        self.limiter = RateLimiter(ctx.rate, ctx.burst, now)

    # --- entry point --------------------------------------------------------------------

    def handle(self, frame: str | bytes, now: float) -> Outcome:
        """Decide what one incoming frame (text: str, binary: bytes) leads to."""
        wait_ms = self.limiter.take(now)
        if wait_ms:
            return self._rate_limited(frame, now, wait_ms)
        if not isinstance(frame, str):
            return self._refuse(BadMessage("binary frames are not accepted"), None, INVALID_LABEL)
        try:
            message = orjson.loads(frame)
        except orjson.JSONDecodeError:
            # orjson also refuses integers too long for a double (note 30: still integers)
            message = exact_json(frame)
            if message is None:
                return self._refuse(BadMessage("not JSON"), None, INVALID_LABEL)
        try:
            return self._dispatch(message)
        except FloatForInt:
            # Not decided yet: orjson reads integers beyond 64 bits as floats (note 30).
            exact = exact_json(frame)
            if exact is not None:
                try:
                    return self._dispatch(exact)
                except FloatForInt as exc:
                    return self._refuse(exc, _readable_id(exact), _label(exact))
            return self._refuse(
                BadMessage("a number is not an integer"), _readable_id(message), _label(message)
            )

    def fail(self, exc: Refusal, outcome: Outcome) -> Outcome:
        """The answer that replaces `outcome` when its change could not be stored."""
        return self._refuse(exc, outcome.re, outcome.label)

    def _rate_limited(self, frame: str | bytes, now: float, wait_ms: int) -> Outcome:
        if self.limiter.refuse(now):
            return Outcome(INVALID_LABEL, code=RateLimited.code, close=4429, reason="rate abuse")
        re = None
        label = INVALID_LABEL
        if isinstance(frame, str):
            try:
                message = orjson.loads(frame)
            except orjson.JSONDecodeError:
                pass
            else:
                re = _readable_id(message)
                label = _label(message)
        return self._refuse(RateLimited("over the message rate", wait_ms), re, label)

    def _refuse(self, exc: Refusal, re: str | None, label: str) -> Outcome:
        body: dict[str, Any] = {"type": "ERROR", "re": re, "code": exc.code, "message": exc.message}
        extra = exc.extra()
        if extra:
            body.update(extra)
        outcome = Outcome(label, reply=orjson.dumps(body), code=exc.code, re=re)
        if exc.fatal:
            outcome.close = exc.close_code
            outcome.reason = exc.message[:100]
        # Answers derived from game state wait behind unsynced changes, like the state.
        outcome.ordered = isinstance(exc, Conflict | InvalidState | NotFound)
        if isinstance(exc, Unauthenticated) and exc.fatal and self.ctx.refuse_auth:
            outcome.fault = "refuse-auth"
        return outcome

    def _dispatch(self, message: Any) -> Outcome:
        """Check the envelope (note 1) and run the message's handler."""
        if not isinstance(message, dict):
            return self._refuse(BadMessage("a message must be a JSON object"), None, INVALID_LABEL)
        re = _readable_id(message)
        if re is None:
            return self._refuse(
                BadMessage("id must be a string of 1 to 64 characters"), None, _label(message)
            )
        mtype = message.get("type")
        if not isinstance(mtype, str):
            return self._refuse(BadMessage("type must be a string"), re, INVALID_LABEL)
        handler = self._HANDLERS.get(mtype)
        if handler is None:
            return self._refuse(UnknownType(f"unknown type {mtype[:64]!r}"), re, INVALID_LABEL)
        try:
            if self.identity is None and mtype != "CONNECT":
                raise Unauthenticated("CONNECT first")
            if self.game_id is not None and mtype in ADMIN_ONLY:
                raise Forbidden(f"{mtype} is only allowed on the admin path")
            if self.game_id is None and mtype == "STATE_UPDATE":
                raise BadMessage("STATE_UPDATE goes through a game path")
            outcome = handler(self, message, re)
        except FloatForInt:
            raise
        except Refusal as exc:
            return self._refuse(exc, re, mtype)
        outcome.re = re
        return outcome

    # --- handlers -------------------------------------------------------------------------

    def _connect(self, message: dict[str, Any], re: str) -> Outcome:
        if self.identity is not None:
            raise BadMessage("already connected")
        ctx = self.ctx
        if ctx.refuse_auth:
            raise Unauthenticated("invalid token", fatal=True)
        identity = verify_token(message.get("token"), ctx.secret, self.game_id)
        body: dict[str, Any] = {
            "type": "CONNECTED",
            "re": re,
            "session_id": self.session_id,
            "player_id": identity.player_id,
            "role": identity.role,
        }
        game_id = self.game_id
        if game_id is None:
            self.identity = identity
            return Outcome("CONNECT", reply=orjson.dumps(body))
        outcome = Outcome("CONNECT", subscribe=game_id, ordered=True)
        state = ctx.games.get(game_id)
        if identity.role == "player" and (
            state is None or identity.player_id not in state["scores"]
        ):
            if state is not None and len(state["scores"]) >= MAX_PLAYERS:
                raise Forbidden(f"the game has {MAX_PLAYERS} players", fatal=True)
            version = 1 if state is None else state["version"] + 1
            at = ctx.now()
            millis = join_timer(state)
            state = merge_join(state, game_id, identity.player_id, millis, version, at)
            outcome.undo = (game_id, ctx.games.put(state))
            outcome.record = join_record(game_id, version, at, identity.player_id, millis)
            if version > 1:  # a new game has no connection to tell yet
                outcome.broadcast = (game_id, ctx.encode_state(state))
        elif state is None:
            raise NotFound(f"game {game_id} does not exist", fatal=True)
        body["state"] = ctx.present(state)
        outcome.reply = orjson.dumps(body)
        if ctx.reorder_settings:
            outcome.fault = "reorder-settings"
        self.identity = identity
        return outcome

    def _heartbeat(self, message: dict[str, Any], re: str) -> Outcome:
        body = {"type": "HEARTBEAT_ACK", "re": re, "server_time": self.ctx.now()}
        return Outcome("HEARTBEAT", reply=orjson.dumps(body))

    def _state_update(self, message: dict[str, Any], re: str) -> Outcome:
        update = parse_update(message.get("updates"))
        expected = message.get("expected_version")
        if expected is not None:
            expect_int(expected, "expected_version")
        assert self.identity is not None  # checked by _dispatch
        assert self.game_id is not None  # STATE_UPDATE is refused on the admin path
        if self.identity.role == "observer":
            raise Forbidden("observers cannot update")
        ctx = self.ctx
        state = ctx.games.get(self.game_id)
        assert state is not None  # the session's CONNECT found or created it
        if expected is not None and expected != state["version"]:
            raise Conflict(f"the game is at version {state['version']}", state["version"])
        change = resolve_update(state, update, ctx.delta_bias)
        version = state["version"] + 1
        at = ctx.now()
        new = merge_update(state, change, version, at)
        outcome = Outcome(
            "STATE_UPDATE",
            reply=orjson.dumps({"type": "ACK", "re": re, "version": version}),
            record=update_record(self.game_id, version, at, change),
            undo=(self.game_id, ctx.games.put(new)),
            broadcast=(self.game_id, ctx.encode_state(new)),
        )
        if ctx.delta_bias and update.score_deltas:
            outcome.fault = "score-delta-off-by-one"
        elif ctx.reorder_settings:
            outcome.fault = "reorder-settings"
        return outcome

    def _get_state(self, message: dict[str, Any], re: str) -> Outcome:
        game_id = self.game_id
        if game_id is None:
            game_id = message.get("game_id")
            if not is_identifier(game_id):
                raise BadMessage("game_id must be a game id")
            assert isinstance(game_id, str)
        state = self.ctx.games.get(game_id)
        if state is None:
            raise NotFound(f"game {game_id} does not exist")
        return Outcome(
            "GET_STATE",
            reply=self.ctx.encode_state(state, re),
            ordered=True,
            fault="reorder-settings" if self.ctx.reorder_settings else None,
        )

    def _disconnect(self, message: dict[str, Any], re: str) -> Outcome:
        reply = orjson.dumps({"type": "DISCONNECTED", "re": re})
        return Outcome("DISCONNECT", reply=reply, close=1000, reason="disconnected")

    def _list_games(self, message: dict[str, Any], re: str) -> Outcome:
        after = message.get("after")
        if after is not None and not is_identifier(after):
            raise BadMessage("after must be a game id")
        limit = message.get("limit")
        if limit is None:
            limit = DEFAULT_PAGE
        elif type(limit) is not int or not 1 <= limit <= MAX_PAGE:
            raise BadMessage(f"limit must be an integer in [1, {MAX_PAGE}]")
        states, cursor = self.ctx.games.page(after, limit)
        games = [{"game_id": s["game_id"], "version": s["version"]} for s in states]
        body = {"type": "GAMES", "re": re, "games": games, "next": cursor}
        return Outcome("LIST_GAMES", reply=orjson.dumps(body), ordered=True)

    def _import_state(self, message: dict[str, Any], re: str) -> Outcome:
        ctx = self.ctx
        state = parse_import(message.get("state"), ctx.now())
        game_id = state["game_id"]
        return Outcome(
            "IMPORT_STATE",
            reply=orjson.dumps({"type": "ACK", "re": re, "version": state["version"]}),
            record=import_record(state),
            undo=(game_id, ctx.games.put(state)),
            broadcast=(game_id, ctx.encode_state(state)),
        )

    _HANDLERS: Final[dict[str, Callable[[Session, dict[str, Any], str], Outcome]]] = {
        "CONNECT": _connect,
        "HEARTBEAT": _heartbeat,
        "STATE_UPDATE": _state_update,
        "GET_STATE": _get_state,
        "DISCONNECT": _disconnect,
        "LIST_GAMES": _list_games,
        "IMPORT_STATE": _import_state,
    }


def _label(message: object) -> str:
    """The metric label for a message: its type when known, else `invalid`."""
    if isinstance(message, dict):
        mtype = message.get("type")
        if mtype in MESSAGE_TYPES:
            assert isinstance(mtype, str)
            return mtype
    return INVALID_LABEL
