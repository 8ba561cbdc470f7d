"""The demo's script: traffic, one divergence, check, flip, rollback, and the verdict.

Time is shared out over `duration` seconds of traffic: mirroring first, the injected
divergence at 20 %, the readiness check and the flip from 45 %, the rollback at 75 %, the
end at 100 %. The switchover steps run the real CLI (`stateshift switchover … --json`) as
subprocesses against the proxy's control plane, exactly as an engineer would type them.

The divergence is honest and contained: every player but one holds its score deltas (and
the demo waits until every delta in flight is answered), the old server's
`score-delta-off-by-one` fault is switched on, one player of a dedicated game sends a few
deltas, the fault is switched off and deltas resume. The comparator must find it (one finding
for the game), explain it (the diff names the scores) and resync the new server's copy.

The verdict is measured, not assumed: no player disconnected, every request answered, no
unexpected error, every invalid message answered with its documented error, every game's
version on both servers equal to the changes the players saw acknowledged, and a final
snapshot sweep finding both servers equal.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Final

import orjson
from rich.console import Console
from rich.live import Live
from websockets.asyncio.client import connect

from compare.admin import AdminClient
from compare.cli import render_finding, render_findings
from demo.stack import Stack
from demo.view import Snapshot, Step, live_view, summary_view
from loadgen.runner import LoadGen
from stateshift.control import ADMIN_TOKEN_ENV, ControlClient, ControlError
from stateshift.tokens import mint_token

FAULT_GAME: Final = "demo-fault"
FAULT_PLAYER: Final = "p0"
#: score deltas sent while the old server's fault is on
FAULT_DELTAS: Final = 5
#: updates per second per simulated player, by default
RATE_PER_PLAYER: Final = 3.0
#: bound on each wait for something the demo expects to happen
WAIT: Final = 30.0
REFRESH: Final = 0.5


def why(code: int, doc: dict[str, Any]) -> str:
    """What a switchover command's document says went wrong: its message or error, else
    its switch's message and each proxy's outcome (a flip's or a rollback's report)."""
    said = doc.get("message") or doc.get("error")
    switch = doc.get("switch")
    switch = switch if isinstance(switch, dict) else {}
    proxies = switch.get("proxies")
    outcomes = [
        f"{p.get('url')}: {p.get('state')}" + (f" ({p.get('error')})" if p.get("error") else "")
        for p in (proxies if isinstance(proxies, list) else [])
        if isinstance(p, dict)
    ]
    parts = [str(x) for x in (said, switch.get("message"), *outcomes) if x]
    return f"exit {code}: " + ("; ".join(parts) or "no message")


@dataclass
class Options:
    """What `stateshift demo` was asked for."""

    duration: float = 45.0
    players: int = 4
    games: int = 5
    rate: float | None = None
    fault: bool = True

    @property
    def updates_per_s(self) -> float:
        """Total updates per second asked of the load generator."""
        if self.rate is not None:
            return self.rate
        return RATE_PER_PLAYER * self.players * self.games


class Demo:
    """One run of the scenario against a started `Stack`."""

    def __init__(self, stack: Stack, options: Options, console: Console) -> None:
        self.stack = stack
        self.options = options
        self.console = console
        self.steps: list[Step] = []
        self.phase = "starting"
        self.token = stack.admin_token()
        self.load = LoadGen(
            stack.proxy.url,
            stack.secret,
            options.games,
            options.players,
            options.updates_per_s,
            options.duration + 3600,  # the scenario says when to stop
            game_prefix="demo",
            invalid_ratio=0.01,
            # Players leave and come back now and then (DISCONNECT, then a new connection):
            # clients the proxy must carry without a shadow loss or a false mismatch.
            reconnect_every=20.0,
            seed=2026,
        )
        self.fault_acked = 0
        self.flip_pause_ms: float | None = None
        self.flipped_at = (0.0, 0)
        self._last = (time.monotonic(), 0)
        self._rate = 0.0

    # ------------------------------------------------------------------ helpers

    def log(self, text: str, style: str = "") -> None:
        """One line of the demo's story, above the live view."""
        stamp = f"[dim]{self.load.elapsed:5.1f}s[/] "
        self.console.print(stamp + (f"[{style}]{text}[/]" if style else text), highlight=False)

    def step(self, name: str, ok: bool, detail: str, note: str = "") -> None:
        """Record a step for the summary."""
        self.steps.append(Step(name, ok, detail, note))
        self.log(f"{'✓' if ok else '✗'} {name}: {detail}", "green" if ok else "bold red")
        if note:
            self.log(f"  note: {note}", "yellow")

    def snapshot(self) -> Snapshot:
        """The figures the live view shows now."""
        stats = self.load.stats
        now = time.monotonic()
        then, acked_then = self._last
        if now - then >= 1.0:
            self._rate = (stats.acked - acked_then) / (now - then)
            self._last = (now, stats.acked)
        board = self.stack.switchboard
        return Snapshot(
            phase=self.phase,
            elapsed=self.load.elapsed,
            duration=self.options.duration,
            route=self.stack.proxy.route.to_dict(),
            proxy=self.stack.control.status(),
            compare=self.stack.comparison.comparator.status(),
            figures=board.figures(10.0),
            connected=stats.connected,
            sent=stats.total_sent,
            acked=stats.acked,
            acks_per_s=self._rate,
            expected_errors=sum(stats.expected_errors.values()),
            unexpected_errors=sum(stats.unexpected_errors.values()),
            unexpected_closes=stats.unexpected_closes,
            reconnects=stats.reconnects,
            recent_latencies=stats.latencies[-2000:],
        )

    async def until(self, fraction: float) -> None:
        """Let traffic flow until this fraction of the duration has elapsed."""
        delay = fraction * self.options.duration - self.load.elapsed
        if delay > 0:
            await asyncio.sleep(delay)

    async def wait_for(self, condition: Callable[[], bool], within: float = WAIT) -> bool:
        """Poll a condition (bounded); whether it came true."""
        deadline = time.monotonic() + within
        while not condition():
            if time.monotonic() > deadline:
                return False
            await asyncio.sleep(0.05)
        return True

    async def switchover(self, *args: str) -> tuple[int, dict[str, Any]]:
        """Run `stateshift switchover ARGS --proxy CONTROL --json`; its exit code and document."""
        shown = " ".join(("stateshift", "switchover", *args, "--proxy", self.stack.control_url))
        self.log(f"$ {shown}", "bold")
        env = {**os.environ, ADMIN_TOKEN_ENV: self.token, "PYTHONUNBUFFERED": "1"}
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "stateshift",
            "switchover",
            *args,
            "--proxy",
            self.stack.control_url,
            "--json",
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            env=env,
        )
        try:
            out, err = await asyncio.wait_for(proc.communicate(), 120)
        except TimeoutError:
            proc.kill()
            await proc.wait()
            return 2, {"error": "the command did not finish within 120 s"}
        code = proc.returncode if proc.returncode is not None else 2
        try:
            doc = json.loads(out) if out.strip() else {}
        except ValueError:
            doc = {}
        if not isinstance(doc, dict):
            doc = {}
        if err.strip() and not doc:
            doc = {"error": err.decode(errors="replace").strip()[-500:]}
        return code, doc

    # ------------------------------------------------------------------ the story

    async def run(self) -> bool:
        """Play the whole scenario; True when every step succeeded."""
        traffic = asyncio.create_task(self.load.run())
        live = Live(self.snapshot_view(), console=self.console, auto_refresh=False, transient=False)
        refresher = asyncio.create_task(self._refresh(live))
        try:
            with live:
                await self._story(traffic)
                live.update(self.snapshot_view(), refresh=True)
        finally:
            refresher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await refresher
            self.load.stop()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(traffic, WAIT)
        return all(step.ok for step in self.steps)

    def snapshot_view(self) -> Any:
        """The live view now."""
        return live_view(self.snapshot(), self.console.width)

    async def _refresh(self, live: Live) -> None:
        while True:
            await asyncio.sleep(REFRESH)
            live.update(self.snapshot_view(), refresh=True)

    async def _story(self, traffic: asyncio.Task[Any]) -> None:
        options = self.options
        players = options.games * options.players
        self.phase = "mirroring: old primary, new shadow"
        self.log(
            f"{players} players in {options.games} games through the proxy "
            f"{self.stack.proxy.url}, {options.updates_per_s:g} updates/s in all; "
            "every frame goes to the old server (primary) and the new one (shadow)"
        )
        ok = await self.wait_for(lambda: self.load.stats.connected >= players, WAIT)
        if not ok:
            self.step("players connected", False, f"{self.load.stats.connected}/{players}")
        await self.until(0.2)
        if options.fault:
            self.phase = "injecting a divergence"
            await self._divergence()
        self.phase = "mirroring: gathering evidence"
        await self.until(0.45)
        self.phase = "switchover: check and flip"
        flipped = await self._check_and_flip()
        self.phase = "new primary, old shadow" if flipped else "old primary (flip failed)"
        self.flipped_at = (self.load.elapsed, self.load.stats.acked)
        # traffic on the new primary for a while, however long the check took
        await self.until(max(0.75, self.load.elapsed / options.duration + 0.15))
        if flipped:
            self.phase = "switchover: rollback"
            await self._rollback()
            self.phase = "old primary again"
        await self.until(max(1.0, self.load.elapsed / options.duration + 0.1))
        self.phase = "players quiet (still connected), verifying"
        await self._verify()
        self.phase = "players leaving"
        self.load.stop()
        await asyncio.wait_for(traffic, WAIT)
        stats = self.load.stats
        self.step(
            "clients stayed connected",
            stats.unexpected_closes == 0,
            f"{stats.unexpected_closes} disconnections of "
            f"{self.options.games * self.options.players} players across the flip and the "
            "rollback; each left with DISCONNECT at the end",
        )
        self.step(
            "every broadcast delivered",
            stats.missed_broadcasts == 0,
            f"{stats.missed_broadcasts} versions skipped in the STATE broadcasts the players "
            "got, across the flip and the rollback",
        )
        self.phase = "done"

    async def _divergence(self) -> None:
        """Hold deltas elsewhere, fault on, a few deltas on one game, fault off; then watch
        the comparator find, explain and resync it."""
        stack, load = self.stack, self.load
        comparator = stack.comparison.comparator
        self.log("holding score deltas on the simulated games, waiting for those in flight", "cyan")
        load.hold_deltas(True)
        try:
            await load.deltas_answered(WAIT)
            stack.old.set_score_delta_fault(True)
            self.log(
                "old server: fault score-delta-off-by-one ON; "
                f"{FAULT_DELTAS} score deltas of +1 on game {FAULT_GAME}",
                "bold red",
            )
            try:
                self.fault_acked = await self._fault_burst()
            finally:
                stack.old.set_score_delta_fault(False)
        finally:
            load.hold_deltas(False)
        self.log("old server: fault OFF; score deltas resume", "cyan")

        found = await self.wait_for(lambda: comparator.store.count() > 0)
        games = sorted({str(f.get("game_id")) for f in comparator.store.latest(100)})
        self.step(
            "divergence found",
            found and games == [FAULT_GAME],
            f"{comparator.store.count()} finding(s), on game(s) {', '.join(games) or 'none'}",
        )
        explained = await self._explain()
        self.step(
            "divergence explained",
            explained,
            "the diff names root['state']['scores'][*]"
            if explained
            else "no finding with the scores path",
        )
        resynced = await self.wait_for(
            lambda: comparator.resyncs >= 1 and FAULT_GAME not in comparator.diverged
        )
        self.step(
            "divergence resynced",
            resynced,
            f"{comparator.resyncs} resync(s): the new server's copy of {FAULT_GAME} "
            "replaced from the primary (IMPORT_STATE); diverged games now: "
            f"{', '.join(sorted(comparator.diverged)) or 'none'}",
        )

    async def _fault_burst(self) -> int:
        """One player of the fault game sends score deltas through the proxy; ACKs counted."""
        url = f"{self.stack.proxy.url}/v1/games/{FAULT_GAME}"
        token = mint_token(self.stack.secret, FAULT_PLAYER, "player", [FAULT_GAME])
        acked = 0
        async with asyncio.timeout(WAIT), connect(url, proxy=None, compression=None) as ws:

            async def ask(msg: dict[str, Any]) -> dict[str, Any]:
                await ws.send(orjson.dumps(msg).decode())
                while True:
                    frame = orjson.loads(await ws.recv())
                    if isinstance(frame, dict) and frame.get("re") == msg["id"]:
                        return frame

            await ask({"type": "CONNECT", "id": "c", "token": token})
            for n in range(FAULT_DELTAS):
                updates = {"score_deltas": {FAULT_PLAYER: 1}}
                answer = await ask({"type": "STATE_UPDATE", "id": f"u{n}", "updates": updates})
                acked += answer.get("type") == "ACK"
            seen = await ask({"type": "GET_STATE", "id": "s"})
            # leaves by closing its socket, as a closed browser tab does (a DISCONNECT would
            # count as a shadow loss in the proxy today: see the note in Demo.__init__)
        score = (seen.get("state") or {}).get("scores", {}).get(FAULT_PLAYER)
        self.log(
            f"the client sees score {score} after {FAULT_DELTAS} deltas of +1 (the old server "
            "is primary: its answers are what clients get)",
            "red",
        )
        return acked

    async def _explain(self) -> bool:
        """`compare show` and `compare explain` of the first finding, via the control plane."""
        try:
            async with ControlClient(self.stack.control_url, self.token) as control:
                findings = (await control.request("FINDINGS", limit=5))["findings"]
                self.console.print(
                    f"[bold]$ stateshift compare show --proxy {self.stack.control_url}[/]",
                    highlight=False,
                )
                render_findings(findings, self.console)
                first = next((f for f in findings if f.get("game_id") == FAULT_GAME), None)
                if first is None:
                    return False
                self.console.print(
                    f"[bold]$ stateshift compare explain {first['id']} "
                    f"--proxy {self.stack.control_url}[/]",
                    highlight=False,
                )
                finding = (await control.request("FINDING", finding_id=first["id"]))["finding"]
                render_finding(finding, self.console)
        except ControlError as exc:
            self.log(f"control plane: {exc}", "bold red")
            return False
        return any("scores" in str(p) for p in finding.get("paths") or [])

    def _gates_line(self, doc: dict[str, Any]) -> str:
        gates = doc.get("gates") or (doc.get("readiness") or {}).get("gates") or []
        return "; ".join(f"{g.get('name')} {g.get('result')} ({g.get('detail')})" for g in gates)

    async def _check_and_flip(self) -> bool:
        """`switchover check` until it passes (more traffic helps); then `flip`."""
        deadline = self.load.elapsed + max(8.0, 0.15 * self.options.duration)
        while True:
            code, doc = await self.switchover("check")
            result = doc.get("result", "error")
            self.log(
                f"check: {result}: {self._gates_line(doc)}", "green" if code == 0 else "yellow"
            )
            if result == "pass" or self.load.elapsed >= deadline:
                break
            # more traffic is more evidence: too few comparisons, or one finding among too
            # few comparisons for the mismatch ratio, both improve by waiting
            self.log("not ready yet: letting traffic run, then checking again")
            await asyncio.sleep(2.0)
        note = ""
        args = ["flip", "--reason", "stateshift demo"]
        if result == "pass":
            self.step("check", True, "every readiness gate passes")
        else:
            failing = [g.get("name") for g in doc.get("gates") or [] if g.get("result") != "pass"]
            note = (
                f"the check was {result} ({', '.join(map(str, failing)) or doc.get('error')}); "
                "the demo flips with --force (recorded in the history) to show the mechanics"
            )
            self.step("check", True, f"{result}: flipping with --force", note)
            args.append("--force")
        code, doc = await self.switchover(*args)
        route = self.stack.proxy.route
        proxies = (doc.get("switch") or {}).get("proxies") or []
        self.flip_pause_ms = proxies[0].get("paused_ms") if proxies else None
        paused = (
            "" if self.flip_pause_ms is None else f", clients paused {self.flip_pause_ms:.1f} ms"
        )
        ok = code == 0 and route.primary == "new"
        self.step(
            "flip under load",
            ok,
            f"primary is now {route.primary}{paused}; "
            f"{self.load.stats.unexpected_closes} disconnections so far"
            + ("" if ok else f" ({why(code, doc)})"),
        )
        return ok

    async def _rollback(self) -> None:
        since, acked = self.flipped_at
        on_new = self.load.stats.acked - acked
        code, doc = await self.switchover("rollback", "--reason", "stateshift demo")
        route = self.stack.proxy.route
        ok = code == 0 and route.primary == "old"
        proxies = (doc.get("switch") or {}).get("proxies") or []
        pause = proxies[0].get("paused_ms") if proxies else None
        paused = "" if pause is None else f", clients paused {pause:.1f} ms"
        self.step(
            "rollback under load",
            ok,
            f"primary is old again{paused}; {on_new} updates acked in the "
            f"{self.load.elapsed - since:.1f} s the new server was primary; "
            f"{self.load.stats.unexpected_closes} disconnections so far"
            + ("" if ok else f" ({why(code, doc)})"),
        )

    async def _verify(self) -> None:
        """The measured verdict, with every player connected and quiet: every answer in, the
        shadow caught up, then both servers read game by game."""
        stack, stats = self.stack, self.load.stats
        comparator = stack.comparison.comparator
        self.load.pause(True)
        with contextlib.suppress(TimeoutError):  # what is still pending counts as unanswered
            await self.load.all_answered(WAIT)
        idle = await self.wait_for(
            lambda: (
                stack.proxy.order.idle()
                and not comparator.diverged
                and not comparator.not_comparable
            )
        )
        waiting = sum(len(p.pending) for p in self.load.players)
        self.step(
            "no request lost or refused",
            stats.unanswered == waiting == 0 and not stats.unexpected_errors,
            f"{stats.acked} updates acked, {stats.unanswered + waiting} unanswered, "
            "unexpected errors: "
            f"{dict(stats.unexpected_errors) or 'none'}",
        )
        invalid = sum(stats.invalid_sent.values())
        self.step(
            "invalid messages answered as documented",
            not stats.invalid_wrong and sum(stats.expected_errors.values()) == invalid,
            f"{invalid} sent: {dict(stats.expected_errors) or 'none'}",
        )
        expected = {g: c.versions for g, c in stats.games.items()}
        if self.options.fault:
            expected[FAULT_GAME] = 1 + self.fault_acked  # creation with its join, then deltas
        wrong: list[str] = []
        async with (
            AdminClient(stack.old.url, self.token) as old,
            AdminClient(stack.new.url, self.token) as new,
        ):
            for game_id, want in sorted(expected.items()):
                states = await asyncio.gather(old.get_state(game_id), new.get_state(game_id))
                versions = [s.get("version") if s else None for s in states]
                if versions != [want, want]:
                    wrong.append(f"{game_id}: old {versions[0]}, new {versions[1]}, want {want}")
        self.step(
            "no update lost",
            not wrong and idle,
            "every game's version on both servers = the joins and updates acknowledged"
            if not wrong
            else "; ".join(wrong),
        )
        sweep = await stack.comparison.sweep_now()
        self.step(
            "both servers equal at the end",
            sweep.get("findings") == 0
            and sweep.get("skipped") == 0
            and sweep.get("matched") == len(expected),
            f"snapshot sweep: {sweep.get('matched')} of {len(expected)} games equal, "
            f"{sweep.get('findings')} findings, {sweep.get('skipped')} skipped",
        )

    def summary(self) -> Any:
        """The final summary renderable."""
        stats = self.load.stats
        compare = self.stack.comparison.comparator.status()
        counts = compare.get("comparisons") or {}
        judged = sum(
            v.get(r, 0) for v in counts.values() for r in ("match", "mismatch", "unpaired")
        )
        report = self.load.report()
        latency = report.latency_ms()
        figures = {
            "players": f"{self.options.games} games x {self.options.players} players",
            "updates acked": f"{stats.acked} in {report.duration:.1f} s",
            "ACK latency": f"p50 {latency['p50']} ms, p95 {latency['p95']} ms, "
            f"p99 {latency['p99']} ms",
            "comparisons": f"{judged}, mismatch ratio "
            + (
                "-" if compare.get("mismatch_ratio") is None else f"{compare['mismatch_ratio']:.4%}"
            ),
            "findings / resyncs": f"{compare.get('findings')} / {compare.get('resyncs')}",
            "disconnections": str(stats.unexpected_closes),
        }
        return summary_view(self.steps, figures)
