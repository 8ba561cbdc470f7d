"""Backfill: copy every game from the source server to the target before a parallel run, so
that the shadow starts from the primary's states instead of from nothing.

For each game in `game_id` order (LIST_GAMES pages): GET_STATE on the source and on the
target; when the target's state already equals the source's exactly (version and
`updated_at` included: an import keeps both) the game is left alone; when the target's
version is higher than the source's the game is not overwritten (result `newer`: the target
has updates the source never saw, e.g. it is already primary after a flip, or received
mirrored traffic; an import would move its version backwards and lose them), and counted
with the failures; otherwise (the target lacks the game, is older, or has the same version
with another state: the source is authoritative) the source's state is imported
(IMPORT_STATE) and, by default, read back to check it landed exactly. `overwrite_newer`
imports over a newer target too (an explicit opt-in: the source wins, the target's newer
updates are lost). The version check and the import are two requests (IMPORT_STATE has no
condition): an update the target takes between them is still overwritten, which is why a
backfill is not for a target that a proxy mirrors to (runbooks).

- **Idempotent**: a rerun copies only what differs and never moves a target's version
  backwards, so it is safe to run again.
- **Resumable**: a checkpoint file records the last game id such that every game before it
  was handled, and which of those failed (`retry`; not the games newer on the target: a
  retry cannot change them, every full run reports them again); a rerun with the
  checkpoint retries those first, then continues after it (a game that always fails, e.g.
  one too large for a frame, no longer holds every later batch back). A run that went
  through the whole listing with nothing to retry marks the checkpoint `complete`: the next
  run with it starts again from the first game (a rerun refreshes every game, as the runbooks say).
- A checkpoint that cannot be written stops the run before anything is copied
  (`CheckpointError`): a run believed resumable must be.
- Errors are per game: reported, counted, never fatal. Only losing the source's listing
  stops the run (`AdminUnreachable`), with the checkpoint saved.

Pure core: `Frontier` (the checkpoint's advance over games finished out of order),
`Checkpoint` (the file). The copying is a few workers sharing the source's listing.
"""

from __future__ import annotations

import asyncio
import json
import os
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final, Literal

from compare.admin import MAX_PAGE, AdminClient, AdminError

Result = Literal["copied", "equal", "newer", "failed"]

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
    #: why it failed or was not overwritten (empty otherwise)
    detail: str = ""
    version: int | None = None

    @property
    def ok(self) -> bool:
        """The target holds the source's state (copied or already equal)."""
        return self.result in ("copied", "equal")


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
    #: not overwritten: the target's version is higher than the source's (also in `failures`)
    newer: int = 0
    failures: list[GameResult] = field(default_factory=list)
    #: the run stopped at `limit` games, more may follow
    stopped_early: bool = False

    @property
    def failed(self) -> int:
        """How many games failed (those newer on the target included)."""
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
            if result.result == "newer":
                self.newer += 1
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
            "newer_on_target": self.newer,
            "stopped_early": self.stopped_early,
            "failures": [{"game_id": f.game_id, "error": f.detail} for f in self.failures],
        }


class Frontier:
    """The last game id such that it and every game started before it finished, and the
    games among them that failed (`retry`: a rerun from the checkpoint retries them first).

    Games are started in id order and finish in any order.
    """

    def __init__(self, after: str | None = None, retry: list[str] | None = None) -> None:
        self.last: str | None = after
        self.retry: list[str] = list(retry or [])
        self._started: deque[str] = deque()
        self._finished: dict[str, bool] = {}

    def start(self, game_id: str) -> None:
        """A game was taken, in id order."""
        self._started.append(game_id)

    def finish(self, game_id: str, ok: bool) -> bool:
        """A game finished (well or not); whether the frontier moved."""
        self._finished[game_id] = ok
        moved = False
        while self._started and self._started[0] in self._finished:
            head = self._started.popleft()
            if not self._finished.pop(head):
                self.retry.append(head)
            self.last = head
            moved = True
        return moved


@dataclass(frozen=True, slots=True)
class Checkpoint:
    """The checkpoint file: JSON `{"source", "target", "after", "retry", "complete",
    "saved_at"}`, rewritten atomically. It names its source and target so that it cannot
    resume another copy."""

    path: Path
    source: str
    target: str

    def load_all(self) -> tuple[str | None, list[str], bool]:
        """The game id to resume after, the failed games to retry, and whether the run that
        saved it went through the whole listing."""
        try:
            data = json.loads(self.path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return None, [], False
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
        retry = data.get("retry") or []
        if not isinstance(retry, list) or not all(isinstance(g, str) for g in retry):
            raise CheckpointError(f"{self.path} is not a backfill checkpoint")
        return (after if isinstance(after, str) else None), retry, data.get("complete") is True

    def save(self, after: str | None, retry: Sequence[str] = (), complete: bool = False) -> None:
        """Record `after`, the games to retry and whether the run went through every game
        (written to a temporary file, then renamed over the old one)."""
        data: dict[str, Any] = {"source": self.source, "target": self.target, "after": after}
        data.update(retry=list(retry), complete=complete)
        data["saved_at"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        temporary = self.path.with_name(self.path.name + ".tmp")
        try:
            with temporary.open("w", encoding="utf-8") as file:
                json.dump(data, file)
                file.write("\n")
                file.flush()
                os.fsync(file.fileno())
            os.replace(temporary, self.path)
        except OSError as exc:
            raise CheckpointError(f"cannot write checkpoint {self.path}: {exc}") from exc


async def copy_game(
    source: AdminClient,
    target: AdminClient,
    game_id: str,
    *,
    dry_run: bool = False,
    verify: bool = True,
    overwrite_newer: bool = False,
) -> GameResult:
    """Copy one game unless the target already has exactly the source's state, or (without
    `overwrite_newer`) a higher version than the source's."""
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
        have = current.get("version") if current is not None else None
        if not overwrite_newer and type(have) is int and version is not None and have > version:
            return GameResult(
                game_id,
                "newer",
                f"newer on target: not overwritten (target version {have},"
                f" source version {version}; --overwrite-newer replaces it)",
                version=version,
            )
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
    overwrite_newer: bool = False,
    limit: int | None = None,
    concurrency: int = CONCURRENCY,
    on_result: Callable[[GameResult], None] | None = None,
    on_listed: Callable[[int, bool], None] | None = None,
) -> BackfillReport:
    """Copy every game from `source` to `target` (see the module docstring).

    `limit` stops after that many games (a batch; the checkpoint says where to go on).
    `overwrite_newer` imports over a target whose version is higher than the source's.
    `on_result` sees each game's result, `on_listed(n, last)` each listing page's size.
    Losing the source's listing raises `AdminUnreachable` after saving the checkpoint.
    """
    resumed, retry, complete = (
        checkpoint.load_all() if checkpoint is not None else (None, [], False)
    )
    if complete:  # the last run went through every game: a rerun refreshes them all
        resumed, retry = None, []
    report = BackfillReport(dry_run=dry_run, resumed_after=resumed, checkpoint=resumed)
    frontier = Frontier(resumed)
    if checkpoint is not None and not dry_run:
        checkpoint.save(resumed, retry)  # an unwritable checkpoint stops the run before it starts
    queue: asyncio.Queue[str | None] = asyncio.Queue(maxsize=max(1, concurrency) * 4)
    workers = max(1, concurrency)
    saved_at = time.monotonic()
    #: games being retried that have not finished: the checkpoint keeps them until they do
    pending = list(retry if limit is None else retry[:limit])
    saved: tuple[str | None, list[str]] = (resumed, list(retry))

    def save(force: bool = False) -> None:
        nonlocal saved_at, saved
        if checkpoint is None or dry_run:
            return
        now = (frontier.last, [*pending, *frontier.retry])
        if now == saved:
            return
        if force or time.monotonic() - saved_at >= SAVE_EVERY:
            checkpoint.save(*now)
            saved = now
            report.checkpoint = frontier.last
            saved_at = time.monotonic()

    async def produce() -> None:
        after, taken = resumed, 0
        try:
            for game_id in retry[:limit]:  # the failed games first (before the frontier)
                taken += 1
                await queue.put(game_id)
            frontier.retry.extend(retry[taken:])
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

    retrying = set(retry)

    async def work() -> None:
        while (game_id := await queue.get()) is not None:
            result = await copy_game(
                source,
                target,
                game_id,
                dry_run=dry_run,
                verify=verify,
                overwrite_newer=overwrite_newer,
            )
            report.add(result)
            if game_id in retrying:
                pending.remove(game_id)
                if result.result == "failed":
                    frontier.retry.append(game_id)
                save()
            # a game newer on the target was handled (not overwritten, reported): retrying
            # cannot change that, so the checkpoint moves past it and can complete
            elif frontier.finish(game_id, result.result != "failed"):
                save()
            if on_result is not None:
                on_result(result)

    try:
        async with asyncio.TaskGroup() as group:
            group.create_task(produce())
            for _ in range(workers):
                group.create_task(work())
    except BaseExceptionGroup as group_error:
        # one cause is enough for the caller: the listing failed, or the checkpoint
        raise group_error.exceptions[0] from None
    finally:
        save(force=True)  # a retried game not finished stays in the checkpoint's list
    if checkpoint is not None and not dry_run and not report.stopped_early:
        checkpoint.save(frontier.last, frontier.retry, complete=not frontier.retry)
    return report
