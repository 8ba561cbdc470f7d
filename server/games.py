"""Games in memory and the group commit that makes their changes durable, in version order.

Each game keeps two states: `head` (every change accepted so far, committed or not: new
changes are validated against it, so pipelined updates chain) and `committed` (what is on
disk: the only state clients ever see). A change moves `head` at once and `committed` when its
transaction commits; the writer then sends its frames synchronously, in commit order, so a
game's ACKs and broadcasts always leave in version order.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from server.errors import DatabaseError
from server.fanout import Outbox
from server.metrics import ServerMetrics
from server.rules import GameState, HistoryRow, history
from server.storage import Storage

log = logging.getLogger("stateshift.server")


@dataclass(eq=False, slots=True)
class Game:
    """One game held in memory, with the connections open on it."""

    game_id: str
    committed: GameState | None
    head: GameState | None
    #: connections that receive this game's broadcasts (opaque to this module)
    conns: set[Any] = field(default_factory=set)
    pending: int = 0
    #: the newest change submitted (uncommitted while `pending`; to wait for a flush)
    last_change: Change | None = None
    #: handlers currently using this object; a pinned game is never evicted
    pins: int = 0


@dataclass(eq=False, slots=True)
class Change:
    """An accepted change waiting for its commit; `on_commit` queues its frames, `on_fail`
    (when given) answers a failed commit. `future`, made only when someone waits for the
    change (`commit`, `flush`), resolves when it is durable or fails."""

    game: Game
    old: GameState | None
    new: GameState
    on_commit: Callable[[Change, Outbox], None]
    rows: list[HistoryRow]
    on_fail: Callable[[Change, DatabaseError], None] | None = None
    future: asyncio.Future[None] | None = None

    def waiter(self) -> asyncio.Future[None]:
        """The future of this change (made now if nobody waited for it before)."""
        if self.future is None:
            self.future = asyncio.get_running_loop().create_future()
        return self.future


class Games:
    """The registry of games in memory plus the single writer task doing group commits."""

    def __init__(self, storage: Storage, metrics: ServerMetrics, max_batch: int = 256) -> None:
        self.storage = storage
        self.metrics = metrics
        self.max_batch = max_batch
        self.games: dict[str, Game] = {}
        self._loading: dict[str, asyncio.Future[None]] = {}
        #: changes waiting for the writer, in submission order
        self._queue: deque[Change] = deque()
        #: set while the writer waits for a change (resolved by the next `submit`)
        self._wakeup: asyncio.Future[None] | None = None
        self._writer: asyncio.Task[None] | None = None
        self._idle = asyncio.Event()
        #: the last group commit failed (`/healthz` says 503 until one succeeds)
        self.failing = False
        self._idle.set()
        #: called after each committed batch's frames are written (metrics are counted then,
        #: once per batch rather than once per frame)
        self.after_batch: Callable[[], None] | None = None

    # ----------------------------------------------------------------- registry

    async def acquire(self, game_id: str) -> Game:
        """The game's in-memory object, loaded if needed, pinned until `release`.

        A game that does not exist gets an object with no state, so that concurrent creators
        share it.
        """
        while True:
            game = self.games.get(game_id)
            if game is not None:
                game.pins += 1
                return game
            await self._load(game_id)

    def release(self, game: Game) -> None:
        """Unpin a game acquired with `acquire`."""
        game.pins -= 1
        self.maybe_evict(game)

    def maybe_evict(self, game: Game) -> None:
        """Drop a game from memory when nothing uses it (its state is on disk)."""
        idle = game.pins == 0 and game.pending == 0 and not game.conns
        if idle and self.games.get(game.game_id) is game:
            del self.games[game.game_id]
            self.metrics.games_loaded.set(len(self.games))

    async def _load(self, game_id: str) -> None:
        loading = self._loading.get(game_id)
        if loading is not None:
            # Another handler is loading it: wait for that load, whatever its outcome.
            await asyncio.shield(loading)
            return
        loading = self._loading[game_id] = asyncio.get_running_loop().create_future()
        try:
            state = await self.storage.load(game_id)
            if game_id not in self.games:
                self.games[game_id] = Game(game_id, state, state)
                self.metrics.games_loaded.set(len(self.games))
            loading.set_result(None)
        except BaseException as exc:
            loading.set_exception(exc)
            loading.exception()  # retrieved: waiters get it through shield
            raise
        finally:
            del self._loading[game_id]

    async def flush(self, game: Game) -> None:
        """Wait until every change accepted for `game` so far is committed (or failed)."""
        while game.pending and game.last_change is not None:
            try:
                await asyncio.shield(game.last_change.waiter())
            except DatabaseError:
                pass  # the failed change's own handler reports it

    async def peek(self, game_id: str) -> GameState | None:
        """The committed state of a game, from memory or disk, without keeping it loaded."""
        game = self.games.get(game_id)
        if game is not None and game.committed is not None:
            return game.committed
        return await self.storage.load(game_id)

    # ----------------------------------------------------------------- changes

    def submit(
        self,
        game: Game,
        new: GameState,
        on_commit: Callable[[Change, Outbox], None],
        on_fail: Callable[[Change, DatabaseError], None] | None = None,
    ) -> Change:
        """Accept `new` as the game's next state. Once it is durable `on_commit` queues its
        frames; if its commit fails, `on_fail` (if given) is called."""
        change = Change(game, game.head, new, on_commit, history(game.head, new), on_fail)
        game.head = new
        game.pending += 1
        game.last_change = change
        self._queue.append(change)
        self._idle.clear()
        wakeup = self._wakeup
        if wakeup is not None:
            self._wakeup = None
            if not wakeup.done():
                wakeup.set_result(None)
        return change

    async def commit(
        self,
        game: Game,
        new: GameState,
        on_commit: Callable[[Change, Outbox], None],
        on_fail: Callable[[Change, DatabaseError], None] | None = None,
    ) -> None:
        """`submit`, then wait until the change is durable (its frames already sent by
        `on_commit`); raise `DatabaseError` if it failed (after `on_fail`, if given)."""
        await self.submit(game, new, on_commit, on_fail).waiter()

    def start(self) -> None:
        """Start the writer task."""
        self._writer = asyncio.create_task(self._write_loop(), name="group-commit")

    async def drain(self) -> None:
        """Wait until every submitted change is committed or failed."""
        await self._idle.wait()

    async def stop(self) -> None:
        """Finish in-flight commits, then stop the writer."""
        await self.drain()
        if self._writer is not None:
            self._writer.cancel()
            try:
                await self._writer
            except asyncio.CancelledError:
                pass
            self._writer = None

    async def _write_loop(self) -> None:
        queue = self._queue
        loop = asyncio.get_running_loop()
        while True:
            if not queue:
                self._idle.set()
                self._wakeup = loop.create_future()
                await self._wakeup
                continue
            # Everything that arrived while the previous commit ran goes into this one.
            if len(queue) <= self.max_batch:
                batch = list(queue)
                queue.clear()
            else:
                batch = [queue.popleft() for _ in range(self.max_batch)]
            started = time.perf_counter()
            try:
                await self.storage.commit(
                    (change.new for change in batch),
                    (row for change in batch for row in change.rows),
                )
            except DatabaseError as exc:
                log.error("group commit of %d changes failed: %s", len(batch), exc)
                self.failing = True
                self._fail(batch, exc)
            except Exception as exc:  # the writer must outlive any single batch
                log.exception("group commit of %d changes failed unexpectedly", len(batch))
                self.failing = True
                self._fail(batch, DatabaseError(str(exc)))
            else:
                self.failing = False
                self.metrics.commit_seconds.observe(time.perf_counter() - started)
                self.metrics.commit_batch.observe(len(batch))
                outbox = Outbox()
                for change in batch:
                    game = change.game
                    game.committed = change.new
                    game.pending -= 1
                    try:
                        change.on_commit(change, outbox)
                    except Exception:  # a frame that cannot be built must not stop the writer
                        log.exception("queueing the frames of a committed change failed")
                # One write per connection for the whole batch, in commit order, before
                # any handler resumes and answers its next message.
                outbox.flush()
                if self.after_batch is not None:
                    self.after_batch()
                for change in batch:
                    future = change.future
                    if future is not None and not future.done():
                        future.set_result(None)
                    self.maybe_evict(change.game)

    def _fail(self, batch: list[Change], exc: DatabaseError) -> None:
        """A failed commit fails its batch and everything queued behind it (which was
        validated against the failed states); heads go back to what is on disk."""
        batch.extend(self._queue)
        self._queue.clear()
        for change in batch:
            game = change.game
            game.head = game.committed
            game.pending = 0
            failure = DatabaseError(f"nothing was applied: {exc.message}")
            if change.on_fail is not None:
                try:
                    change.on_fail(change, failure)
                except Exception:  # answering must not stop the writer
                    log.exception("answering a failed change failed")
            future = change.future
            if future is not None and not future.done():
                future.set_exception(failure)
                future.exception()  # the handler may be gone; mark it retrieved
        for change in batch:
            self.maybe_evict(change.game)
