"""`stateshift switchover`: the migration engineer's controls over the proxies' control planes.

Each command talks to every `--proxy` (the admin address of each proxy) with the admin token
from `STATESHIFT_ADMIN_TOKEN`; output is rich text for people, `--json` for scripts. The
readiness decision is `switchover.gates`; the fleet's two-phase route changes are
`switchover.manager`. This module only parses flags, runs them and draws the result.
"""

from __future__ import annotations

import asyncio
import json
import math
from collections.abc import Callable, Coroutine, Mapping
from pathlib import Path
from typing import Annotated, Any, Final

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from stateshift.control import ADMIN_TOKEN_ENV, MAX_HOLD, ControlError, ws_url_problem
from stateshift.options import positive_seconds
from switchover.gates import Gate, Thresholds, ThresholdsError, evaluate, verdict
from switchover.manager import (
    DEFAULT_HOLD,
    Fleet,
    Superseded,
    SwitchReport,
    failure_label,
    same_route,
    target,
    unanswered,
)

OK: Final = 0
#: not ready (a gate fails), or the operation failed and was rolled back / aborted
FAILED: Final = 1
#: usage error, or a proxy could not be reached, refused the token or answered outside the
#: protocol, before anything changed
USAGE: Final = 2
#: not enough evidence to decide (a gate is inconclusive, none fails)
INCONCLUSIVE: Final = 3
#: an automatic rollback refused is tried again this many times, `--check-every` apart
ROLLBACK_RETRIES: Final = 2

EXIT_CODES = (
    "Exit codes: 0 ok / ready; 1 not ready, or failed (aborted or rolled back); "
    "2 usage or connection error (nothing changed); 3 inconclusive (too little evidence)."
)

ProxyOpt = Annotated[
    list[str],
    typer.Option(
        "--proxy",
        help="Admin address of a proxy, ws://HOST:PORT (repeat for a fleet).",
        show_default=False,
    ),
]
TokenOpt = Annotated[
    str,
    typer.Option(envvar=ADMIN_TOKEN_ENV, show_default=False, help="Admin token (use the env var)."),
]
JsonOpt = Annotated[bool, typer.Option("--json", help="Machine-readable output on stdout.")]
TimeoutOpt = Annotated[
    float,
    typer.Option(
        callback=positive_seconds,
        help="Seconds to wait for each proxy's answer (a prepare can be slow).",
    ),
]
ReasonOpt = Annotated[str, typer.Option(help="Why (kept in every proxy's history).")]


def hold_seconds(value: float) -> float:
    """`--hold`: what a proxy accepts, checked before any proxy is asked (`nan` reached the
    proxies, which refused it as a bad message: exit 2 with a connection error's wording)."""
    positive_seconds(value)
    if value > MAX_HOLD:
        raise typer.BadParameter(f"must be at most {MAX_HOLD:g} seconds")
    return value


HoldOpt = Annotated[
    float,
    typer.Option(
        callback=hold_seconds,
        help=f"Seconds a prepared proxy waits for the commit (at most {MAX_HOLD:g}).",
    ),
]
ConfigOpt = Annotated[
    Path | None, typer.Option(help="TOML file with a \\[readiness] table (the flags win).")
]
#: the readiness thresholds of check, flip and ramp (each overrides the config file's);
#: their help says the default (typer would show None, the "not given" marker)
_BARS = Thresholds()
WindowOpt = Annotated[
    float | None, typer.Option(help=f"Seconds of history judged (default {_BARS.window:g}).")
]
MinComparisonsOpt = Annotated[
    int | None,
    typer.Option(
        help="Fewest comparisons in the window for a verdict; fewer is inconclusive "
        f"(default {_BARS.min_comparisons})."
    ),
]
MaxMismatchRatioOpt = Annotated[
    float | None,
    typer.Option(
        help=f"Highest share of comparisons that mismatch (default {_BARS.max_mismatch_ratio:g})."
    ),
]
MaxDivergedOpt = Annotated[
    int | None, typer.Option(help=f"Most games diverged (default {_BARS.max_diverged}).")
]
MaxShadowDropsOpt = Annotated[
    int | None,
    typer.Option(help=f"Most shadow drops in the window (default {_BARS.max_shadow_drops})."),
]
MaxLatencyRatioOpt = Annotated[
    float | None,
    typer.Option(
        help="Highest ratio of the shadow's p99 answer latency to the primary's; while "
        "watching a switch, of the new server's to the old one's "
        f"(default {_BARS.max_latency_ratio:g})."
    ),
]
AutoRollbackOpt = Annotated[
    float | None,
    typer.Option(
        help="Watch the gates for this many seconds after the switch, on what happened "
        "since it; switch back on a failing gate (inconclusive is not a breach): the "
        "mismatch ratio, diverged games, clients refused or lost by the new server, and "
        "its p99 as a primary against the old one's; not the shadow's health (after a "
        "flip, the old server's: no reason to go back to it). Exit 3 when no round could "
        "read the figures (not watched)."
    ),
]
CheckEveryOpt = Annotated[float, typer.Option(help="Seconds between checks while watching.")]


class Usage(Exception):
    """A usage error (exit 2) found before anything was sent."""


def _fmt(value: Any) -> str:
    if value is None:
        return "—"
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def _fmt_gate(gate: Gate, value: float | int | None) -> str:
    if gate.name == "shadow_latency" and isinstance(value, float):
        return f"{value * 1000:.1f} ms"
    return _fmt(value)


RESULT_STYLE: Final = {"pass": "green", "fail": "bold red", "inconclusive": "yellow"}


class Output:
    """Where a command writes: people get rich text, scripts get one JSON document."""

    def __init__(self, console: Console, err: Console, as_json: bool) -> None:
        self.console = console
        self.err = err
        self.as_json = as_json

    def json(self, doc: dict[str, Any]) -> None:
        self.console.file.write(json.dumps(doc, indent=2, default=str) + "\n")
        self.console.file.flush()

    def error(self, message: str, code: int, **doc: Any) -> typer.Exit:
        if self.as_json:
            self.json({"ok": False, "error": message, **doc})
        self.err.print(f"[bold red]error:[/] {escape(message)}", highlight=False)
        return typer.Exit(code=code)

    def gates(self, gates: list[Gate], title: str) -> None:
        table = Table(title=title, title_justify="left")
        for column in ("gate", "figure", "threshold", "result", "detail"):
            table.add_column(column, overflow="fold")
        for g in gates:
            table.add_row(
                g.name,
                _fmt_gate(g, g.figure),
                _fmt_gate(g, g.threshold),
                f"[{RESULT_STYLE[g.result]}]{g.result}[/]",
                g.detail,
            )
        self.console.print(table)

    def switch(self, report: SwitchReport, title: str) -> None:
        table = Table(title=title, title_justify="left")
        for column in ("proxy", "outcome", "route", "paused", "detail"):
            table.add_column(column, overflow="fold")
        for p in report.proxies:
            style = (
                "green" if p.state == "committed" else "yellow" if p.state == "aborted" else "red"
            )
            table.add_row(
                p.url,
                f"[{style}]{p.state}[/]",
                _route_text(p.route),
                "—" if p.paused_ms is None else f"{p.paused_ms:.1f} ms",
                p.error
                or (
                    f"{p.games_unverified} games moved off an unreachable server, not compared"
                    if p.games_unverified
                    else ""
                ),
            )
        self.console.print(table)
        style = "green" if report.ok else "bold red"
        self.console.print(f"[{style}]{report.message}[/]", highlight=False)


def _route_text(route: dict[str, Any] | None) -> str:
    if route is None:
        return "—"
    text = f"primary {route.get('primary')}"
    if route.get("ramp") is not None:
        text += f", ramp {_fmt(route['ramp'])}% new"
    text += ", mirroring" if route.get("mirroring") else ", not mirroring"
    return text


def _code(result: str) -> int:
    return {"pass": OK, "fail": FAILED, "inconclusive": INCONCLUSIVE}[result]


def thresholds_from(config: Path | None, **flags: float | int | None) -> Thresholds:
    """Defaults, then the TOML file's `[readiness]`, then the flags."""
    base = Thresholds.load(config) if config is not None else Thresholds()
    return base.override(**flags)


def disagreement(routes: Mapping[str, Mapping[str, Any] | None]) -> str | None:
    """What is wrong when the proxies listed are not all on one route (a switch that reached
    some of them only, or a proxy left out of one): None when they agree."""
    known = [(url, r) for url, r in routes.items() if r is not None]
    if all(same_route(r, known[0][1]) for _, r in known[1:]):
        return None
    each = "; ".join(f"{url}: {_route_text(dict(r))}" for url, r in known)
    return f"the proxies are not on one route ({each}): switch them all to one"


async def _readiness(fleet: Fleet, thresholds: Thresholds) -> tuple[list[Gate], dict[str, Any]]:
    per_proxy, figures = await fleet.figures(thresholds.window)
    gates = evaluate(figures, thresholds)
    doc: dict[str, Any] = {
        "result": verdict(gates),
        "gates": [g.to_dict() for g in gates],
        "figures": figures,
        "per_proxy": per_proxy,
        "thresholds": thresholds.to_dict(),
    }
    routes = await fleet.routes()
    doc["routes"] = routes
    problem = disagreement(routes)
    if problem is not None:
        doc["warning"] = problem
    return gates, doc


def make_app(console: Console | None = None, err_console: Console | None = None) -> typer.Typer:
    """The `switchover` typer app writing to `console` (default: stdout) and `err_console`."""
    app = typer.Typer(
        help="Readiness checks, flip, rollback, ramp and finalize across the proxies. "
        + EXIT_CODES,
        no_args_is_help=True,
    )

    def run(
        as_json: bool,
        token: str,
        proxies: list[str],
        body: Callable[[Output], Coroutine[Any, Any, int]],
    ) -> None:
        out = Output(console or Console(), err_console or Console(stderr=True), as_json)
        if not proxies:
            raise out.error("give at least one --proxy ws://HOST:PORT", USAGE)
        if not token:
            raise out.error(f"{ADMIN_TOKEN_ENV} is not set (an admin token for the proxies)", USAGE)
        for url in proxies:
            problem = ws_url_problem(url)
            if problem is not None:
                raise out.error(f"--proxy is not a valid ws:// URL: {problem} ({url!r})", USAGE)
        try:
            code = asyncio.run(body(out))
        except Usage as exc:
            raise out.error(str(exc), USAGE) from exc
        except ControlError as exc:
            # Only reads raise (a switch reports each proxy's failure in its report): an
            # unreachable proxy, a token refused, an answer that is not the protocol changed
            # nothing (2); an ERROR answer otherwise is a failure (1).
            raise out.error(str(exc), USAGE if unanswered(exc) else FAILED) from exc
        raise typer.Exit(code=code)

    # ------------------------------------------------------------------ status

    @app.command()
    def status(
        proxy: ProxyOpt = [],  # noqa: B006  # typer reads the default; never mutated
        token: TokenOpt = "",
        as_json: JsonOpt = False,
        events: Annotated[int, typer.Option(help="Last events shown per proxy.")] = 5,
        timeout: TimeoutOpt = 10.0,
    ) -> None:
        """Route, mirroring, connections, comparison figures, diverged games, last events.

        Exit 0, or 2 when a proxy cannot be reached, refuses the token or answers outside
        the protocol.
        """

        async def body(out: Output) -> int:
            docs: dict[str, Any] = {}
            async with Fleet(proxy, token, timeout=timeout) as fleet:
                statuses = await fleet.each("STATUS")
                compares = await fleet.each("COMPARE_STATUS")
                histories = await fleet.each("HISTORY", limit=max(1, min(events, 1000)))
                for url in fleet.urls:
                    if url in fleet.unreachable:
                        exc = fleet.unreachable[url]
                        docs[url] = {"error": str(exc), "failure": failure_label(exc)}
                        continue
                    st, cmp, hist = statuses[url], compares[url], histories[url]
                    docs[url] = {
                        "status": None if isinstance(st, ControlError) else st["status"],
                        "compare": None if isinstance(cmp, ControlError) else cmp["compare"],
                        "events": [] if isinstance(hist, ControlError) else hist["events"],
                    }
                    # a comparator or a history answering nonsense is not "not available"
                    bad = [a for a in (cmp, hist) if isinstance(a, ControlError)]
                    bad = [a for a in bad if a.code == "BAD_ANSWER"]
                    failed = st if isinstance(st, ControlError) else (bad[0] if bad else None)
                    if failed is not None:
                        docs[url].update(error=str(failed), failure=failure_label(failed))
            routes = {
                url: (doc.get("status") or {}).get("route") if isinstance(doc, dict) else None
                for url, doc in docs.items()
            }
            problem = disagreement(routes)
            if out.as_json:
                out.json({"proxies": docs, **({"warning": problem} if problem else {})})
            else:
                for url, doc in docs.items():
                    _render_status(out.console, url, doc)
                if problem is not None:
                    out.console.print(f"[bold red]warning:[/] {escape(problem)}", highlight=False)
            return USAGE if any("error" in d for d in docs.values()) else OK

        run(as_json, token, proxy, body)

    # ------------------------------------------------------------------ check

    @app.command()
    def check(
        proxy: ProxyOpt = [],  # noqa: B006
        token: TokenOpt = "",
        as_json: JsonOpt = False,
        window: WindowOpt = None,
        config: ConfigOpt = None,
        min_comparisons: MinComparisonsOpt = None,
        max_mismatch_ratio: MaxMismatchRatioOpt = None,
        max_diverged: MaxDivergedOpt = None,
        max_shadow_drops: MaxShadowDropsOpt = None,
        max_latency_ratio: MaxLatencyRatioOpt = None,
        timeout: TimeoutOpt = 30.0,
    ) -> None:
        """Each readiness gate with its figure, threshold and result; recorded in the history.

        Exit 0 when every gate passes, 1 when one fails, 3 when none fails but one is
        inconclusive (too little traffic is never a pass), 2 on a usage or connection error.
        """
        thresholds = _thresholds(
            config,
            window=window,
            min_comparisons=min_comparisons,
            max_mismatch_ratio=max_mismatch_ratio,
            max_diverged=max_diverged,
            max_shadow_drops=max_shadow_drops,
            max_latency_ratio=max_latency_ratio,
        )

        async def body(out: Output) -> int:
            async with Fleet(proxy, token, timeout=timeout) as fleet:
                fleet.require_all()
                gates, doc = await _readiness(fleet, thresholds)
                await fleet.record("check", doc["result"], doc)
            _show_readiness(out, gates, doc)
            return _code(doc["result"])

        run(as_json, token, proxy, body)

    # ------------------------------------------------------------------ flip

    @app.command()
    def flip(
        proxy: ProxyOpt = [],  # noqa: B006
        token: TokenOpt = "",
        as_json: JsonOpt = False,
        force: Annotated[
            bool, typer.Option(help="Flip even when the check does not pass (recorded).")
        ] = False,
        reason: ReasonOpt = "",
        auto_rollback: AutoRollbackOpt = None,
        check_every: CheckEveryOpt = 5.0,
        window: WindowOpt = None,
        config: ConfigOpt = None,
        min_comparisons: MinComparisonsOpt = None,
        max_mismatch_ratio: MaxMismatchRatioOpt = None,
        max_diverged: MaxDivergedOpt = None,
        max_shadow_drops: MaxShadowDropsOpt = None,
        max_latency_ratio: MaxLatencyRatioOpt = None,
        hold: HoldOpt = DEFAULT_HOLD,
        timeout: TimeoutOpt = 30.0,
    ) -> None:
        """Make the new server primary on every proxy, without closing a client.

        Refuses unless the readiness check passes (--force overrides, and is recorded).
        Prepares every proxy, then commits every proxy; if any cannot prepare (or is down),
        aborts on all that did: never a fleet with mixed routes.

        Exit 0 flipped (and, with --auto-rollback, no breach); 1 refused because a gate fails,
        or failed and aborted, or rolled back after a breach; 3 refused as inconclusive;
        2 usage or connection error (nothing changed).
        """
        _check_watch(auto_rollback, check_every)
        thresholds = _thresholds(
            config,
            window=window,
            min_comparisons=min_comparisons,
            max_mismatch_ratio=max_mismatch_ratio,
            max_diverged=max_diverged,
            max_shadow_drops=max_shadow_drops,
            max_latency_ratio=max_latency_ratio,
        )

        async def body(out: Output) -> int:
            doc: dict[str, Any] = {"reason": reason, "force": force}
            async with Fleet(proxy, token, timeout=timeout) as fleet:
                wanted = target("new")
                routes = await _reachable_routes(fleet)
                finalized = {**wanted, "mirroring": False}
                if _already(routes, wanted) or _already(routes, finalized):
                    # nothing to do, whatever the gates say (after finalize they judge nothing)
                    doc.update(ok=True, message="already flipped: the new server is primary")
                    return _finish(out, doc, OK)
                gate_code = await _gatekeep(fleet, out, thresholds, force, doc, "flip")
                if gate_code is not None:
                    return gate_code
                before = _lowest_share(routes)
                report = await fleet.switch(
                    wanted, reason=reason or "flip", kind="flip", hold=hold, expect=routes
                )
                _show_switch(out, doc, report, "flip")
                if not report.ok:
                    return _finish(out, doc, _failed(report))
                if auto_rollback is None:
                    return _finish(out, doc, OK)
                return await _watch(
                    fleet,
                    out,
                    thresholds,
                    auto_rollback,
                    check_every,
                    hold,
                    reason,
                    doc,
                    report,
                    back=(before, "rollback"),  # where the fleet was: a ramp's share, or 0
                )

        run(as_json, token, proxy, body)

    # ------------------------------------------------------------------ rollback

    @app.command()
    def rollback(
        proxy: ProxyOpt = [],  # noqa: B006
        token: TokenOpt = "",
        as_json: JsonOpt = False,
        reason: ReasonOpt = "",
        hold: HoldOpt = DEFAULT_HOLD,
        timeout: TimeoutOpt = 30.0,
    ) -> None:
        """Make the old server primary again on every proxy.

        No readiness required: it is the way back. Lossless while mirroring is on; refused
        after finalize.

        Exit 0 rolled back (or already there); 1 failed and aborted (routes unchanged);
        2 usage or connection error.
        """

        async def body(out: Output) -> int:
            doc: dict[str, Any] = {"reason": reason}
            async with Fleet(proxy, token, timeout=timeout) as fleet:
                wanted = target("old")
                routes = await _reachable_routes(fleet)
                if _already(routes, wanted):
                    doc.update(ok=True, message="already rolled back: the old server is primary")
                    return _finish(out, doc, OK)
                finalized = [u for u, r in (routes or {}).items() if not r.get("mirroring")]
                if finalized:
                    doc.update(
                        ok=False,
                        message="mirroring to the old server is off (finalized) on "
                        f"{', '.join(finalized)}: it missed updates, "
                        "a rollback would lose them",
                    )
                    return _finish(out, doc, FAILED)
                report = await fleet.switch(
                    wanted,
                    reason=reason or "rollback",
                    kind="rollback",
                    hold=hold,
                    resync=True,
                    expect=routes,
                )
                _show_switch(out, doc, report, "rollback")
            return _finish(out, doc, OK if report.ok else _failed(report), quiet=True)

        run(as_json, token, proxy, body)

    # ------------------------------------------------------------------ ramp

    @app.command()
    def ramp(
        percent: Annotated[float, typer.Argument(help="Share of games (0-100) on the new server.")],
        proxy: ProxyOpt = [],  # noqa: B006
        token: TokenOpt = "",
        as_json: JsonOpt = False,
        force: Annotated[
            bool, typer.Option(help="Raise the share even when the check does not pass.")
        ] = False,
        reason: ReasonOpt = "",
        window: WindowOpt = None,
        config: ConfigOpt = None,
        min_comparisons: MinComparisonsOpt = None,
        max_mismatch_ratio: MaxMismatchRatioOpt = None,
        max_diverged: MaxDivergedOpt = None,
        max_shadow_drops: MaxShadowDropsOpt = None,
        max_latency_ratio: MaxLatencyRatioOpt = None,
        auto_rollback: AutoRollbackOpt = None,
        check_every: CheckEveryOpt = 5.0,
        hold: HoldOpt = DEFAULT_HOLD,
        timeout: TimeoutOpt = 30.0,
    ) -> None:
        """Gradual switchover: PERCENT of games get the new server as primary.

        Games are chosen by a stable hash of the game id, the same on every proxy, and every
        proxy moves together. Raising the share needs the readiness check
        (like flip); lowering it does not (like rollback). 100 is a flip, 0 a rollback.
        With --auto-rollback, a raised share is watched like a flip and, on a breach, ramped
        back to the share before it.

        Exit codes as for flip.
        """
        if not 0.0 <= percent <= 100.0 or math.isnan(percent):
            raise typer.BadParameter("PERCENT must be from 0 to 100")
        _check_watch(auto_rollback, check_every)
        thresholds = _thresholds(
            config,
            window=window,
            min_comparisons=min_comparisons,
            max_mismatch_ratio=max_mismatch_ratio,
            max_diverged=max_diverged,
            max_shadow_drops=max_shadow_drops,
            max_latency_ratio=max_latency_ratio,
        )

        async def body(out: Output) -> int:
            doc: dict[str, Any] = {"reason": reason, "force": force, "percent": percent}
            async with Fleet(proxy, token, timeout=timeout) as fleet:
                wanted = target("old", percent)
                routes = await _reachable_routes(fleet)
                if _already(routes, wanted):
                    doc.update(ok=True, message=f"already at {percent:g}%")
                    return _finish(out, doc, OK)
                raising = routes is None or any(percent > _share(r) for r in routes.values())
                if raising:
                    gate_code = await _gatekeep(fleet, out, thresholds, force, doc, "ramp")
                    if gate_code is not None:
                        return gate_code
                report = await fleet.switch(
                    wanted,
                    reason=reason or f"ramp {percent:g}%",
                    kind="ramp",
                    hold=hold,
                    resync=not raising,  # lowering the share is a (partial) rollback
                    expect=routes,
                )
                _show_switch(out, doc, report, f"ramp to {percent:g}%")
                if report.ok and raising and auto_rollback is not None:
                    return await _watch(
                        fleet,
                        out,
                        thresholds,
                        auto_rollback,
                        check_every,
                        hold,
                        reason,
                        doc,
                        report,
                        back=(_lowest_share(routes), "ramp"),
                    )
            return _finish(out, doc, OK if report.ok else _failed(report), quiet=True)

        run(as_json, token, proxy, body)

    # ------------------------------------------------------------------ finalize

    @app.command()
    def finalize(
        proxy: ProxyOpt = [],  # noqa: B006
        token: TokenOpt = "",
        as_json: JsonOpt = False,
        yes: Annotated[bool, typer.Option("--yes", help="Do not ask for confirmation.")] = False,
        timeout: TimeoutOpt = 30.0,
    ) -> None:
        """Stop mirroring to the old server after a flip (asks for confirmation).

        After this, rollback is refused. Refused unless the new server is primary for every
        game on every proxy.

        Exit 0 finalized; 1 refused, declined or failed; 2 usage or connection error.
        """

        async def body(out: Output) -> int:
            doc: dict[str, Any] = {}
            async with Fleet(proxy, token, timeout=timeout) as fleet:
                routes = await fleet.routes()
                not_flipped = [
                    u
                    for u, r in routes.items()
                    if r.get("primary") != "new" or r.get("ramp") not in (None, 100.0)
                ]
                if not_flipped:
                    doc.update(
                        ok=False,
                        message="the new server is not primary for every game on "
                        f"{', '.join(not_flipped)}: flip first",
                    )
                    return _finish(out, doc, FAILED)
                if not yes:
                    question = (
                        f"Stop mirroring to the old server on {len(routes)} "
                        f"prox{'y' if len(routes) == 1 else 'ies'}? Rollback will no longer "
                        "be possible"
                    )
                    if not await asyncio.to_thread(typer.confirm, question, default=False):
                        doc.update(ok=False, message="not finalized (declined)")
                        return _finish(out, doc, FAILED)
                answers = await fleet.each("FINALIZE", confirm=True)
                results = {
                    u: {"error": str(a)} if isinstance(a, ControlError) else {"route": a["route"]}
                    for u, a in answers.items()
                }
                failed = [u for u, r in results.items() if "error" in r]
                doc["proxies"] = results
                doc.update(
                    ok=not failed,
                    message=f"finalize failed on {', '.join(failed)}"
                    if failed
                    else "finalized: the old server no longer receives traffic",
                )
            return _finish(out, doc, FAILED if failed else OK)

        run(as_json, token, proxy, body)

    # ------------------------------------------------------------------ history

    @app.command()
    def history(
        proxy: ProxyOpt = [],  # noqa: B006
        token: TokenOpt = "",
        as_json: JsonOpt = False,
        limit: Annotated[int, typer.Option(help="Newest events per proxy (1-1000).")] = 20,
        timeout: TimeoutOpt = 10.0,
    ) -> None:
        """Every check, flip, rollback, ramp, abort and finalize, newest first.

        Who, when, the figures and the result, as kept by each proxy (it survives restarts).
        Exit 0, or 2 on a connection error.
        """
        if not 1 <= limit <= 1000:
            raise typer.BadParameter("--limit must be from 1 to 1000")

        async def body(out: Output) -> int:
            async with Fleet(proxy, token, timeout=timeout) as fleet:
                answers = await fleet.all_ok("HISTORY", limit=limit)
            rows = [{"proxy": url, **event} for url, a in answers.items() for event in a["events"]]
            rows.sort(key=lambda e: (str(e.get("at")), _event_id(e)), reverse=True)
            if out.as_json:
                out.json({"events": rows})
                return OK
            table = Table(title="history", title_justify="left")
            for column in ("at", "proxy", "actor", "kind", "result", "details"):
                table.add_column(column, overflow="fold")
            for e in rows:
                table.add_row(
                    str(e.get("at")),
                    str(e["proxy"]),
                    str(e.get("actor")),
                    str(e.get("kind")),
                    str(e.get("result")),
                    _details_text(e.get("details")),
                )
            out.console.print(table)
            return OK

        run(as_json, token, proxy, body)

    return app


def _thresholds(config: Path | None, **flags: float | int | None) -> Thresholds:
    try:
        return thresholds_from(config, **flags)
    except ThresholdsError as exc:
        raise typer.BadParameter(str(exc)) from exc


async def _reachable_routes(fleet: Fleet) -> dict[str, dict[str, Any]] | None:
    """Every proxy's route; None when a proxy is unreachable (the switch then says so)."""
    return None if fleet.unreachable else await fleet.routes()


def _already(routes: dict[str, dict[str, Any]] | None, wanted: dict[str, Any]) -> bool:
    """Every proxy is reachable and already on the wanted route."""
    return routes is not None and all(same_route(r, wanted) for r in routes.values())


def _show_switch(out: Output, doc: dict[str, Any], report: SwitchReport, title: str) -> None:
    """A switch's report: kept in `doc`, drawn for people."""
    doc["switch"] = report.to_dict()
    if not out.as_json:
        out.switch(report, title)


def _failed(report: SwitchReport) -> int:
    """A failed switch: 2 when proxies were unreachable and nothing was touched, else 1."""
    return USAGE if report.unreachable_only else FAILED


def _lowest_share(routes: dict[str, dict[str, Any]] | None) -> float:
    """The lowest share of games on the new server among the proxies' routes (all alike
    but in a fleet caught between two switches): where a switch goes back to."""
    return min((_share(r) for r in (routes or {}).values()), default=0.0)


def _share(route: dict[str, Any]) -> float:
    """Percent of games whose primary is the new server under a route."""
    if route.get("ramp") is not None:
        return float(route["ramp"])
    return 100.0 if route.get("primary") == "new" else 0.0


def _details_text(details: Any) -> str:
    if not isinstance(details, dict):
        return _fmt(details)
    parts = []
    if isinstance(details.get("gates"), list):
        not_passing = [
            f"{g.get('name')} {g.get('result')}"
            for g in details["gates"]
            if isinstance(g, dict) and g.get("result") != "pass"
        ]
        parts.append("; ".join(not_passing) if not_passing else "every gate passes")
    for key in ("reason", "message", "force", "percent", "failures", "paused_ms"):
        value = details.get(key)
        # `0.0 == False`: a pause of 0 ms (refused before pausing) is shown, not dropped
        if value is not None and value != "" and value is not False:
            parts.append(f"{key}={_fmt(details[key])}")
    if isinstance(details.get("to"), dict):
        parts.append(f"to: {_route_text(details['to'])}")
    if isinstance(details.get("breached"), list):
        parts.append("breached: " + ", ".join(str(g.get("name")) for g in details["breached"]))
    return " ".join(parts)


def _finish(out: Output, doc: dict[str, Any], code: int, *, quiet: bool = False) -> int:
    doc.setdefault("ok", code == OK)
    doc["exit_code"] = code
    if out.as_json:
        out.json(doc)
    elif not quiet and doc.get("message"):
        style = "green" if code == OK else "bold red"
        out.console.print(f"[{style}]{doc['message']}[/]", highlight=False)
    return code


def _show_readiness(out: Output, gates: list[Gate], doc: dict[str, Any]) -> None:
    if out.as_json:
        out.json(doc)
        return
    figures = doc["figures"]
    proxies = figures.get("proxies", 1)
    title = (
        f"readiness over {_fmt(doc['thresholds']['window'])} s "
        f"({proxies} prox{'y' if proxies == 1 else 'ies'})"
    )
    if figures.get("complete") is False:
        # a proxy restarted within the window: nothing from before its start is counted
        title += " (covering less: a proxy started within the window)"
    out.gates(gates, title)
    result = doc["result"]
    word = {"pass": "READY", "fail": "NOT READY", "inconclusive": "INCONCLUSIVE"}[result]
    out.console.print(f"[{RESULT_STYLE[result]}]{word}[/]", highlight=False)
    if figures.get("complete") is False:
        out.console.print(
            "note: a proxy started less than the window ago: its figures (drops, mismatches, "
            "diverged games) from before it started are not in this check",
            highlight=False,
        )
    if doc.get("warning"):
        out.console.print(f"[bold red]warning:[/] {escape(doc['warning'])}", highlight=False)


async def _gatekeep(
    fleet: Fleet,
    out: Output,
    thresholds: Thresholds,
    force: bool,
    doc: dict[str, Any],
    action: str,
) -> int | None:
    """Run the readiness check before a switch; an exit code when the switch is refused."""
    if force:
        try:
            fleet.require_all()
            gates, readiness = await _readiness(fleet, thresholds)
        except ControlError as exc:
            readiness = {"result": "unknown", "error": str(exc)}
        doc["readiness"] = readiness
        await fleet.record(action, "forced", {"reason": doc.get("reason", ""), **readiness})
        if not out.as_json:
            out.console.print(
                f"[yellow]--force: {action} without a passing check "
                f"(check: {readiness['result']}); recorded[/]",
                highlight=False,
            )
        return None
    fleet.require_all()
    gates, readiness = await _readiness(fleet, thresholds)
    doc["readiness"] = readiness
    await fleet.record("check", readiness["result"], {**readiness, "before": action})
    if not out.as_json:
        _show_readiness(out, gates, readiness)
    if readiness["result"] == "pass":
        return None
    doc.update(ok=False, message=f"{action} refused: the check did not pass (--force overrides)")
    return _finish(out, doc, _code(readiness["result"]))


def _check_watch(auto_rollback: float | None, check_every: float) -> None:
    if auto_rollback is not None and not 0 < auto_rollback < math.inf:
        raise typer.BadParameter("--auto-rollback must be a positive number of seconds")
    if not 0 < check_every < math.inf:
        raise typer.BadParameter("--check-every must be positive")


async def _watch(
    fleet: Fleet,
    out: Output,
    thresholds: Thresholds,
    duration: float,
    every: float,
    hold: float,
    reason: str,
    doc: dict[str, Any],
    report: SwitchReport,
    *,
    back: tuple[float, str],
) -> int:
    """After a flip or a raised ramp: watch the gates (`gates.after_flip`); on the first
    failing one, switch every proxy `back` (the share of games on the new server to go back
    to, and the switch's kind: `rollback`, `ramp`)."""
    share, kind = back
    route = target("old", share)
    if kind == "ramp":
        done = f"ramped back to {share:g}%"
    else:
        done = f"rolled back to {share:g}%" if share else "rolled back"
    if not out.as_json:
        out.console.print(f"watching the gates for {duration:g} s (every {every:g} s)")
    left = {o.url: o.route for o in report.proxies if o.route is not None}
    breach = await fleet.watch(thresholds, duration, every, routes=left)
    if isinstance(breach, Superseded):
        now = "; ".join(f"{url}: {_route_text(r)}" for url, r in breach.routes.items())
        doc.update(
            ok=False,
            message=f"the route changed {breach.after:.1f} s after the switch (another "
            f"switch: {now}); the watch stopped, nothing rolled back",
        )
        return _finish(out, doc, FAILED)
    if breach is None and not fleet.judged:
        doc.update(
            ok=False,
            message=f"switched, but NOT WATCHED: no figures could be read in {duration:g} s "
            "(check the proxies now)",
        )
        return _finish(out, doc, INCONCLUSIVE)
    if breach is None:
        doc.update(ok=True, message=f"switched; no breach in {duration:g} s")
        return _finish(out, doc, OK)
    names = ", ".join(g.name for g in breach.gates)
    if not out.as_json:
        out.gates(breach.gates, f"breach {breach.after:.1f} s after the switch")
    if share and any(g.name == "primary_failures" for g in breach.gates):
        # the new server refuses or loses its clients: it keeps no share of them
        share, kind, done = 0.0, "rollback", "rolled back (the new server fails its clients)"
        route = target("old", 0.0)
    report = await fleet.switch(
        route, reason=f"auto-rollback: {names}", kind=kind, hold=hold, resync=True
    )
    for _ in range(ROLLBACK_RETRIES):
        if report.ok or report.unreachable_only:
            break
        # refused (a quiesce or a verification under the failure): the clients carry on
        # as they are; tried again, as on-call would
        await asyncio.sleep(every)
        report = await fleet.switch(
            route, reason=f"auto-rollback (again): {names}", kind=kind, hold=hold, resync=True
        )
    details = {
        "reason": reason,
        "breached": [g.to_dict() for g in breach.gates],
        "figures": breach.figures,
        "per_proxy": breach.per_proxy,
        "after_seconds": breach.after,
        "rollback": report.to_dict(),
    }
    await fleet.record("auto-rollback", "ok" if report.ok else "failed", details)
    doc["auto_rollback"] = details
    if not out.as_json:
        out.switch(report, "auto-rollback")
    doc.update(
        ok=False,
        message=f"breach ({names}): {done}"
        if report.ok
        else f"breach ({names}): ROLLBACK FAILED: {report.message}",
    )
    return _finish(out, doc, FAILED)


def _event_id(event: dict[str, Any]) -> int:
    """An event's id to order events of the same instant (0 when it has none)."""
    value = event.get("id")
    return value if isinstance(value, int) else 0


def _listed(value: Any) -> list[Any]:
    """A list from a proxy's answer (empty when it sent none, or something else)."""
    return value if isinstance(value, list) else []


def _render_status(console: Console, url: str, doc: dict[str, Any]) -> None:
    console.rule(url)
    if doc.get("status") is None:
        label = doc.get("failure", "unreachable")
        console.print(f"[bold red]{label}[/]: {escape(str(doc.get('error')))}", highlight=False)
        return
    st = doc["status"]
    lines = [
        f"route: {_route_text(st.get('route'))}"
        + (" [yellow](paused)[/]" if st.get("paused") else ""),
        f"connections: {st.get('connections')} ({st.get('mirrored_connections')} mirrored, "
        f"shadow connected for {st.get('shadow_connected')}, "
        f"{st.get('shadow_buffered')} frames buffered for the shadow)",
    ]
    cmp = doc.get("compare")
    if cmp is None:
        lines.append("comparison: not available on this proxy")
    else:
        counts = cmp.get("comparisons")
        summary = ", ".join(
            f"{kind} " + " ".join(f"{r}={n}" for r, n in sorted(results.items()))
            for kind, results in sorted(counts.items() if isinstance(counts, dict) else [])
            if isinstance(results, dict)
        )
        lines.append(f"comparisons: {summary or 'none yet'}")
        lines.append(
            f"mismatch ratio {_fmt(cmp.get('mismatch_ratio'))}, findings {cmp.get('findings')}, "
            f"resyncs {cmp.get('resyncs')}, lag {_fmt(cmp.get('lag_seconds'))} s"
        )
        diverged = _listed(cmp.get("diverged"))
        lines.append(
            f"diverged games ({len(diverged)}): {', '.join(map(str, diverged[:20])) or 'none'}"
            + (" …" if len(diverged) > 20 else "")
        )
        not_comparable = _listed(cmp.get("not_comparable"))
        if not_comparable:
            lines.append(f"not comparable: {len(not_comparable)} games")
    if doc.get("error"):
        lines.append(f"[bold red]{doc.get('failure')}[/]: {escape(str(doc['error']))}")
    for line in lines:
        console.print(line, highlight=False)
    events = doc.get("events") or []
    if events:
        table = Table(title="last events", title_justify="left")
        for column in ("at", "actor", "kind", "result", "details"):
            table.add_column(column, overflow="fold")
        for e in events:
            table.add_row(
                str(e.get("at")),
                str(e.get("actor")),
                str(e.get("kind")),
                str(e.get("result")),
                _details_text(e.get("details")),
            )
        console.print(table)


app = make_app()
