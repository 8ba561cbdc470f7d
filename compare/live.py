"""The comparator inside a running proxy: fed by its tap, resyncing through its shadow
order, sweeping both servers' snapshots, and answering on its control plane.

Resync is coordinated with the proxy's shadow order so that it is exact under traffic: the
game's ordered frames are held, the primary's committed state is read and imported into the
shadow, and the order resumes after that version (frames already in the copy are not sent).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import Any

from compare.admin import AdminClient, AdminUnreachable
from compare.comparator import StateComparator
from compare.rules import Rules
from compare.store import FindingStore
from compare.sweep import assess, sweep
from proxy.admin import CommandError, ControlPlane
from proxy.relay import MirrorProxy
from proxy.route import other
from stateshift.control import ControlError
from stateshift.tokens import mint_token

log = logging.getLogger("stateshift.compare")

#: the longest a resync waits for the game's in-flight shadow frame to be answered
SETTLE_SECONDS = 5.0


class ResyncRefused(RuntimeError):
    """A resync that could not be exact: the game's change is still on its way to the shadow."""


class LiveComparison:
    """A `StateComparator` wired to a proxy and its control plane."""

    def __init__(
        self,
        proxy: MirrorProxy,
        control: ControlPlane,
        rules: Rules,
        store: FindingStore,
        *,
        resync: bool = False,
        sweep_interval: float | None = 60.0,
        pair_timeout: float = 10.0,
    ) -> None:
        if proxy.tap is None:
            raise ValueError("the proxy needs a tap for the comparator")
        self.proxy = proxy
        self.control = control
        self.rules = rules
        self.store = store
        self.sweep_interval = sweep_interval
        self.comparator = StateComparator(
            proxy.tap,
            rules,
            store,
            proxy.metrics.registry,
            pair_timeout=pair_timeout,
            resync=self._resync if resync else None,
        )
        self.last_sweep: dict[str, Any] | None = None
        self._sweeper: asyncio.Task[None] | None = None
        for name, command in (
            ("COMPARE_STATUS", self._status),
            ("FINDINGS", self._findings),
            ("FINDING", self._finding),
            ("SWEEP", self._sweep_command),
            ("RESYNC", self._resync_command),
            ("RULES", self._rules),
        ):
            control.register(name, command)

    def start(self) -> None:
        """Start comparing (and sweeping, when an interval is set)."""
        self.comparator.start()
        if self.sweep_interval:
            self._sweeper = asyncio.create_task(self._sweep_loop(), name="snapshot-sweep")

    async def stop(self) -> None:
        """Stop comparing and sweeping."""
        if self._sweeper is not None:
            self._sweeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._sweeper
        await self.comparator.stop()
        self.store.close()

    def _token(self) -> str:
        return mint_token(self.proxy.settings.secret, "stateshift-comparator", "admin", ttl=300)

    def _url(self, upstream: str) -> str:
        return self.proxy.urls[upstream]

    # ----------------------------------------------------------------- resync

    async def _resync(self, game_id: str) -> int:
        """Copy the primary's committed state of a game into the shadow, exactly."""
        proxy = self.proxy
        # No swap between choosing the primary and the import (a commit takes the same
        # lock): read before a flip and written after it, the import would overwrite the
        # new primary's acknowledged changes.
        async with proxy.swap_lock:
            if not proxy.route.mirroring:
                # finalized: the old server is retired (a LookupError is not retried)
                raise LookupError(f"mirroring is finalized: no shadow to resync {game_id} into")
            primary = proxy.route.primary_for(game_id)
            if proxy.reach[other(primary)].down:
                # no admin connection opened to find out again, for each of its games
                raise ConnectionError(f"the shadow ({other(primary)}) is unreachable")
            order = proxy.order
            order.hold(game_id)
            floor: int | None = None
            try:
                deadline = time.monotonic() + SETTLE_SECONDS
                while order.busy(game_id) and time.monotonic() < deadline:  # noqa: ASYNC110
                    await asyncio.sleep(0.01)
                if order.busy(game_id):
                    # Imported now, the change on its way would land on the copy (applied
                    # twice): the copies would differ for good.
                    raise ResyncRefused(
                        f"the shadow still owes the answer to a change of {game_id} after "
                        f"{SETTLE_SECONDS:g} s; not resynced (try again once it answers)"
                    )
                token = self._token()
                async with AdminClient(self._url(primary), token) as source:
                    state = await source.get_state(game_id)
                if state is None:
                    raise LookupError(f"game {game_id} is not on the primary")
                async with AdminClient(self._url(other(primary)), token) as target:
                    await target.import_state(state)
                floor = int(state["version"])
                return floor
            finally:
                order.resume(game_id, floor, time.monotonic())
                proxy.flush()

    async def resync_now(self, game_id: str) -> int:
        """Resync one game now, counted like the comparator's own resyncs."""
        return await self.comparator.resync(game_id, via=self._resync)

    # ----------------------------------------------------------------- sweep

    async def sweep_now(self) -> dict[str, Any]:
        """Compare every game's snapshot on both servers now; feed the comparator."""
        primary = self.proxy.route.primary
        token = self._token()
        comparator = self.comparator

        def skip(game_id: str) -> bool:
            return game_id in comparator.not_comparable or game_id in comparator.diverged

        async with (
            AdminClient(self._url(primary), token) as source,
            AdminClient(self._url(other(primary)), token) as target,
        ):
            report = await sweep(source, target, self.rules, skip=skip)
        route, type_rules = self.proxy.route, self.rules.for_type("STATE")
        for finding in report.findings:
            if route.primary_for(finding.game_id) != primary:
                # under a ramp this game's primary is the other server: its view of the game
                swapped = assess(
                    finding.game_id, finding.shadow_state, finding.primary_state, type_rules
                ).finding
                finding = swapped if swapped is not None else finding
            verdict = finding.verdict
            comparator.judge_snapshot(
                finding.game_id,
                verdict,
                {
                    "game_id": finding.game_id,
                    "paths": verdict.paths,
                    "versions": {
                        "primary": finding.primary_version,
                        "shadow": finding.shadow_version,
                    },
                    "missing": finding.missing,
                    "primary": finding.primary_state,
                    "shadow": finding.shadow_state,
                    "diff": verdict.diff,
                    "text": verdict.text,
                },
            )
        comparator.count("snapshot", "match", report.matched)
        skewed = sum(1 for _, reason in report.skipped if reason == "version skew")
        comparator.skip("snapshot", "version_skew", skewed)
        comparator.skip("snapshot", "not_comparable", len(report.skipped) - skewed)
        self.last_sweep = {
            "at": time.time(),
            "games": report.games,
            "compared": report.compared,
            "matched": report.matched,
            "findings": len(report.findings),
            "skipped": len(report.skipped),
        }
        return self.last_sweep

    async def _sweep_loop(self) -> None:
        assert self.sweep_interval
        while True:
            await asyncio.sleep(self.sweep_interval)
            if not self.proxy.route.mirroring:
                continue  # finalized: the old server is retired (every game would be missing)
            try:
                await self.sweep_now()
            except (AdminUnreachable, ControlError) as exc:
                if isinstance(exc, ControlError) and exc.code not in ("UNREACHABLE", "TIMEOUT"):
                    log.exception("snapshot sweep failed")
                else:  # a server down: said, without a traceback
                    log.warning("snapshot sweep skipped: %s", exc)
            except Exception:
                log.exception("snapshot sweep failed")

    # ----------------------------------------------------------------- commands

    async def _status(self, actor: str, msg: dict[str, Any]) -> dict[str, Any]:
        status = self.comparator.status()
        status["last_sweep"] = self.last_sweep
        return {"compare": status}

    async def _findings(self, actor: str, msg: dict[str, Any]) -> dict[str, Any]:
        limit = msg.get("limit", 20)
        if type(limit) is not int or not 1 <= limit <= 1000:
            raise CommandError("BAD_MESSAGE", "`limit` must be an integer from 1 to 1000")
        return {"findings": await asyncio.to_thread(self.store.latest, limit)}

    async def _finding(self, actor: str, msg: dict[str, Any]) -> dict[str, Any]:
        finding_id = msg.get("finding_id")
        if type(finding_id) is not int:
            raise CommandError("BAD_MESSAGE", "`finding_id` must be an integer")
        if not 0 < finding_id < 2**63:  # SQLite's integers: no such finding
            raise CommandError("NOT_FOUND", f"no finding {finding_id}")
        finding = await asyncio.to_thread(self.store.get, finding_id)
        if finding is None:
            raise CommandError("NOT_FOUND", f"no finding {finding_id} (only the newest are kept)")
        return {"finding": finding}

    async def _sweep_command(self, actor: str, msg: dict[str, Any]) -> dict[str, Any]:
        if not self.proxy.route.mirroring:
            raise CommandError(
                "FAILED", "mirroring is finalized: the old server is retired, nothing to compare"
            )
        return {"sweep": await self.sweep_now()}

    async def _resync_command(self, actor: str, msg: dict[str, Any]) -> dict[str, Any]:
        game_id = msg.get("game_id")
        if not isinstance(game_id, str):
            raise CommandError("BAD_MESSAGE", "`game_id` must be a game id")
        try:
            version = await self.comparator.resync(game_id, via=self._resync)
        except LookupError as exc:
            raise CommandError("NOT_FOUND", str(exc)) from exc
        except ResyncRefused as exc:
            raise CommandError("FAILED", str(exc)) from exc
        return {"game_id": game_id, "version": version}

    async def _rules(self, actor: str, msg: dict[str, Any]) -> dict[str, Any]:
        return {"rules": self.rules.listing(), "source": self.rules.source}
