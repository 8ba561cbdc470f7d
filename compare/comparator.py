"""The live StateComparator: consumes the proxy's tap, pairs, compares, tracks drift,
exports metrics and keeps samples.

Drift: the first divergence of a game is *the* finding; the game is then marked diverged
and later comparisons of it are counted as `diverged`, not as new findings. A game the proxy
cannot mirror faithfully (a shadow lost, a gap in the order) is *not comparable* until it is
resynced. With resync on, the shadow's copy of such a game is replaced from the primary and
the game becomes comparable again.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import random
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Iterable, Iterator
from typing import Any

from prometheus_client import CollectorRegistry, Gauge
from prometheus_client import Counter as PromCounter
from prometheus_client.core import CounterMetricFamily
from prometheus_client.metrics_core import Metric

from compare.diffing import Verdict, compare, quick_equal
from compare.pairing import PRIMARY, SHADOW, Pair, Pairer
from compare.rules import Rules
from compare.store import FindingStore
from proxy.tap import Tap, TapNotice, TapRecord
from stateshift.hotmetrics import HotCounter, HotHistogram

log = logging.getLogger("stateshift.compare")

KINDS = ("answer", "broadcast", "snapshot")
RESULTS = ("match", "mismatch", "unpaired", "diverged")
SKIP_REASONS = ("version_skew", "not_comparable", "resync")

#: resync one game: returns the version the shadow now has (the primary's); LookupError when
#: there is nothing to copy (the primary does not have the game) or nowhere to copy it (no
#: shadow any more): not tried again
Resync = Callable[[str], Awaitable[int]]
#: seconds before an automatic resync that failed is tried again (the shadow still down, the
#: game still busy), doubled at each failure up to RESYNC_RETRY_MAX, while the game is still
#: diverged or not comparable
RESYNC_RETRY_FIRST = 2.0
RESYNC_RETRY_MAX = 60.0


class ReadCounter:
    """A counter read from its owner when scraped (nothing to update per frame): `read`,
    set by the owner, returns its value."""

    def __init__(self, name: str, documentation: str, registry: CollectorRegistry) -> None:
        self.name = name
        self.documentation = documentation
        self.read: Callable[[], float] = lambda: 0.0
        registry.register(self)

    def collect(self) -> Iterator[Metric]:
        yield CounterMetricFamily(self.name, self.documentation, value=self.read())


class CompareMetrics:
    """The comparator's families, registered in the proxy's registry."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.comparisons = HotCounter(
            "stateshift_comparisons",
            "Comparisons of primary and shadow, by kind (answer, broadcast, snapshot) and "
            "result (match, mismatch, unpaired, diverged: a game already diverged).",
            ["kind", "result"],
            registry=registry,
        )
        self.skipped = PromCounter(
            "stateshift_comparisons_skipped",
            "Pairs not compared, by kind and reason (version skew, game not comparable, resync).",
            ["kind", "reason"],
            registry=registry,
        )
        self.mismatches = PromCounter(
            "stateshift_mismatches",
            "Differing paths in mismatching comparisons, normalised (no ids or values).",
            ["kind", "path"],
            registry=registry,
        )
        self.findings = PromCounter(
            "stateshift_findings",
            "First divergences of a game (or of an admin answer), by kind.",
            ["kind"],
            registry=registry,
        )
        self.diverged = Gauge(
            "stateshift_games_diverged", "Games currently diverged.", registry=registry
        )
        self.not_comparable = Gauge(
            "stateshift_games_not_comparable",
            "Games the proxy could not mirror faithfully, until resynced.",
            registry=registry,
        )
        self.resyncs = PromCounter(
            "stateshift_resyncs", "Games resynced from the primary.", registry=registry
        )
        self.resync_failures = PromCounter(
            "stateshift_resync_failures", "Resyncs that failed.", registry=registry
        )
        self.lag = Gauge(
            "stateshift_compare_lag_seconds",
            "Age of the newest tap record the comparator has processed.",
            registry=registry,
        )
        self.seconds = HotHistogram(
            "stateshift_compare_seconds",
            "Time spent comparing one pair (cheap equality, DeepDiff on a mismatch).",
            buckets=(1e-6, 5e-6, 1e-5, 2.5e-5, 5e-5, 1e-4, 2.5e-4, 1e-3, 5e-3, 0.025),
            registry=registry,
        )
        self.pending = Gauge(
            "stateshift_compare_pending_pairs",
            "Frames waiting for their partner.",
            registry=registry,
        )
        self.busy = ReadCounter(
            "stateshift_compare_busy_seconds",
            "Seconds the comparator held the event loop (pairing, comparing, recording "
            "findings, expiry): taken from relaying.",
            registry,
        )
        self.pairs_dropped = ReadCounter(
            "stateshift_compare_dropped",
            "Frames dropped unpaired to keep the pairer within its bound (never compared, "
            "not findings).",
            registry,
        )
        for kind in KINDS:
            self.findings.labels(kind)
            for result in RESULTS:
                self.comparisons.labels(kind, result)
            for reason in SKIP_REASONS:
                self.skipped.labels(kind, reason)


class StateComparator:
    """Consumes a tap; judges every pair; remembers the first divergence of each game."""

    def __init__(
        self,
        tap: Tap,
        rules: Rules,
        store: FindingStore,
        registry: CollectorRegistry,
        *,
        pair_timeout: float = 10.0,
        resync: Resync | None = None,
        resync_retry: float = RESYNC_RETRY_FIRST,
    ) -> None:
        self.tap = tap
        self.rules = rules
        self.store = store
        self.metrics = CompareMetrics(registry)
        # read when scraped: nothing to update per record
        self.metrics.lag.set_function(self.lag)
        self.metrics.pending.set_function(lambda: len(self.pairer))
        self.pairer = Pairer(pair_timeout)
        self.metrics.pairs_dropped.read = lambda: self.pairer.dropped
        #: seconds spent in `take` and `expire` (a plain sum: read when scraped)
        self.busy_seconds = 0.0
        self.metrics.busy.read = lambda: self.busy_seconds
        self.resync_game = resync
        self.resync_retry = resync_retry
        #: game id -> (when, monotonic; the delay it was given) of its next automatic resync
        #: after a failed one
        self._retries: dict[str, tuple[float, float]] = {}
        #: game id -> why it diverged (the finding id)
        self.diverged: dict[str, int] = {}
        #: game id -> why it cannot be compared
        self.not_comparable: dict[str, str] = {}
        #: game id -> version up to which the shadow's frames predate a resync
        self.floor: dict[str, int] = {}
        self.counts: Counter[tuple[str, str]] = Counter()
        self.paths: Counter[tuple[str, str]] = Counter()
        self.resyncs = 0
        self.last_at = 0.0
        #: game id -> resyncs of it under way (automatic and on demand may overlap: the game
        #: is compared again only once the last one ends)
        self._resyncing: dict[str, int] = {}
        #: what the pairer must drop before it takes the next frame (`forget_now`)
        self._forget_conns: set[int] = set()
        self._forget_games: set[str] = set()
        #: the last switch, on the tap's clock (`mark_epoch`). Since then, mismatches that
        #: say nothing of the server switched to are counted here too, so that figures
        #: "since the switch" (what a watch rolls back on) leave them out: a frame tapped
        #: before the switch and judged unpaired after it (`pair_timeout` later), and any of
        #: a game whose mirroring was disturbed since (`disturbed`: its shadow lost, a gap;
        #: then resynced: the frames around a resync pair badly whichever server is right),
        #: and a frame only the new server sent (the old server's omission: its health)
        self.epoch = 0.0
        self.excluded_since_epoch = 0
        #: the ids of those findings
        self.excluded_findings: set[int] = set()
        #: games marked not comparable since the last switch -> until when (the tap's
        #: clock) their mismatches are left out: until `pair_timeout` after their resync,
        #: when the frames tapped around it have been judged (not comparable, they are
        #: skipped anyway)
        self.disturbed: dict[str, float] = {}
        self._children: dict[tuple[str, str], Any] = {}
        self._ticker: asyncio.Task[None] | None = None
        self._tasks: set[asyncio.Task[Any]] = set()

    # ----------------------------------------------------------------- running

    def start(self) -> None:
        """Start consuming the tap: the relay pours it into `take` once per event-loop turn
        with traffic (a task would add a wake-up per turn)."""
        self.tap.sink = self.take
        self.tap.pour()  # what was offered before
        self._ticker = asyncio.create_task(self._tick(), name="comparator-expiry")

    async def stop(self) -> None:
        """Stop consuming."""
        if self.tap.sink == self.take:
            self.tap.sink = None
        for task in [self._ticker, *self._tasks]:
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        self._ticker = None

    def take(self, items: Iterable[TapRecord | TapNotice]) -> None:
        """Judge what the tap poured (nothing but the records here: this runs once per
        event-loop turn with traffic). The time it takes is counted: it is taken from
        relaying (`stateshift_compare_busy_seconds_total`)."""
        started = time.perf_counter()
        self.forget_now()
        for item in items:
            try:
                self.process(item)
            except Exception:  # one odd frame must not stop the comparator
                log.exception("comparing a tap record failed")
        self.forget_now()
        self.busy_seconds += time.perf_counter() - started

    async def _tick(self) -> None:
        while True:
            await asyncio.sleep(0.5)
            self.tap.pour()  # notices offered outside a relay turn
            self.expire(time.time())
            self.retry_resyncs(time.monotonic())

    def lag(self) -> float:
        """Seconds since the newest tap record processed was seen (0 before the first)."""
        return max(0.0, time.time() - self.last_at) if self.last_at else 0.0

    # ----------------------------------------------------------------- judging

    def process(self, item: TapRecord | TapNotice) -> None:
        """Take one tap item (pure bookkeeping, no I/O but the store)."""
        if isinstance(item, TapNotice):
            self._notice(item)
            return
        self.last_at = item.at
        if item.direction != "upstream" or item.msg is None:
            return
        pair = self.pairer.add(
            item.role, item.msg, item.at, item.game_id, item.conn_id, item.upstream
        )
        if pair is not None:
            self.judge(pair)

    def _notice(self, notice: TapNotice) -> None:
        if notice.kind == "not_mirrored" and notice.conn_id is not None:
            self.pairer.not_mirrored(notice.conn_id, notice.reason)
        elif notice.kind == "shadow_lost" and notice.conn_id is not None:
            self._forget_conns.add(notice.conn_id)
        elif notice.kind == "not_comparable" and notice.game_id is not None:
            self.mark_not_comparable(notice.game_id, notice.reason)

    def forget_now(self) -> None:
        """Drop what waits for the connections whose shadow was lost and for the games that
        stopped being comparable, diverged or were resynced: in one pass for all of them,
        once per batch (their frames are not judged meanwhile: those games are skipped)."""
        if self._forget_conns or self._forget_games:
            conns, games = self._forget_conns, self._forget_games
            self._forget_conns, self._forget_games = set(), set()
            self.pairer.forget(conns, games, self.floor)

    def mark_epoch(self, at: float) -> None:
        """A switch at `at` (the tap's clock): from now on, count apart what was tapped
        before it and is judged only now."""
        self.epoch = at
        self.excluded_since_epoch = 0
        self.excluded_findings = set()
        self.disturbed = {}

    def mark_not_comparable(self, game_id: str, reason: str) -> None:
        """The proxy could not mirror this game faithfully: stop judging it until a resync."""
        if game_id in self.not_comparable:
            return
        self.not_comparable[game_id] = reason
        if self.epoch:
            self.disturbed[game_id] = math.inf
        self._forget_games.add(game_id)
        self.metrics.not_comparable.set(len(self.not_comparable))
        self._maybe_resync(game_id)

    def expire(self, now: float) -> None:
        """Turn frames left alone too long into unpaired results."""
        started = time.perf_counter()
        self.forget_now()
        for pair in self.pairer.expire(now):
            self.judge(pair)
        self.busy_seconds += time.perf_counter() - started

    def judge(self, pair: Pair) -> None:
        """Compare a pair (or count an unpaired frame) and record what it shows."""
        kind, game_id = pair.kind, pair.game_id
        if game_id is not None and (game_id in self.not_comparable or game_id in self._resyncing):
            self.skip(kind, "not_comparable")
            return
        floor = self.floor.get(game_id) if game_id is not None else None
        if floor is not None and self._before_floor(pair, floor):
            self.skip(kind, "resync")
            return
        if pair.missing is not None:
            self._different(pair, "unpaired", None)
            return
        assert pair.primary is not None
        assert pair.shadow is not None
        frame_type = pair.primary.get("type")
        if frame_type in ("STATE", "CONNECTED") and pair.shadow.get("type") == frame_type:
            primary_version, shadow_version = pair.version(PRIMARY), pair.version(SHADOW)
            if (
                primary_version is not None
                and shadow_version is not None
                and primary_version != shadow_version
            ):
                # An answer read at another moment: only states at equal versions compare.
                self.skip(kind, "version_skew")
                return
        type_rules = self.rules.for_type(str(frame_type))
        if game_id is not None and game_id in self.diverged:
            # Drift: the game's finding is recorded; its later pairs only count, without
            # paying DeepDiff (a storm of diverged games must not swamp the comparator).
            same = quick_equal(pair.primary, pair.shadow, type_rules)
            self.count(kind, "match" if same else "diverged")
            return
        verdict = compare(pair.primary, pair.shadow, type_rules)
        self.metrics.seconds.observe(verdict.seconds)
        if verdict.equal:
            self.count(kind, "match")
        else:
            self._different(pair, "mismatch", verdict)

    def _before_floor(self, pair: Pair, floor: int) -> bool:
        versions = [v for v in (pair.version(PRIMARY), pair.version(SHADOW)) if v is not None]
        return bool(versions) and min(versions) <= floor

    def _different(self, pair: Pair, result: str, verdict: Verdict | None) -> None:
        kind, game_id = pair.kind, pair.game_id
        if game_id is not None and game_id in self.diverged:
            self.count(kind, "diverged")
            return
        self.count(kind, result)
        excluded = (
            (pair.missing is not None and pair.at < self.epoch)
            or (game_id is not None and time.time() < self.disturbed.get(game_id, 0.0))
            # since a switch, a frame the new server sent as the primary and the old one, the
            # shadow, never did is the old server's omission (dropping broadcasts or
            # answers): its health, never a reason to switch back to it
            # (runbooks/rollback.md). The other way round it stays counted: under a ramp a
            # frame only the new server sent as the shadow is the new server's own.
            or (self.epoch > 0 and pair.missing == SHADOW and pair.upstream == "new")
        )
        if excluded:
            self.excluded_since_epoch += 1
        paths = verdict.paths if verdict is not None else ["root"]
        for path in paths:
            self.metrics.mismatches.labels(kind, path).inc()
            self.paths[(kind, path)] += 1
        finding_id = self.record(
            kind=kind,
            result=result,
            game_id=game_id,
            paths=paths,
            versions={"primary": pair.version(PRIMARY), "shadow": pair.version(SHADOW)},
            missing=pair.missing,
            primary=pair.primary,
            shadow=pair.shadow,
            diff=verdict.diff if verdict is not None else {},
            text=verdict.text if verdict is not None else f"the {pair.missing} never sent it",
            conn_id=pair.conn_id,
            key=pair.key,
        )
        if excluded:
            self.excluded_findings.add(finding_id)
        if game_id is not None:
            self.diverged[game_id] = finding_id
            self.metrics.diverged.set(len(self.diverged))
            self._forget_games.add(game_id)
            self._maybe_resync(game_id)

    def record(self, **finding: Any) -> int:
        """Keep a first divergence (a finding) in the store; count it."""
        finding.setdefault("at", time.time())
        finding["first"] = True
        self.metrics.findings.labels(finding["kind"]).inc()
        return self.store.add(finding)

    def judge_snapshot(self, game_id: str, verdict: Verdict, finding: dict[str, Any]) -> None:
        """A snapshot sweep compared one game (see `compare.sweep`)."""
        if game_id in self.not_comparable or game_id in self._resyncing:
            self.skip("snapshot", "not_comparable")
            return
        if verdict.equal:
            self.count("snapshot", "match")
            return
        if game_id in self.diverged:
            self.count("snapshot", "diverged")
            return
        self.count("snapshot", "mismatch")
        for path in verdict.paths:
            self.metrics.mismatches.labels("snapshot", path).inc()
            self.paths[("snapshot", path)] += 1
        self.diverged[game_id] = self.record(kind="snapshot", result="mismatch", **finding)
        self.metrics.diverged.set(len(self.diverged))
        self._maybe_resync(game_id)

    def count(self, kind: str, result: str, n: int = 1) -> None:
        """Count `n` comparison results."""
        self.counts[(kind, result)] += n
        child = self._children.get((kind, result))
        if child is None:
            child = self._children[(kind, result)] = self.metrics.comparisons.labels(kind, result)
        child.inc(n)

    def skip(self, kind: str, reason: str, n: int = 1) -> None:
        """Count `n` pairs not compared."""
        self.metrics.skipped.labels(kind, reason).inc(n)

    # ----------------------------------------------------------------- resync

    def _maybe_resync(self, game_id: str) -> None:
        if self.resync_game is None or game_id in self._resyncing:
            return
        self._begin_resync(game_id)
        task = asyncio.create_task(self._resync(game_id))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def resync(self, game_id: str, via: Resync | None = None) -> int:
        """Replace the shadow's copy of a game from the primary, now (on demand, with `via`
        when automatic resync is off); return its version."""
        self._begin_resync(game_id)
        return await self._resync(game_id, raise_errors=True, via=via)

    def _begin_resync(self, game_id: str) -> None:
        """One more resync of the game under way (counted: the first of overlapping ones to
        end must not let the game be compared while another is still copying it)."""
        self._resyncing[game_id] = self._resyncing.get(game_id, 0) + 1

    async def _resync(
        self, game_id: str, raise_errors: bool = False, via: Resync | None = None
    ) -> int:
        resync_game = via or self.resync_game
        assert resync_game is not None, "resync is not configured"
        try:
            version = await resync_game(game_id)
        except Exception as exc:
            self.metrics.resync_failures.inc()
            if self.resync_game is not None and not isinstance(exc, LookupError):
                first = game_id not in self._retries
                wait = self._retry_later(game_id)
                if first and not isinstance(exc, ConnectionError):  # in full the first time
                    log.exception("resync of %s failed; tried again in %.1f s", game_id, wait)
                elif first:  # a server that cannot be reached: its traceback says nothing more
                    log.warning(
                        "resync of %s failed (%s); tried again in %.1f s", game_id, exc, wait
                    )
                else:
                    log.warning(
                        "resync of %s failed again (%s); next in %.1f s", game_id, exc, wait
                    )
            else:
                self._retries.pop(game_id, None)  # nothing to copy from: not tried again
                log.warning("resync of %s not done: %s", game_id, exc)
            if raise_errors:
                raise
            return -1
        finally:
            # cancelled too (a switch's verification that ended): else the game would stay
            # out of every comparison and every resync for good
            left = self._resyncing.get(game_id, 1) - 1
            if left > 0:
                self._resyncing[game_id] = left
            else:
                self._resyncing.pop(game_id, None)
        self._retries.pop(game_id, None)
        self._forget_games.add(game_id)
        if game_id in self.disturbed:
            self.disturbed[game_id] = time.time() + self.pairer.timeout
        self.floor[game_id] = version
        self.diverged.pop(game_id, None)
        self.not_comparable.pop(game_id, None)
        self.resyncs += 1
        self.metrics.resyncs.inc()
        self.metrics.diverged.set(len(self.diverged))
        self.metrics.not_comparable.set(len(self.not_comparable))
        return version

    def _retry_later(self, game_id: str) -> float:
        """Schedule the game's next automatic resync after a failed one; the seconds until
        then. The delay doubles at each failure; the wait is drawn between half of it and all
        of it, so that games lost together (a shadow down) are not all retried in one turn,
        each holding the proxy's swap lock in turn."""
        previous = self._retries.get(game_id)
        delay = self.resync_retry if previous is None else min(previous[1] * 2, RESYNC_RETRY_MAX)
        wait = delay * (0.5 + random.random() / 2)
        self._retries[game_id] = (time.monotonic() + wait, delay)
        return wait

    def retry_resyncs(self, now: float) -> None:
        """Start the automatic resyncs due again (`now`: monotonic) of games still diverged
        or not comparable; forget those resolved otherwise (a resync on demand)."""
        for game_id, (due, _) in list(self._retries.items()):
            if now < due:
                continue
            if game_id not in self.diverged and game_id not in self.not_comparable:
                del self._retries[game_id]
                continue
            self._maybe_resync(game_id)

    # ----------------------------------------------------------------- reports

    def status(self) -> dict[str, Any]:
        """Figures for `compare status` and the readiness gates."""
        comparisons: dict[str, dict[str, int]] = {
            kind: {result: self.counts[(kind, result)] for result in RESULTS} for kind in KINDS
        }
        judged = sum(
            self.counts[(kind, result)]
            for kind in KINDS
            for result in ("match", "mismatch", "unpaired")
        )
        wrong = sum(self.counts[(kind, r)] for kind in KINDS for r in ("mismatch", "unpaired"))
        return {
            "comparisons": comparisons,
            "mismatch_ratio": (wrong / judged) if judged else None,
            "top_paths": [
                {"kind": kind, "path": path, "count": count}
                for (kind, path), count in self.paths.most_common(10)
            ],
            "diverged": sorted(self.diverged),
            "not_comparable": sorted(self.not_comparable),
            "resyncs": self.resyncs,
            "pairs_dropped": self.pairer.dropped,
            "lag_seconds": max(0.0, time.time() - self.last_at) if self.last_at else 0.0,
            "findings": self.store.count(),
        }
