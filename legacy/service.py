"""The legacy server's asyncio layer: sockets, group commit, broadcasts, liveness, shutdown.

Everything decided per frame is in `legacy.session`; this module only moves bytes:

- one handler task per connection reads frames one at a time (answers keep request order);
- `GroupCommit` appends the log lines of accepted changes in batches, one `fdatasync` per
  batch in a worker thread, and only then sends each change's `ACK` followed by its `STATE`
  broadcast, in commit order. Answers that show game state wait in the same queue, so no
  client sees a change before it is durable;
- one sweeper task for all connections enforces the CONNECT deadline (4401) and the idle
  rule (4408) and sends the pings (websockets' own keepalive is off: the idle rule counts
  frames and pongs, which websockets does not expose);
- `process_request` answers `/healthz`, `/metrics` and the 404 of unknown paths;
- fault hooks that change what is *sent* (drop, garbage, slow, stall, crash, close-early).
"""

from __future__ import annotations

import asyncio
import logging
import os
import random
import time
from collections.abc import Callable, Coroutine
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from websockets.asyncio.server import Server, ServerConnection, broadcast, serve
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request, Response

from legacy.errors import Internal, JournalError
from legacy.faults import Faults
from legacy.journal import Journal, Replay
from legacy.metrics import Metrics
from legacy.rules import is_identifier
from legacy.session import Context, Outcome, Session
from legacy.store import Games
from stateshift.netloc import listen_url
from stateshift.wsclose import CLOSE_TIMEOUT, close_within

log = logging.getLogger("stateshift.legacy")

GAME_PREFIX: Final = "/v1/games/"
ADMIN_PATH: Final = "/v1/admin"
MAX_FRAME: Final = 65_536
GARBAGE: Final = b"<garbage: this frame is not JSON>"


@dataclass(frozen=True, slots=True)
class Config:
    """Everything `stateshift legacy` is started with."""

    data: Path
    secret: str
    host: str = "127.0.0.1"
    port: int = 8765
    rate: float = 50.0
    burst: float = 100.0
    connect_timeout: float = 10.0
    idle_timeout: float = 60.0
    ping_interval: float = 20.0
    faults: Faults = field(default_factory=Faults)
    seed: int = 0


class Conn:
    """A connection's I/O bookkeeping beside its protocol `Session`."""

    __slots__ = (
        "closing",
        "game_id",
        "last_active",
        "last_ping",
        "messages",
        "opened",
        "path_kind",
        "session",
        "ws",
    )

    def __init__(self, ws: ServerConnection, session: Session, now: float, path_kind: str) -> None:
        self.ws = ws
        self.path_kind = path_kind  # "game" or "admin": a label of the message metrics
        self.session = session
        self.opened = now
        self.last_active = now
        self.last_ping = now
        self.messages = 0
        self.closing = False
        self.game_id: str | None = None  # the game whose broadcasts it receives


Item = tuple[Conn, Outcome, "asyncio.Future[None]"]


class GroupCommit:
    """Make change records durable in batches; deliver every queued outcome in commit order."""

    def __init__(
        self,
        journal: Journal,
        games: Games,
        deliver: Callable[[Conn, Outcome], None],
        fail: Callable[[Conn, Outcome], None],
        metrics: Metrics,
    ) -> None:
        self._journal = journal
        self._games = games
        self._deliver = deliver
        self._fail = fail
        self._metrics = metrics
        self._queue: list[Item] = []
        self._task: asyncio.Task[None] | None = None
        # One writer thread: batches reach the file in order, and the event loop keeps
        # accepting the next batch's changes while this one syncs.
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="legacy-log")

    @property
    def busy(self) -> bool:
        """True while a batch is being written or outcomes are queued."""
        return self._task is not None

    def submit(self, conn: Conn, outcome: Outcome) -> asyncio.Future[None]:
        """Queue an outcome; the future is done once it has been delivered (or failed)."""
        loop = asyncio.get_running_loop()
        done: asyncio.Future[None] = loop.create_future()
        self._queue.append((conn, outcome, done))
        if self._task is None:
            # Started on the next loop turn: changes arriving together share one sync.
            self._task = loop.create_task(self._run())
        return done

    async def drain(self) -> None:
        """Wait until everything queued is written and delivered."""
        while self._task is not None:
            await asyncio.shield(self._task)

    def close(self) -> None:
        """Stop the writer thread (after `drain`)."""
        self._executor.shutdown(wait=True)

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            while self._queue:
                batch, self._queue = self._queue, []
                records = [outcome.record for _, outcome, _ in batch if outcome.record]
                if records:
                    started = time.perf_counter()
                    try:
                        await loop.run_in_executor(
                            self._executor, self._journal.append, b"".join(records)
                        )
                    except JournalError:
                        log.exception("log write failed; answering INTERNAL")
                        # Later queued changes were decided on top of the failed ones:
                        # undo all of them, newest first.
                        failed, self._queue = batch + self._queue, []
                        for _, outcome, _ in reversed(failed):
                            if outcome.undo is not None:
                                self._games.restore(*outcome.undo)
                        self._finish(failed, self._fail)
                        continue
                    self._metrics.sync_seconds.observe(time.perf_counter() - started)
                    self._metrics.batch.observe(len(records))
                    self._metrics.changes.inc(len(records))
                self._finish(batch, self._deliver)
        finally:
            self._task = None

    @staticmethod
    def _finish(items: list[Item], action: Callable[[Conn, Outcome], None]) -> None:
        for conn, outcome, done in items:
            try:
                action(conn, outcome)
            except Exception:  # a delivery bug must not strand the other handlers
                log.exception("delivery failed")
            finally:
                if not done.done():
                    done.set_result(None)


class LegacyServer:
    """The reference old state server: `start`, then `stop` (or run it from the CLI)."""

    def __init__(self, config: Config, metrics: Metrics | None = None) -> None:
        self.config = config
        self.metrics = metrics if metrics is not None else Metrics()
        self.games = Games()
        self.metrics.track_games(lambda: len(self.games))
        faults = config.faults
        self._faults = faults
        self._ctx = Context(
            games=self.games,
            secret=config.secret,
            skew_ms=faults.clock_skew_ms,
            delta_bias=1 if faults.score_delta_off_by_one else 0,
            refuse_auth=faults.refuse_auth,
            reorder_settings=faults.reorder_settings,
            rate=config.rate,
            burst=config.burst,
        )
        # Separate seeded streams: dropping broadcasts does not shift which answers are garbled.
        self._drop_rng = random.Random(f"{config.seed}:drop-broadcast")
        self._garbage_rng = random.Random(f"{config.seed}:garbage")
        self._conns: set[Conn] = set()
        self._subscribers: dict[str, set[ServerConnection]] = {}
        self._tasks: set[asyncio.Task[Any]] = set()
        self._received = 0
        self._stalled = False
        self._server: Server | None = None
        self._sweeper: asyncio.Task[None] | None = None
        self._journal: Journal | None = None
        self._commit: GroupCommit | None = None
        self.replay: Replay | None = None
        self.port = 0

    def set_score_delta_fault(self, on: bool) -> None:
        """Turn the `score-delta-off-by-one` fault on or off while running (`stateshift demo`
        injects its divergence this way); it applies from the next message decided."""
        self._ctx.delta_bias = 1 if on else 0

    @property
    def url(self) -> str:
        """The ws:// URL the server listens on (the real port when started on port 0)."""
        return listen_url("ws", self.config.host, self.port)

    async def start(self) -> None:
        """Replay the log, then listen."""
        config = self.config
        self._journal, self.replay = Journal.open(config.data, self.games)
        self._commit = GroupCommit(
            self._journal, self.games, self._deliver, self._fail, self.metrics
        )
        self._server = await serve(
            self._handle,
            config.host,
            config.port,
            process_request=self._process_request,
            compression=None,
            max_size=MAX_FRAME,
            ping_interval=None,  # our sweeper pings: idle counts pongs (note 26)
            ping_timeout=None,
            close_timeout=5,
        )
        self.port = self._server.sockets[0].getsockname()[1]
        self._sweeper = asyncio.get_running_loop().create_task(self._sweep())

    async def stop(self) -> None:
        """Stop accepting, close clients with 1012, finish pending writes, close the log."""
        if self._server is not None:
            self._server.close(code=1012, reason="server restart")
            await self._server.wait_closed()
        if self._sweeper is not None:
            self._sweeper.cancel()
            await asyncio.gather(self._sweeper, return_exceptions=True)
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._commit is not None:
            await self._commit.drain()
            self._commit.close()
        if self._journal is not None:
            self._journal.close()

    # --- HTTP -----------------------------------------------------------------------------

    def _process_request(self, connection: ServerConnection, request: Request) -> Response | None:
        path = request.path.partition("?")[0]
        if path == ADMIN_PATH:
            return None
        if path.startswith(GAME_PREFIX) and is_identifier(path[len(GAME_PREFIX) :]):
            return None
        if path == "/healthz":
            if self._journal is not None and self._journal.broken:
                return connection.respond(503, "log unwritable\n")
            return connection.respond(200, "ok")
        if path == "/metrics":
            response = connection.respond(200, "")
            response.body = generate_latest(self.metrics.registry)
            del response.headers["Content-Type"]
            del response.headers["Content-Length"]
            response.headers["Content-Type"] = CONTENT_TYPE_LATEST
            response.headers["Content-Length"] = str(len(response.body))
            return response
        return connection.respond(404, "not found\n")

    # --- connections ----------------------------------------------------------------------

    async def _handle(self, ws: ServerConnection) -> None:
        assert ws.request is not None  # the handshake is done
        path = ws.request.path.partition("?")[0]
        game_id = None if path == ADMIN_PATH else path[len(GAME_PREFIX) :]
        now = asyncio.get_running_loop().time()
        kind = "admin" if game_id is None else "game"
        conn = Conn(ws, Session(self._ctx, game_id, now), now, kind)
        self._conns.add(conn)
        self.metrics.connections.inc()
        try:
            await self._serve(conn)
        except ConnectionClosed:
            pass
        finally:
            self._conns.discard(conn)
            if conn.game_id is not None:
                subscribers = self._subscribers.get(conn.game_id)
                if subscribers is not None:
                    subscribers.discard(ws)
                    if not subscribers:
                        del self._subscribers[conn.game_id]
            self.metrics.connections.dec()

    async def _serve(self, conn: Conn) -> None:
        ws = conn.ws
        loop = asyncio.get_running_loop()
        faults = self._faults
        counting = faults.counts_messages
        assert self._commit is not None
        commit = self._commit
        while True:
            frame = await ws.recv()
            now = loop.time()
            conn.last_active = now
            if counting and self._count_message():
                continue  # stalled: read and drop, keep the connection
            if faults.slow_ms:
                self.metrics.fault("slow")
                await asyncio.sleep(faults.slow_ms / 1000)
            outcome = conn.session.handle(frame, now)
            if outcome.record is not None or (outcome.ordered and commit.busy):
                await commit.submit(conn, outcome)
            else:
                self._subscribe(conn, outcome)
                reply = outcome.reply
                if reply is not None:
                    # send() writes before it first suspends: the subscription above and
                    # this frame happen in one step, so no broadcast falls between them.
                    await ws.send(self._garble(reply), text=True)
            self.metrics.message(conn.path_kind, outcome.label, outcome.code)
            if outcome.fault is not None:
                self.metrics.fault(outcome.fault)
            if outcome.close is not None:
                if outcome.close == 4429:
                    self.metrics.closed("rate_abuse")
                conn.closing = True
                await close_within(ws, CLOSE_TIMEOUT, outcome.close, outcome.reason)
                return
            if faults.close_early is not None:
                conn.messages += 1
                if conn.messages >= faults.close_early:
                    self.metrics.fault("close-early")
                    self.metrics.closed("fault")
                    conn.closing = True
                    await close_within(ws, CLOSE_TIMEOUT, 1011, "fault: close-early")
                    return

    def _count_message(self) -> bool:
        """Count a message for stall-after/crash-after; True when it must be dropped."""
        self._received += 1
        faults = self._faults
        if faults.crash_after is not None and self._received > faults.crash_after:
            self.metrics.fault("crash-after")
            log.error("fault crash-after:%d: exiting abruptly", faults.crash_after)
            os._exit(1)
        if self._stalled:
            return True
        if faults.stall_after is not None and self._received > faults.stall_after:
            self._stalled = True
            self.metrics.fault("stall-after")
            log.warning("fault stall-after:%d: no longer answering", faults.stall_after)
            return True
        return False

    # --- delivery -------------------------------------------------------------------------

    def _garble(self, reply: bytes) -> bytes:
        if self._faults.garbage and self._garbage_rng.random() < self._faults.garbage:
            self.metrics.fault("garbage")
            return GARBAGE
        return reply

    def _subscribe(self, conn: Conn, outcome: Outcome) -> None:
        game_id = outcome.subscribe
        if game_id is not None:
            conn.game_id = game_id
            self._subscribers.setdefault(game_id, set()).add(conn.ws)

    def _deliver(self, conn: Conn, outcome: Outcome) -> None:
        """Write an outcome's frames now, without waiting: ACK first, then the broadcast."""
        if outcome.reply is not None:
            broadcast((conn.ws,), self._garble(outcome.reply), text=True)
        if outcome.broadcast is not None:
            game_id, frame = outcome.broadcast
            subscribers = self._subscribers.get(game_id)
            if (
                self._faults.drop_broadcast
                and self._drop_rng.random() < self._faults.drop_broadcast
            ):
                self.metrics.fault("drop-broadcast")
            elif subscribers:
                broadcast(subscribers, frame, text=True)
        self._subscribe(conn, outcome)

    def _fail(self, conn: Conn, outcome: Outcome) -> None:
        """Answer an outcome whose change could not be made durable (it was undone)."""
        error = Internal("the change could not be stored")
        failed = conn.session.fail(error, outcome)
        if outcome.subscribe is not None:
            # The CONNECT's join or view is gone: the session cannot go on.
            failed.close = 1011
            failed.reason = "storage failure"
        assert failed.reply is not None  # a refusal always has its ERROR frame
        broadcast((conn.ws,), failed.reply, text=True)
        outcome.code = failed.code
        outcome.close = failed.close
        outcome.reason = failed.reason

    # --- liveness -------------------------------------------------------------------------

    async def _sweep(self) -> None:
        config = self.config
        # A live client must never idle out between two pings: with the defaults (20 s, 60 s)
        # that is 3 pings per idle period; a shorter --idle-timeout keeps that ratio.
        ping_interval = min(config.ping_interval, config.idle_timeout / 3)
        tick = max(
            0.005,
            min(1.0, config.connect_timeout / 4, config.idle_timeout / 4, config.ping_interval / 4),
        )
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(tick)
            now = loop.time()
            for conn in list(self._conns):
                if conn.closing:
                    continue
                if not self._stalled:
                    if (
                        conn.session.identity is None
                        and now - conn.opened >= config.connect_timeout
                    ):
                        self._close_later(conn, 4401, "no CONNECT in time", "connect_timeout")
                        continue
                    if now - conn.last_active >= config.idle_timeout:
                        self._close_later(conn, 4408, "idle", "idle")
                        continue
                if now - conn.last_ping >= ping_interval:
                    conn.last_ping = now
                    self._spawn(self._ping(conn))

    def _close_later(self, conn: Conn, code: int, reason: str, metric: str) -> None:
        conn.closing = True
        self.metrics.closed(metric)
        self._spawn(close_within(conn.ws, CLOSE_TIMEOUT, code, reason))

    async def _ping(self, conn: Conn) -> None:
        try:
            pong = await conn.ws.ping()
        except ConnectionClosed:
            return
        loop = asyncio.get_running_loop()

        def on_pong(future: asyncio.Future[float]) -> None:
            if not future.cancelled() and future.exception() is None:
                conn.last_active = loop.time()

        pong.add_done_callback(on_pong)  # type: ignore[attr-defined]  # ping() returns a Future

    def _spawn(self, coroutine: Coroutine[Any, Any, Any]) -> None:
        task = asyncio.get_running_loop().create_task(coroutine)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
