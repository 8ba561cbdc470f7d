"""Snapshot comparison of every game: the primary's state against the shadow's, game by
game, at equal versions.

Live comparison only sees games that have traffic; a sweep sees every game, including those
nobody touched since the backfill. States are compared only at equal versions: a game that
changed between the two reads is read once more, and if the versions still differ it is
skipped ("version skew"), never reported as a divergence. A game present on one side only is
read once more too (it may have been created between the reads), then reported as a finding
whose `missing` names the side lacking it.

Pure core: `plan` (which games, from the two listings) and `assess` (one game's verdict from
the two states). `sweep` only does the reading, a bounded number of games at a time.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Final, Literal

from compare.admin import AdminClient, AdminError, AdminUnreachable
from compare.diffing import Verdict, compare
from compare.rules import Rules, TypeRules

Side = Literal["primary", "shadow"]

SKEW: Final = "version skew"
VANISHED: Final = "gone from both sides"
EXCLUDED: Final = "excluded"
#: one side's read of a game: its state, None (no such game), or what went wrong
_Read = dict[str, Any] | BaseException | None
#: games read at once (each read is one request per side, pipelined on one connection)
CONCURRENCY: Final = 8


@dataclass(frozen=True, slots=True)
class SnapshotFinding:
    """A game whose states differ at equal versions, or that one side lacks."""

    game_id: str
    primary_version: int | None
    shadow_version: int | None
    verdict: Verdict
    primary_state: dict[str, Any] | None
    shadow_state: dict[str, Any] | None
    #: the side lacking the game, None when both have it
    missing: Side | None = None

    def to_json(self) -> dict[str, Any]:
        """JSON-ready form (for `--json`)."""
        return {
            "game_id": self.game_id,
            "versions": {"primary": self.primary_version, "shadow": self.shadow_version},
            "missing": self.missing,
            "paths": self.verdict.paths,
            "diff": self.verdict.diff,
            "text": self.verdict.text,
            "primary": self.primary_state,
            "shadow": self.shadow_state,
        }


@dataclass(frozen=True, slots=True)
class Outcome:
    """One game's result: matched, a finding, or skipped with a reason."""

    game_id: str
    finding: SnapshotFinding | None = None
    skipped: str | None = None
    #: worth reading again (the versions differ, or one side lacks the game)
    transient: bool = False

    @property
    def matched(self) -> bool:
        """Compared at equal versions and equal under the rules."""
        return self.finding is None and self.skipped is None


@dataclass(slots=True)
class SweepReport:
    """What a sweep found."""

    #: games on either side
    games: int = 0
    #: games compared at equal versions, or found on one side only
    compared: int = 0
    matched: int = 0
    findings: list[SnapshotFinding] = field(default_factory=list)
    #: (game_id, reason)
    skipped: list[tuple[str, str]] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """No finding."""
        return not self.findings

    def add(self, outcome: Outcome) -> None:
        """Count one game's outcome."""
        if outcome.skipped is not None:
            self.skipped.append((outcome.game_id, outcome.skipped))
            return
        self.compared += 1
        if outcome.finding is None:
            self.matched += 1
        else:
            self.findings.append(outcome.finding)

    def to_json(self) -> dict[str, Any]:
        """JSON-ready form (for `--json`)."""
        return {
            "ok": self.ok,
            "games": self.games,
            "compared": self.compared,
            "matched": self.matched,
            "findings": [finding.to_json() for finding in self.findings],
            "skipped": [{"game_id": g, "reason": reason} for g, reason in self.skipped],
        }


def plan(
    primary: Mapping[str, int],
    shadow: Mapping[str, int],
    skip: Callable[[str], bool] | None = None,
) -> tuple[list[str], list[tuple[str, str]]]:
    """From the two listings: the games to read (on either side, in id order) and the games
    the caller excluded, with their reason."""
    every = sorted(primary.keys() | shadow.keys())
    if skip is None:
        return every, []
    excluded = [(game_id, EXCLUDED) for game_id in every if skip(game_id)]
    dropped = {game_id for game_id, _ in excluded}
    return [game_id for game_id in every if game_id not in dropped], excluded


def _version(state: Mapping[str, Any] | None) -> int | None:
    version = state.get("version") if state is not None else None
    return version if type(version) is int else None


#: where a STATE frame's rules see the state (sweeps report paths from the state itself)
STATE_ROOT: Final = "root['state']"
#: how DeepDiff's text starts each change's line, naming its path (`pretty()`)
_TEXT_PATH = re.compile(
    r"^(Type of |Value of |Item |Attribute |Repetition change for item )" + re.escape(STATE_ROOT),
    re.MULTILINE,
)


def compare_states(
    primary: dict[str, Any] | None, shadow: dict[str, Any] | None, rules: TypeRules
) -> Verdict:
    """Two states under the STATE frames' rules, whose paths start at the frame (a rule for
    `root['state']['settings']['debug']` holds in sweeps as in live comparison); the paths
    reported start at the state. Only paths: a value that reads `root['state']` is left as
    it is."""
    if primary is None or shadow is None:
        # one side lacks the game: the difference is the whole state, shown as it is
        return compare(primary, shadow, rules)
    verdict = compare({"state": primary}, {"state": shadow}, rules)
    if not verdict.equal:
        verdict.paths = sorted({_rebase(path) for path in verdict.paths})
        verdict.diff = {
            report: _rebase_changes(changes) for report, changes in verdict.diff.items()
        }
        verdict.text = _TEXT_PATH.sub(r"\1root", verdict.text)
    return verdict


def _rebase(path: str) -> str:
    """`root['state']['scores']` -> `root['scores']` (the prefix only)."""
    return "root" + path[len(STATE_ROOT) :] if path.startswith(STATE_ROOT) else path


def _rebase_changes(changes: Any) -> Any:
    """One kind of change of a DeepDiff result: paths -> details, or a list of paths."""
    if isinstance(changes, dict):
        return {_rebase(path): detail for path, detail in changes.items()}
    if isinstance(changes, list):
        return [_rebase(path) if isinstance(path, str) else path for path in changes]
    return changes


def assess(
    game_id: str,
    primary: dict[str, Any] | None,
    shadow: dict[str, Any] | None,
    rules: TypeRules,
) -> Outcome:
    """One game's outcome from its two states (None: that side does not have the game)."""
    if primary is None and shadow is None:
        return Outcome(game_id, skipped=VANISHED, transient=True)
    p_version, s_version = _version(primary), _version(shadow)
    if primary is None or shadow is None:
        missing: Side = "primary" if primary is None else "shadow"
        verdict = compare_states(primary, shadow, rules)
        finding = SnapshotFinding(
            game_id, p_version, s_version, verdict, primary, shadow, missing=missing
        )
        return Outcome(game_id, finding=finding, transient=True)
    if p_version != s_version:
        return Outcome(game_id, skipped=SKEW, transient=True)
    verdict = compare_states(primary, shadow, rules)
    if verdict.equal:
        return Outcome(game_id)
    return Outcome(
        game_id, finding=SnapshotFinding(game_id, p_version, s_version, verdict, primary, shadow)
    )


async def sweep(
    primary: AdminClient,
    shadow: AdminClient,
    rules: Rules,
    *,
    skip: Callable[[str], bool] | None = None,
    concurrency: int = CONCURRENCY,
) -> SweepReport:
    """Compare every game's state on `primary` and `shadow` (see the module docstring).

    A server that cannot be reached raises `AdminUnreachable`; any other refusal of one
    game's read skips that game with the error as its reason.
    """
    p_listing, s_listing = await asyncio.gather(primary.listing(), shadow.listing())
    game_ids, excluded = plan(p_listing, s_listing, skip)
    type_rules = rules.for_type("STATE")
    report = SweepReport(games=len(game_ids) + len(excluded))
    outcomes: dict[str, Outcome] = {}
    queue = iter(game_ids)

    async def worker() -> None:
        # workers pull from one iterator: a million games never become a million tasks
        for game_id in queue:
            outcomes[game_id] = await _read_and_assess(primary, shadow, game_id, type_rules)

    try:
        async with asyncio.TaskGroup() as group:  # an unreachable server cancels every worker
            for _ in range(max(1, min(concurrency, len(game_ids)))):
                group.create_task(worker())
    except ExceptionGroup as group:  # raise what the docstring promises, not the group
        errors = [exc for exc in group.exceptions if isinstance(exc, AdminError)]
        if errors:
            raise errors[0] from None
        raise
    for game_id in game_ids:
        report.add(outcomes[game_id])
    report.skipped.extend(excluded)
    report.skipped.sort()
    return report


async def _read_and_assess(
    primary: AdminClient, shadow: AdminClient, game_id: str, rules: TypeRules
) -> Outcome:
    outcome = Outcome(game_id)
    for _ in range(2):  # a transient outcome is read once more
        reads: tuple[_Read, _Read] = await asyncio.gather(
            primary.get_state(game_id), shadow.get_state(game_id), return_exceptions=True
        )
        p_read, s_read = reads
        for read in (p_read, s_read):
            if isinstance(read, AdminUnreachable):
                raise read
        try:
            p_state, s_state = _state(p_read, "primary"), _state(s_read, "shadow")
        except AdminError as exc:
            return Outcome(game_id, skipped=f"error {exc.code}: {exc.message}")
        outcome = assess(game_id, p_state, s_state, rules)
        if not outcome.transient:
            break
    return outcome


def _state(read: _Read, side: str) -> dict[str, Any] | None:
    if isinstance(read, AdminError):
        raise AdminError(read.code, f"{side}: {read.message}") from read
    if isinstance(read, BaseException):
        raise read
    return read
