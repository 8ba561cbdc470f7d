"""Backfill: copy every game from the source server to the target before a parallel run, so
that the shadow starts from the primary's states instead of from nothing.

For each game in `game_id` order (LIST_GAMES pages): GET_STATE on the source and on the
target; when the target's state already equals the source's exactly (version and
`updated_at` included: an import keeps both) the game is left alone, otherwise the source's
state is imported (IMPORT_STATE) and, by default, read back to check it landed exactly.

- **Idempotent**: a rerun copies only what differs, so it is always safe to run again.
- **Resumable**: a checkpoint file records the last game id such that it and every game
  before it were copied or found equal; a rerun with the checkpoint continues after it. A
  game that failed holds the checkpoint back, so a rerun retries it.
- Errors are per game: reported, counted, never fatal. Only losing the source's listing
  stops the run (`AdminUnreachable`), with the checkpoint saved.

Pure core: `Frontier` (the checkpoint's advance over games finished out of order),
`Checkpoint` (the file). The copying is a few workers sharing the source's listing.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final, Literal

from compare.admin import MAX_PAGE, AdminClient, AdminError

Result = Literal["copied", "equal", "failed"]

#: games handled at once (requests pipelined on one connection per server)
CONCURRENCY: Final = 8
#: the checkpoint file is rewritten at most this often while the frontier moves (s)
SAVE_EVERY: Final = 1.0


class CheckpointError(ValueError):
    """The checkpoint file is unreadable or belongs to another source/target pair."""


@dataclass(frozen=True, slots=True)
class GameResult:
    """What happened to one game."""

    game_id: str
    result: Result
    #: why it failed (empty otherwise)
    detail: str = ""
    version: int | None = None


@dataclass(slots=True)
class BackfillReport:
    """Counts and failures of one backfill run."""

    dry_run: bool = False
    #: the checkpoint this run resumed after
    resumed_after: str | None = None
    #: the checkpoint at the end of the run
    checkpoint: str | None = None
    games: int = 0
    #: copied (in a dry run: would be copied)
    copied: int = 0
    equal: int = 0
    failures: list[GameResult] = field(default_factory=list)
    #: the run stopped at `limit` games, more may follow
    stopped_early: bool = False

    @property
    def failed(self) -> int:
        """How many games failed."""
        return len(self.failures)

    @property
    def ok(self) -> bool:
        """Nothing failed."""
        return not self.failures

    def add(self, result: GameResult) -> None:
        """Count one game's result."""
        self.games += 1
        if result.result == "copied":
            self.copied += 1
        elif result.result == "equal":
            self.equal += 1
        else:
            self.failures.append(result)

    def to_json(self) -> dict[str, Any]:
        """JSON-ready form (for `--json`)."""
        return {
            "ok": self.ok,
            "dry_run": self.dry_run,
            "resumed_after": self.resumed_after,
            "checkpoint": self.checkpoint,
            "games": self.games,
            "copied": self.copied,
            "equal": self.equal,
            "failed": self.failed,
            "stopped_early": self.stopped_early,
            "failures": [{"game_id": f.game_id, "error": f.detail} for f in self.failures],
        }


class Frontier:
    """The last game id such that it and every game started before it finished well.

    Games are started in id order and finish in any order; a failed game stops the frontier
    for the rest of the run (a rerun from the checkpoint must retry it).
    """

    def __init__(self, after: str | None = None) -> None:
        self.last: str | None = after
        self._started: deque[str] = deque()
        self._done: set[str] = set()
        self._failed: set[str] = set()
        self._stuck = False

    def start(self, game_id: str) -> None:
        """A game was taken, in id order."""
        if not self._stuck:
            self._started.append(game_id)

    def finish(self, game_id: str, ok: bool) -> bool:
        """A game finished (well or not); whether the frontier moved."""
        if self._stuck:
            return False
        (self._done if ok else self._failed).add(game_id)
        moved = False
        while self._started:
            head = self._started[0]
            if head in self._failed:
                # nothing after a failure may be recorded; stop tracking for this run
                self._stuck = True
                self._started.clear()
                self._done.clear()
                break
            if head not in self._done:
                break
            self._started.popleft()
            self._done.discard(head)
            self.last = head
            moved = True
        return moved


@dataclass(frozen=True, slots=True)
class Checkpoint:
    """The checkpoint file: JSON `{"source", "target", "after", "saved_at"}`, rewritten
    atomically. It names its source and target so that it cannot resume another copy."""

    path: Path
    source: str
    target: str

    def load(self) -> str | None:
        """The game id to resume after (None: start from the first game)."""
        try:
            data = json.loads(self.path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as exc:
            raise CheckpointError(f"cannot read checkpoint {self.path}: {exc}") from exc
        if not isinstance(data, dict) or not (
            data.get("after") is None or isinstance(data.get("after"), str)
        ):
            raise CheckpointError(f"{self.path} is not a backfill checkpoint")
        if (data.get("source"), data.get("target")) != (self.source, self.target):
            raise CheckpointError(
                f"{self.path} records a copy from {data.get('source')} to {data.get('target')},"
                f" not from {self.source} to {self.target}"
            )
        after = data.get("after")
        return after if isinstance(after, str) else None

    def save(self, after: str | None) -> None:
        """Record `after` (written to a temporary file, then renamed over the old one)."""
        data = {"source": self.source, "target": self.target, "after": after}
        data["saved_at"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        temporary = self.path.with_name(self.path.name + ".tmp")
        with temporary.open("w", encoding="utf-8") as file:
            json.dump(data, file)
            file.write("\n")
            file.flush()
            os.fsync(file.fileno())
        os.replace(temporary, self.path)


async def copy_game(
    source: AdminClient,
    target: AdminClient,
    game_id: str,
    *,
    dry_run: bool = False,
    verify: bool = True,
) -> GameResult:
    """Copy one game unless the target already has exactly the source's state."""
    try:
        state = await source.get_state(game_id)
        if state is None:
            return GameResult(game_id, "failed", "source: NOT_FOUND (listed, then gone)")
        version = state.get("version")
        version = version if type(version) is int else None
        try:
            current = await target.get_state(game_id)
        except AdminError as exc:
            raise AdminError(exc.code, f"target: {exc.message}") from exc
        if current == state:
            return GameResult(game_id, "equal", version=version)
        if dry_run:
            return GameResult(game_id, "copied", version=version)
        try:
            acked = await target.import_state(state)
            if acked != version:
                return GameResult(
                    game_id, "failed", f"target acknowledged version {acked}, not {version}"
                )
            if verify and await target.get_state(game_id) != state:
                return GameResult(
                    game_id, "failed", "target: the imported state reads back different"
                )
        except AdminError as exc:
            raise AdminError(exc.code, f"target: {exc.message}") from exc
        return GameResult(game_id, "copied", version=version)
    except AdminError as exc:
        return GameResult(game_id, "failed", f"{exc.code}: {exc.message}")


async def backfill(
    source: AdminClient,
    target: AdminClient,
    *,
    checkpoint: Checkpoint | None = None,
    dry_run: bool = False,
    verify: bool = True,
    limit: int | None = None,
    concurrency: int = CONCURRENCY,
    on_result: Callable[[GameResult], None] | None = None,
    on_listed: Callable[[int, bool], None] | None = None,
) -> BackfillReport:
    """Copy every game from `source` to `target` (see the module docstring).

    `limit` stops after that many games (a batch; the checkpoint says where to go on).
    `on_result` sees each game's result, `on_listed(n, last)` each listing page's size.
    Losing the source's listing raises `AdminUnreachable` after saving the checkpoint.
    """
    resumed = checkpoint.load() if checkpoint is not None else None
    report = BackfillReport(dry_run=dry_run, resumed_after=resumed, checkpoint=resumed)
    frontier = Frontier(resumed)
    queue: asyncio.Queue[str | None] = asyncio.Queue(maxsize=max(1, concurrency) * 4)
    workers = max(1, concurrency)
    saved_at = time.monotonic()

    def save(force: bool = False) -> None:
        nonlocal saved_at
        if checkpoint is None or dry_run or frontier.last == report.checkpoint:
            return
        if force or time.monotonic() - saved_at >= SAVE_EVERY:
            checkpoint.save(frontier.last)
            report.checkpoint = frontier.last
            saved_at = time.monotonic()

    async def produce() -> None:
        after, taken = resumed, 0
        try:
            while True:
                wanted = MAX_PAGE if limit is None else min(MAX_PAGE, limit - taken)
                if wanted <= 0:
                    report.stopped_early = True
                    return
                page, after = await source.list_games(after, wanted)
                if on_listed is not None:
                    on_listed(len(page), after is None)
                for game_id, _ in page:
                    frontier.start(game_id)
                    await queue.put(game_id)
                taken += len(page)
                if after is None:
                    return
        finally:
            for _ in range(workers):
                await queue.put(None)

    async def work() -> None:
        while (game_id := await queue.get()) is not None:
            result = await copy_game(source, target, game_id, dry_run=dry_run, verify=verify)
            report.add(result)
            if frontier.finish(game_id, result.result != "failed"):
                save()
            if on_result is not None:
                on_result(result)

    try:
        async with asyncio.TaskGroup() as group:
            group.create_task(produce())
            for _ in range(workers):
                group.create_task(work())
    except BaseExceptionGroup as group_error:
        # one cause is enough for the caller: the listing failed (the workers never raise)
        raise group_error.exceptions[0] from None
    finally:
        with contextlib.suppress(OSError):
            save(force=True)
    return report
