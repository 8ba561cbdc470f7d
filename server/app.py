"""The new server's asyncio layer: websockets in, rules and group commit in the middle,
frames out. Decisions live in `rules`, `auth`, `ratelimit` and `games`; this module moves
frames, keeps per-connection bookkeeping and runs the liveness sweeper.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import re
import time
import uuid
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from http import HTTPStatus
from pathlib import Path
from typing import Any, cast

import orjson
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.datastructures import Headers
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request as HttpRequest
from websockets.http11 import Response

from server import errors
from server.auth import Claims, verify
from server.connection import MessageConnection
from server.errors import (
    BadMessage,
    DatabaseError,
    Forbidden,
    NotFound,
    StateServerError,
    Unauthenticated,
)
from server.fanout import Outbox, text_frame, write_now
from server.games import Change, Game, Games
from server.metrics import ServerMetrics
from server.ratelimit import RateLimiter
from server.rules import (
    GameState,
    Request,
    apply_update,
    is_identifier,
    join,
    parse_import,
    parse_list_games,
    parse_request,
    parse_update,
    timestamp,
)
from server.storage import Storage
from stateshift.netloc import listen_url
from stateshift.runtime import bound_port
from stateshift.wsclose import CLOSE_TIMEOUT, close_within

log = logging.getLogger("stateshift.server")

GAME_PATH = re.compile(r"/v1/games/([A-Za-z0-9_.-]{1,64})")
ADMIN_PATH = "/v1/admin"
MAX_FRAME = 65_536


@dataclass(slots=True)
class ServerSettings:
    """Everything `stateshift serve` can be told (PROTOCOL.md's limits as defaults)."""

    db: Path
    secret: str
    host: str = "127.0.0.1"
    port: int = 8765
    rate: float = 50.0
    burst: int = 100
    connect_timeout: float = 10.0
    idle_timeout: float = 60.0
    ping_interval: float = 20.0
    abuse_limit: int = 200
    abuse_window: float = 10.0
    max_batch: int = 256
    #: a connection whose unsent output exceeds this is dropped (a reader that never reads)
    max_write_buffer: int = 8 * 1024 * 1024
    #: answers or messages waiting on one connection beyond which it is no longer read (the
    #: backpressure websockets' receive queue gave, with pipelined requests)
    max_waiting: int = 64


def split_path(path: str) -> tuple[str, str | None] | None:
    """(`game`, game_id) or (`admin`, None) for a protocol path, None for any other path."""
    path = path.split("?", 1)[0]
    if path == ADMIN_PATH:
        return "admin", None
    match = GAME_PATH.fullmatch(path)
    return ("game", match.group(1)) if match else None


def dumps(frame: dict[str, Any]) -> bytes:
    """One frame's JSON encoding (UTF-8 bytes, sent as a text frame)."""
    return orjson.dumps(frame)


class Slot:
    """An answer whose frame is not known yet (a commit, or async work, fills `payload`)."""

    __slots__ = ("payload",)

    def __init__(self) -> None:
        self.payload: bytes | None = None


#: One entry of a connection's answer queue: a frame's JSON payload ready to go, a `Slot`, or
#: a function called when the entry's turn comes (a frame to build then, or None: an action
#: such as a close).
Answer = bytes | Slot | Callable[[], bytes | None]


class Conn:
    """Per-connection bookkeeping.

    Answers leave in request order (note 6) through `answers`: its head is always a `Slot` not
    filled yet (or the queue is empty), so an answer that is ready while the queue is empty is
    written at once, and filling a slot drains what follows it.
    """

    __slots__ = (
        "answers",
        "backlog",
        "claims",
        "close_sent",
        "closing",
        "game",
        "game_id",
        "kind",
        "last_activity",
        "last_ping",
        "limiter",
        "opened",
        "paused",
        "pauses",
        "session_id",
        "task",
        "ws",
    )

    def __init__(self, ws: ServerConnection, kind: str, game_id: str | None, now: float, s: Any):
        self.ws = ws
        self.kind = kind
        self.game_id = game_id
        self.opened = self.last_activity = self.last_ping = now
        self.limiter = RateLimiter(s.rate, s.burst, now, s.abuse_limit, s.abuse_window)
        self.claims: Claims | None = None
        self.game: Game | None = None
        self.session_id = ""
        #: no message received from now on is processed (a close is decided)
        self.closing = False
        #: the close has been started
        self.close_sent = False
        self.answers: deque[Answer] = deque()
        #: the message being handled asynchronously; later messages wait in `backlog`
        self.task: asyncio.Task[None] | None = None
        self.backlog: deque[tuple[bool, bytes]] = deque()
        #: reading is paused (too many answers or messages waiting); how many times it was
        self.paused = False
        self.pauses = 0

    def touch(self, *_: object) -> None:
        """Record activity (a message or a pong): the idle clock restarts."""
        self.last_activity = time.monotonic()


def idle(conn: Conn) -> bool:
    """No message of this connection is being handled by a task."""
    return conn.task is None


def write(conn: Conn, payload: bytes) -> None:
    """Write one frame now, without awaiting (so no other frame can come between)."""
    write_now(conn.ws, text_frame(payload))


class StateServer:
    """The new state server: `await start()`, then `await stop()` (graceful)."""

    def __init__(self, settings: ServerSettings, metrics: ServerMetrics | None = None) -> None:
        self.settings = settings
        self.metrics = metrics or ServerMetrics()
        self.storage = Storage(settings.db)
        self.games = Games(self.storage, self.metrics, settings.max_batch)
        self.games.after_batch = self._count_batch
        #: counted during a group commit, added to the metrics once per batch
        self._acked = 0
        self._broadcast_frames = 0
        self.conns: set[Conn] = set()
        self.serving = False
        self._server: Server | None = None
        self._sweeper: asyncio.Task[None] | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        #: messages handled synchronously, as they are received
        self._handlers: dict[str, Callable[[Conn, Request], None]] = {
            "HEARTBEAT": self._heartbeat,
            "STATE_UPDATE": self._state_update,
            "GET_STATE": self._get_state,
            "DISCONNECT": self._disconnect,
        }
        #: messages that always await something (a load, a read, a commit before answering)
        self._async_handlers: dict[str, Callable[[Conn, Request, Slot], Awaitable[None]]] = {
            "CONNECT": self._connect,
            "LIST_GAMES": self._list_games,
            "IMPORT_STATE": self._import_state,
        }

    # ----------------------------------------------------------------- lifecycle

    @property
    def port(self) -> int:
        """The bound TCP port (useful with port 0)."""
        assert self._server is not None
        return bound_port(self._server)

    @property
    def url(self) -> str:
        """`ws://host:port` of the listening socket (an IPv6 host in brackets)."""
        return listen_url("ws", self.settings.host, self.port)

    async def start(self) -> None:
        """Open the database, start the writer and the sweeper, listen."""
        await self.storage.open()
        self.games.start()
        self._server = await serve(
            self._handle,
            self.settings.host,
            self.settings.port,
            process_request=self._process_request,
            create_connection=MessageConnection,
            max_size=MAX_FRAME,
            compression=None,
            ping_interval=None,  # pings and the idle rule are ours (4408, not 1011)
            ping_timeout=None,
            close_timeout=CLOSE_TIMEOUT,
        )
        self.serving = True
        self._sweeper = asyncio.create_task(self._sweep(), name="sweeper")

    async def stop(self) -> None:
        """Graceful shutdown: stop accepting, finish in-flight commits, close clients 1012.

        Safe after a `start` that failed part-way (the port in use once the database was
        open and the writer started) and when called again: what was started is stopped, the
        database closed (its aiosqlite threads would keep the process alive)."""
        self.serving = False
        server = self._server
        if server is not None:
            server.close(close_connections=False)
        # Nothing that arrives from now on is processed (it is not acknowledged either: the
        # 1012 tells the client to send it again elsewhere), so the writer's queue empties
        # even while clients keep sending.
        for conn in self.conns:
            conn.closing = True
        await self.games.drain()
        for conn in list(self.conns):
            self._close(conn, errors.CLOSE_RESTART, "server restarting")
        if server is not None:
            await server.wait_closed()
        if self._sweeper is not None:
            self._sweeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._sweeper
            self._sweeper = None
        await self.games.stop()
        await self.storage.close()
        self._server = None

    # ----------------------------------------------------------------- HTTP

    def _process_request(self, ws: ServerConnection, request: HttpRequest) -> Response | None:
        path = request.path.split("?", 1)[0]
        if path == "/healthz":
            if not self.serving:
                return ws.respond(HTTPStatus.SERVICE_UNAVAILABLE, "shutting down\n")
            if self.games.failing:  # as the old server does when its log is unwritable
                return ws.respond(HTTPStatus.SERVICE_UNAVAILABLE, "commits failing\n")
            return ws.respond(HTTPStatus.OK, "ok\n")
        if path == "/metrics":
            body = generate_latest(self.metrics.registry)
            headers = Headers([("Content-Type", CONTENT_TYPE_LATEST)])
            headers["Content-Length"] = str(len(body))
            return Response(HTTPStatus.OK, "OK", headers, body)
        if split_path(path) is None:
            return ws.respond(HTTPStatus.NOT_FOUND, "not found\n")
        if not self.serving:
            return ws.respond(HTTPStatus.SERVICE_UNAVAILABLE, "shutting down\n")
        return None

    # ----------------------------------------------------------------- connections

    async def _handle(self, ws: ServerConnection) -> None:
        route = split_path(ws.request.path if ws.request else "")
        if route is None:  # process_request refused it already; belt and braces
            return
        assert isinstance(ws, MessageConnection)
        conn = Conn(ws, route[0], route[1], time.monotonic(), self.settings)
        self.conns.add(conn)
        self.metrics.connections.labels(conn.kind).inc()
        if not self.serving:  # its handshake finished as the server began to stop
            self._close(conn, errors.CLOSE_RESTART, "server restarting")
        try:
            ws.attach(functools.partial(self._on_message, conn))
            await ws.wait_closed()
            # What was received before the close is still processed, one message at a time.
            while conn.task is not None:
                await asyncio.wait((conn.task,))
        finally:
            self.conns.discard(conn)
            self.metrics.connections.labels(conn.kind).dec()
            game = conn.game
            if game is not None:
                game.conns.discard(conn)
                self.games.maybe_evict(game)

    def _on_message(self, conn: Conn, is_text: bool, payload: bytes, raw: bytes) -> None:
        """A complete message, called from the connection's `data_received` (`raw`, the
        frame as received, is not needed)."""
        if conn.task is not None or conn.backlog:
            # A message handled asynchronously goes first (messages are processed one at a
            # time, note 6); this one waits, and so does reading past a bound.
            conn.last_activity = time.monotonic()
            conn.backlog.append((is_text, payload))
            if len(conn.backlog) > self.settings.max_waiting and not conn.paused:
                self._pause(conn)
            return
        self._receive(conn, is_text, payload)
        if len(conn.answers) > self.settings.max_waiting and not conn.paused:
            self._pause(conn)

    def _receive(self, conn: Conn, is_text: bool, payload: bytes) -> None:
        """Process one message now: its answer is written or queued in order."""
        raw: str | bytes = payload
        if is_text:
            try:
                raw = payload.decode()
            except UnicodeDecodeError as exc:
                # As websockets' recv() would, once the answers before it are out: 1007.
                conn.closing = True
                ws = conn.ws
                reason = f"{exc.reason} at position {exc.start}"
                self._answer(conn, lambda: cast(MessageConnection, ws).fail_soon(1007, reason))
                return
        if conn.closing:
            return  # closing: what arrives now is not processed
        now = time.monotonic()
        conn.last_activity = now
        retry_ms = conn.limiter.take(now)
        if retry_ms:
            self._refuse(conn, raw, retry_ms, now)
            return
        request: Request | None = None
        try:
            request = parse_request(raw)
            if conn.claims is None and request.type != "CONNECT":
                raise Unauthenticated("send CONNECT first")
            handler = self._handlers.get(request.type)
            if handler is not None:
                handler(conn, request)
            else:
                self._start(conn, request, self._async_handlers[request.type])
        except StateServerError as exc:
            re_id = exc.re if exc.re is not None else (request.id if request else None)
            kind = request.type if request else "invalid"
            self._answer(conn, self._error(conn, exc, kind, re_id))
        except Exception:
            log.exception("unexpected error handling a %s", request.type if request else "frame")
            failure = errors.Internal("the server failed")
            kind = request.type if request else "invalid"
            self._answer(conn, self._error(conn, failure, kind, request.id if request else None))

    def _refuse(self, conn: Conn, raw: str | bytes, retry_ms: int, now: float) -> None:
        """Answer a message over the rate (not processed); close 4429 on abuse (note 25)."""
        if conn.limiter.abusive(now):
            self._close_in_order(conn, errors.CLOSE_RATE_LIMITED, "rate limit abuse")
            return
        re_id = None
        if isinstance(raw, str):
            with contextlib.suppress(orjson.JSONDecodeError):
                body = orjson.loads(raw)
                if isinstance(body, dict):
                    candidate = body.get("id")
                    if isinstance(candidate, str) and 1 <= len(candidate) <= 64:
                        re_id = candidate
        self._answer(conn, self._error(conn, errors.RateLimited(retry_ms), "RATE_LIMITED", re_id))

    def _error(
        self, conn: Conn, exc: StateServerError, message_type: str, re_id: str | None
    ) -> bytes:
        """An `ERROR` frame's payload, counted (the message by its type, the frame by code,
        both by the connection's path kind)."""
        if message_type == "RATE_LIMITED":
            self.metrics.message(conn.kind, "invalid", "RATE_LIMITED")
        else:
            self.metrics.message(conn.kind, message_type, exc.code)
        self.metrics.error(conn.kind, exc.code)
        frame = {"type": "ERROR", "re": re_id, "code": exc.code, "message": exc.message}
        frame.update(exc.extra())
        return dumps(frame)

    # ----------------------------------------------------------------- answers in order

    def _answer(self, conn: Conn, answer: bytes | Callable[[], bytes | None]) -> None:
        """Answer the message being processed: now when nothing is waiting before it, else
        in its turn."""
        if conn.answers:
            conn.answers.append(answer)
            return
        payload = answer if isinstance(answer, bytes) else answer()
        if payload is not None:
            write(conn, payload)

    def _drain(self, conn: Conn, out: Outbox | None) -> None:
        """Send the answers at the head of the queue that are ready, in order (into `out`
        during a group commit, else in one write), up to the first slot not filled yet."""
        answers = conn.answers
        frames: list[bytes] = []
        while answers:
            entry = answers[0]
            if isinstance(entry, Slot):
                payload = entry.payload
                if payload is None:
                    break
                answers.popleft()
                if not payload:  # its handler was cancelled: no answer
                    continue
            elif isinstance(entry, bytes):
                answers.popleft()
                payload = entry
            else:
                answers.popleft()
                if out is None and frames:  # an action (a close) comes after what precedes it
                    write_now(conn.ws, b"".join(frames))
                    frames.clear()
                payload = entry()
                if payload is None:
                    continue
            if out is not None:
                out.add(conn, payload)
            else:
                frames.append(text_frame(payload))
        if frames:
            write_now(conn.ws, frames[0] if len(frames) == 1 else b"".join(frames))
        if conn.paused:
            self._maybe_resume(conn)

    def _pause(self, conn: Conn) -> None:
        transport = conn.ws.transport
        if transport is not None and not transport.is_closing():
            conn.paused = True
            conn.pauses += 1
            transport.pause_reading()

    def _maybe_resume(self, conn: Conn) -> None:
        low = self.settings.max_waiting // 4
        if len(conn.answers) <= low and len(conn.backlog) <= low:
            conn.paused = False
            transport = conn.ws.transport
            if transport is not None and not transport.is_closing():
                transport.resume_reading()

    def _start(
        self,
        conn: Conn,
        request: Request,
        handler: Callable[[Conn, Request, Slot], Awaitable[None]],
    ) -> None:
        """Handle a message that needs to await (I/O, or a flush before a refusal): its
        answer keeps its place; later messages wait until it is done."""
        slot = Slot()
        conn.answers.append(slot)
        conn.task = asyncio.create_task(self._run(conn, request, handler, slot))

    async def _run(
        self,
        conn: Conn,
        request: Request,
        handler: Callable[[Conn, Request, Slot], Awaitable[None]],
        slot: Slot,
    ) -> None:
        try:
            await handler(conn, request, slot)
            if request.type != "STATE_UPDATE":  # an update is counted when it commits
                self.metrics.message(conn.kind, request.type, "ok")
        except StateServerError as exc:
            if slot.payload is None:  # else a failed commit answered already
                re_id = exc.re if exc.re is not None else request.id
                slot.payload = self._error(conn, exc, request.type, re_id)
            closes = exc.connect_close_code
            if request.type == "CONNECT" and conn.claims is None and closes:
                self._close_in_order(conn, closes, exc.code)
        except Exception:
            log.exception("unexpected error handling a %s", request.type)
            failure = errors.Internal("the server failed")
            if slot.payload is None:
                slot.payload = self._error(conn, failure, request.type, request.id)
            if request.type == "CONNECT" and conn.claims is None:
                self._close_in_order(conn, errors.CLOSE_SERVER_ERROR, failure.code)
        finally:
            conn.task = None
            if slot.payload is None:  # cancelled: nothing will come
                slot.payload = b""
            self._drain(conn, None)
            backlog = conn.backlog
            # `idle(conn)`, not `conn.task is None`: after the assignment above mypy narrows
            # the attribute to None, and mypyc then checks that type where `_receive` may
            # just have started a task (TypeError: None object expected).
            while backlog and idle(conn):
                self._receive(conn, *backlog.popleft())
            if conn.paused:
                self._maybe_resume(conn)

    def _close_in_order(self, conn: Conn, code: int, reason: str) -> None:
        """Close once the answers before this point are out; process nothing more."""
        conn.closing = True
        self._answer(conn, lambda: self._close(conn, code, reason))

    def _close(self, conn: Conn, code: int, reason: str) -> None:
        """Close a connection now, without waiting for the closing handshake."""
        if conn.close_sent:
            return
        conn.closing = conn.close_sent = True
        self.metrics.closes.labels(str(code)).inc()
        self._spawn(close_within(conn.ws, CLOSE_TIMEOUT, code, reason))

    def _spawn(self, coro: Awaitable[Any]) -> None:
        task: asyncio.Task[Any] = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _sweep(self) -> None:
        """Liveness for every connection, in one task: CONNECT deadline (4401), idle
        (4408), pings, and readers that never read (dropped)."""
        s = self.settings
        # Ping at least three times per idle period (note 38): a live client never idles out.
        ping_every = min(s.ping_interval, s.idle_timeout / 3)
        tick = max(0.05, min(1.0, s.connect_timeout / 4, s.idle_timeout / 4, ping_every / 2))
        while True:
            await asyncio.sleep(tick)
            now = time.monotonic()
            for conn in list(self.conns):
                if conn.closing:
                    continue
                if conn.claims is None and now - conn.opened > s.connect_timeout:
                    self._close(conn, errors.CLOSE_UNAUTHENTICATED, "no CONNECT in time")
                elif now - conn.last_activity > s.idle_timeout:
                    self._close(conn, errors.CLOSE_IDLE, "idle")
                elif (
                    conn.ws.transport is not None
                    and conn.ws.transport.get_write_buffer_size() > s.max_write_buffer
                ):
                    conn.closing = conn.close_sent = True
                    self.metrics.closes.labels("abort").inc()
                    conn.ws.transport.abort()
                elif now - conn.last_ping >= ping_every:
                    conn.last_ping = now
                    self._spawn(self._ping(conn))

    async def _ping(self, conn: Conn) -> None:
        with contextlib.suppress(ConnectionClosed):
            waiter = await conn.ws.ping()
            await waiter
            conn.touch()  # a pong is activity

    # ----------------------------------------------------------------- messages

    def _heartbeat(self, conn: Conn, request: Request) -> None:
        re_id = request.id

        def answer() -> bytes:
            self.metrics.message(conn.kind, "HEARTBEAT", "ok")
            frame = {"type": "HEARTBEAT_ACK", "re": re_id, "server_time": timestamp(time.time())}
            return dumps(frame)

        self._answer(conn, answer)

    def _state_update(self, conn: Conn, request: Request) -> None:
        """Validate against `head` and submit now; the ACK leaves on commit. A refusal that
        pending changes may explain is decided again after a flush (note 36)."""
        if conn.game is None:
            raise BadMessage("STATE_UPDATE goes through the game's path")
        update, expected = parse_update(request.body)
        assert conn.claims is not None
        if conn.claims.role == "observer":
            raise Forbidden("observers cannot update")
        game = conn.game
        head = game.head
        if head is None:  # the game's creation failed to commit; nothing to update
            raise DatabaseError("the game is not available")
        try:
            if expected is not None and expected != head.version:
                raise errors.Conflict(head.version)
            new = apply_update(head, update, time.time())
        except errors.StateError:
            if not game.pending:
                raise
            self._start(conn, request, self._state_update_after_flush)
            return
        slot = Slot()
        conn.answers.append(slot)
        self._submit_update(conn, game, new, request.id, slot)

    async def _state_update_after_flush(self, conn: Conn, request: Request, slot: Slot) -> None:
        update, expected = parse_update(request.body)
        game = conn.game
        assert game is not None
        while True:
            head = game.head
            if head is None:
                raise DatabaseError("the game is not available")
            try:
                if expected is not None and expected != head.version:
                    raise errors.Conflict(head.version)
                new = apply_update(head, update, time.time())
                break
            except errors.StateError:
                if not game.pending:
                    raise
            # A refusal must not show a change that is not committed yet (note 36): decide
            # again once the pending changes are durable (or failed). (Awaited here, not in
            # the except block: see `stateshift.native.unsafe_awaits`.)
            await self.games.flush(game)
        await self._submit_update(conn, game, new, request.id, slot).waiter()

    def _submit_update(
        self, conn: Conn, game: Game, new: GameState, re_id: str, slot: Slot
    ) -> Change:
        def on_commit(change: Change, out: Outbox) -> None:
            self._acked += 1
            ack = dumps({"type": "ACK", "re": re_id, "version": change.new.version})
            answers = conn.answers
            if answers and answers[0] is slot:  # always, as the queue's head is this slot
                answers.popleft()
                out.add(conn, ack)
                self._broadcast(change.game, change.new, out)
                if answers:
                    self._drain(conn, out)  # answers sent after this update, after its STATE
                elif conn.paused:
                    self._maybe_resume(conn)
            else:
                slot.payload = ack
                self._drain(conn, out)
                self._broadcast(change.game, change.new, out)

        def on_fail(change: Change, exc: DatabaseError) -> None:
            slot.payload = self._error(conn, exc, "STATE_UPDATE", re_id)
            self._drain(conn, None)

        return self.games.submit(game, new, on_commit, on_fail)

    def _get_state(self, conn: Conn, request: Request) -> None:
        game = conn.game
        if game is None:
            self._start(conn, request, self._get_state_admin)
            return
        re_id = request.id

        def answer() -> bytes:
            # The committed state when this answer's turn comes: after this connection's
            # earlier ACKs, never a change that is not committed.
            state = game.committed
            if state is None:
                return self._error(conn, NotFound("the game does not exist"), "GET_STATE", re_id)
            self.metrics.message(conn.kind, "GET_STATE", "ok")
            return self._state_answer(re_id, state)

        self._answer(conn, answer)

    async def _get_state_admin(self, conn: Conn, request: Request, slot: Slot) -> None:
        game_id = request.body.get("game_id")
        if not is_identifier(game_id):
            raise BadMessage("`game_id` must be a game id")
        assert isinstance(game_id, str)
        state = await self.games.peek(game_id)
        if state is None:
            raise NotFound("the game does not exist")
        slot.payload = self._state_answer(request.id, state)

    def _state_answer(self, re_id: str, state: GameState) -> bytes:
        frame = {
            "type": "STATE",
            "re": re_id,
            "game_id": state.game_id,
            "version": state.version,
            "state": state.to_wire(),
        }
        return dumps(frame)

    def _disconnect(self, conn: Conn, request: Request) -> None:
        self.metrics.message(conn.kind, "DISCONNECT", "ok")
        self._answer(conn, dumps({"type": "DISCONNECTED", "re": request.id}))
        self._close_in_order(conn, errors.CLOSE_NORMAL, "bye")

    async def _connect(self, conn: Conn, request: Request, slot: Slot) -> None:
        if conn.claims is not None:
            raise BadMessage("already connected")
        claims = verify(request.body.get("token"), self.settings.secret, conn.game_id)
        session_id = uuid.uuid4().hex
        if conn.game_id is None:
            conn.claims, conn.session_id = claims, session_id
            slot.payload = dumps(
                {
                    "type": "CONNECTED",
                    "re": request.id,
                    "session_id": session_id,
                    "player_id": claims.sub,
                    "role": claims.role,
                }
            )
            return
        game = await self.games.acquire(conn.game_id)
        try:
            while claims.role == "player":
                new = join(game.head, conn.game_id, claims.sub, time.time())
                if new is not None:
                    # The joiner's CONNECTED is sent by the writer, after the broadcast
                    # of its join to the connections already open (PROTOCOL.md).
                    conn.session_id = session_id

                    def on_join(
                        change: Change, out: Outbox, conn: Conn = conn, claims: Claims = claims
                    ) -> None:
                        self._broadcast(change.game, change.new, out)
                        slot.payload = self._connected(conn, request.id, claims, change.new)
                        self._drain(conn, out)
                        conn.claims, conn.game = claims, change.game
                        change.game.conns.add(conn)

                    await self.games.commit(game, new, on_join)
                    return
                if not game.pending:
                    break
                await self.games.flush(game)
            await self.games.flush(game)
            state = game.committed
            if state is None:
                raise NotFound("the game does not exist")
            conn.session_id = session_id
            conn.claims, conn.game = claims, game
            game.conns.add(conn)
            slot.payload = self._connected(conn, request.id, claims, state)
        finally:
            self.games.release(game)

    def _connected(self, conn: Conn, re_id: str, claims: Claims, state: GameState) -> bytes:
        return dumps(
            {
                "type": "CONNECTED",
                "re": re_id,
                "session_id": conn.session_id,
                "player_id": claims.sub,
                "role": claims.role,
                "state": state.to_wire(),
            }
        )

    def _broadcast(self, game: Game, state: GameState, out: Outbox) -> None:
        """One encoding per change, queued for every connection on the game (written
        without awaiting any of them: a slow reader does not slow the game)."""
        if not game.conns:
            return
        frame = dumps(
            {
                "type": "STATE",
                "game_id": state.game_id,
                "version": state.version,
                "state": state.to_wire(),
            }
        )
        self._broadcast_frames += out.fanout(game.conns, frame)

    def _count_batch(self) -> None:
        if self._acked:
            self.metrics.message("game", "STATE_UPDATE", "ok", self._acked)
            self._acked = 0
        if self._broadcast_frames:
            self.metrics.broadcasts.inc(self._broadcast_frames)
            self._broadcast_frames = 0

    async def _list_games(self, conn: Conn, request: Request, slot: Slot) -> None:
        if conn.kind != "admin":
            raise Forbidden("LIST_GAMES is on the admin path only")
        after, limit = parse_list_games(request.body)
        rows = await self.storage.list_games(after, limit + 1)
        page = rows[:limit]
        frame = {
            "type": "GAMES",
            "re": request.id,
            "games": [{"game_id": gid, "version": version} for gid, version in page],
            "next": page[-1][0] if len(rows) > limit else None,
        }
        slot.payload = dumps(frame)

    async def _import_state(self, conn: Conn, request: Request, slot: Slot) -> None:
        if conn.kind != "admin":
            raise Forbidden("IMPORT_STATE is on the admin path only")
        state = parse_import(request.body.get("state"), time.time())
        game = await self.games.acquire(state.game_id)
        re_id = request.id

        def on_commit(change: Change, out: Outbox) -> None:
            slot.payload = dumps({"type": "ACK", "re": re_id, "version": change.new.version})
            self._drain(conn, out)
            self._broadcast(change.game, change.new, out)

        try:
            await self.games.commit(game, state, on_commit)
        finally:
            self.games.release(game)
