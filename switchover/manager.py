"""The SwitchoverManager: one fleet of proxies driven together over their control planes.

A route change is two-phase across the fleet, so that the fleet never ends with mixed routes:
`PREPARE` on every proxy (each pauses its clients, drains in-flight answers and confirms the
games are equal on both servers), then `COMMIT` on every proxy. If any proxy is unreachable or
refuses to prepare, every proxy that did prepare gets `ABORT` (its route unchanged). If a
commit fails after others succeeded (a hold expired), the committed proxies are switched back
to the route they had, the same two-phase way.

The decisions (targets, what counts as done) are small pure functions; the rest moves frames.
"""

from __future__ import annotations

import asyncio
import secrets
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, Final, Self

from stateshift.control import ControlClient, ControlError
from switchover.gates import Gate, Thresholds, after_flip, breached, combine

#: seconds a prepared proxy stays paused waiting for COMMIT before it aborts by itself
DEFAULT_HOLD: Final = 10.0
#: a proxy that could not be asked (no connection, no answer in time)
UNREACHABLE_CODES: Final = frozenset({"UNREACHABLE", "TIMEOUT"})
#: a proxy that would not let us in (a token it does not accept, not an admin's), or a peer
#: answering outside the protocol (another version, not a proxy): it was asked nothing
REFUSED_CODES: Final = frozenset({"UNAUTHENTICATED", "FORBIDDEN", "BAD_ANSWER"})


def unanswered(exc: ControlError) -> bool:
    """Whether an error means the proxy could not be reached, refused us or answered
    nonsense: the request was not carried out as asked (a usage or connection error)."""
    return exc.code in UNREACHABLE_CODES or exc.code in REFUSED_CODES


def failure_label(exc: ControlError) -> str:
    """How a proxy that could not be asked is shown: unreachable, refused, bad answer."""
    if exc.code in UNREACHABLE_CODES:
        return "unreachable"
    return "bad answer" if exc.code == "BAD_ANSWER" else "refused"


def _outcome_state(exc: ControlError) -> str:
    """A ProxyOutcome's state for a proxy that failed before the switch touched it."""
    return "unreachable" if exc.code in UNREACHABLE_CODES else "refused"


def _route_problem(route: Any) -> str | None:
    if not isinstance(route, dict):
        return f"the route is {route!r:.80}, not an object"
    if route.get("primary") not in ("old", "new"):
        return f"the route's primary is {route.get('primary')!r:.40}"
    ramp = route.get("ramp")
    if ramp is not None and (isinstance(ramp, bool) or not isinstance(ramp, int | float)):
        return f"the route's ramp is {ramp!r:.40}"
    if not isinstance(route.get("mirroring"), bool):
        return f"the route's mirroring is {route.get('mirroring')!r:.40}"
    return None


def _field_problem(answer: Mapping[str, Any], key: str, kind: type) -> str | None:
    value = answer.get(key)
    if not isinstance(value, kind):
        return f"`{key}` is {value!r:.80}, not {'an object' if kind is dict else 'a list'}"
    return None


def answer_problem(command: str, answer: Mapping[str, Any]) -> str | None:
    """What is wrong with the shape of a proxy's answer to `command` (the fields this
    module and the CLI read), or None."""
    if command == "STATUS":
        status = answer.get("status")
        if not isinstance(status, dict):
            return _field_problem(answer, "status", dict)
        return _route_problem(status.get("route"))
    if command in ("COMMIT", "ABORT", "FINALIZE"):
        return _route_problem(answer.get("route"))
    if command == "COMPARE_STATUS":
        return _field_problem(answer, "compare", dict)
    if command == "FIGURES":
        problem = _field_problem(answer, "figures", dict)
        if problem is None:
            for listed in ("diverged_games", "not_comparable_games"):
                games = answer["figures"].get(listed)
                if games is not None and not (
                    isinstance(games, list) and all(isinstance(g, str) for g in games)
                ):
                    return f"`figures.{listed}` is not a list of game ids"
        return problem
    if command == "HISTORY":
        problem = _field_problem(answer, "events", list)
        if problem is None and not all(isinstance(e, dict) for e in answer["events"]):
            return "`events` is not a list of objects"
        return problem
    if command == "PREPARE":
        prepared = answer.get("prepared")
        if not isinstance(prepared, dict):
            return _field_problem(answer, "prepared", dict)
        if not isinstance(prepared.get("token"), str):
            return f"`prepared.token` is {prepared.get('token')!r:.40}, not a string"
    return None


def target(primary: str, ramp: float | None = None) -> dict[str, Any]:
    """A PREPARE target; a ramp of 0 or 100 is a plain route (no per-game split)."""
    if ramp is not None and ramp <= 0.0:
        return {"primary": "old", "ramp": None, "mirroring": True}
    if ramp is not None and ramp >= 100.0:
        return {"primary": "new", "ramp": None, "mirroring": True}
    return {"primary": primary, "ramp": ramp, "mirroring": True}


def same_route(route: Mapping[str, Any] | None, wanted: Mapping[str, Any]) -> bool:
    """Whether a proxy's route already is the target."""
    if route is None:
        return False
    return all(route.get(key) == wanted[key] for key in ("primary", "ramp", "mirroring"))


def as_target(route: Mapping[str, Any]) -> dict[str, Any]:
    """A route as a PREPARE target (to go back to it)."""
    return {
        "primary": route.get("primary"),
        "ramp": route.get("ramp"),
        "mirroring": route.get("mirroring"),
    }


@dataclass
class ProxyOutcome:
    """What one proxy did during a route change."""

    url: str
    #: prepared, committed, aborted, failed, unreachable, refused (its token, or an answer
    #: that is not the protocol, before anything was asked), reverted, mixed, unknown
    state: str
    route: dict[str, Any] | None = None
    paused_ms: float | None = None
    games_checked: int | None = None
    #: games moved off a server that could not be reached, not compared
    games_unverified: int | None = None
    error: str | None = None
    reason: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        return {k: v for k, v in self.__dict__.items() if v is not None}


@dataclass
class SwitchReport:
    """The outcome of a fleet-wide route change."""

    ok: bool
    target: dict[str, Any]
    proxies: list[ProxyOutcome] = field(default_factory=list)
    message: str = ""

    @property
    def unreachable_only(self) -> bool:
        """Failed only because proxies were unreachable (or refused us, or answered
        nonsense) before any was prepared: nothing changed."""
        states = {p.state for p in self.proxies}
        return (
            not self.ok
            and bool(states & {"unreachable", "refused"})
            and states <= {"unreachable", "refused", "unchanged"}
        )

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        return {
            "ok": self.ok,
            "target": self.target,
            "message": self.message,
            "proxies": [p.to_dict() for p in self.proxies],
        }


@dataclass
class Breach:
    """Gates that failed while watching after a flip, with the figures that showed it."""

    gates: list[Gate]
    figures: dict[str, Any]
    per_proxy: dict[str, dict[str, Any]]
    after: float


@dataclass
class Superseded:
    """Another switch changed a proxy's route while a flip was watched: the watch stopped
    (it would judge a route nobody is on any more)."""

    #: every proxy's route as read when it was seen
    routes: dict[str, dict[str, Any]]
    after: float


def _failure(exc: ControlError) -> str:
    reason = exc.extra.get("reason")
    return f"{exc.code}: {exc.message}" + (f" ({reason})" if reason else "")


def _millis(value: object) -> float | None:
    """A duration in milliseconds from a proxy's answer (None when it gave none)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value)


def _count(value: object) -> int | None:
    """A count from a proxy's answer (None when it gave none)."""
    return value if isinstance(value, int) and not isinstance(value, bool) else None


class Fleet:
    """Control-plane connections to every proxy (`async with Fleet(urls, token) as fleet`).

    Connections are opened concurrently; an unreachable proxy is kept in `unreachable` rather
    than failing the whole fleet, because a route change must abort on the others.
    """

    def __init__(self, urls: list[str], token: str, *, timeout: float = 10.0) -> None:
        self.urls = list(dict.fromkeys(urls))  # a proxy named twice is still one proxy
        self.token = token
        self.timeout = timeout
        self.clients: dict[str, ControlClient] = {}
        self.unreachable: dict[str, ControlError] = {}
        #: rounds of the last `watch` that could read the figures
        self.judged = 0

    async def __aenter__(self) -> Self:
        async def open_one(url: str) -> None:
            client = ControlClient(url, self.token, timeout=self.timeout)
            try:
                await client.__aenter__()
            except ControlError as exc:
                self.unreachable[url] = exc
            else:
                self.clients[url] = client

        await asyncio.gather(*(open_one(url) for url in self.urls))
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await asyncio.gather(
            *(c.__aexit__(None, None, None) for c in self.clients.values()),
            return_exceptions=True,
        )

    def require_all(self) -> None:
        """Raise the first connection error if any proxy is unreachable."""
        for url, exc in self.unreachable.items():
            raise ControlError(exc.code, exc.message if url in exc.message else f"{url}: {exc}")

    async def request(self, url: str, command: str, **fields: Any) -> dict[str, Any]:
        """One command's answer from one proxy, its shape checked (`answer_problem`): a
        malformed answer is a `ControlError("BAD_ANSWER")`, like any other failure."""
        answer = await self.clients[url].request(command, **fields)
        problem = answer_problem(command, answer)
        if problem is not None:
            raise ControlError("BAD_ANSWER", f"{command} answered in another shape: {problem}")
        return answer

    async def each(
        self,
        command: str,
        urls: list[str] | None = None,
        per_proxy: Mapping[str, Mapping[str, Any]] | None = None,
        **fields: Any,
    ) -> dict[str, dict[str, Any] | ControlError]:
        """Run one command on every (reachable, or listed) proxy concurrently (with the
        fields of `per_proxy[url]` too, when given)."""
        targets = [u for u in (urls if urls is not None else self.urls) if u in self.clients]

        async def one(url: str) -> dict[str, Any] | ControlError:
            own = per_proxy.get(url, {}) if per_proxy is not None else {}
            try:
                return await self.request(url, command, **fields, **own)
            except ControlError as exc:
                return exc

        results = await asyncio.gather(*(one(u) for u in targets))
        return dict(zip(targets, results, strict=True))

    async def all_ok(self, command: str, **fields: Any) -> dict[str, dict[str, Any]]:
        """Run a command on every proxy; raise the first error (connection included)."""
        self.require_all()
        answers = await self.each(command, **fields)
        out: dict[str, dict[str, Any]] = {}
        for url, answer in answers.items():
            if isinstance(answer, ControlError):
                message = answer.message if url in answer.message else f"{url}: {answer.message}"
                raise ControlError(answer.code, message, **answer.extra)
            out[url] = answer
        return out

    async def routes(self) -> dict[str, dict[str, Any]]:
        """Every proxy's current route."""
        answers = await self.all_ok("STATUS")
        return {url: dict(a["status"]["route"]) for url, a in answers.items()}

    async def figures(
        self, window: float, *, since_switch: bool = False
    ) -> tuple[dict[str, dict[str, Any]], dict[str, Any]]:
        """Every proxy's FIGURES over `window` seconds (with `since_switch`: since its last
        switch, when it had one), and the fleet's combination."""
        extra = {"since": "switch"} if since_switch else {}
        answers = await self.all_ok("FIGURES", window=window, **extra)
        per_proxy = {url: dict(a["figures"]) for url, a in answers.items()}
        return per_proxy, combine(per_proxy.values())

    async def record(self, kind: str, result: str, details: dict[str, Any]) -> None:
        """Record an event in every reachable proxy's history (best effort: the history must
        not block the way back)."""
        await self.each("RECORD", kind=kind, result=result, details=details)

    # ------------------------------------------------------------ route changes

    async def switch(
        self,
        wanted: dict[str, Any],
        *,
        reason: str,
        kind: str = "switch",
        hold: float = DEFAULT_HOLD,
        resync: bool = False,
        expect: Mapping[str, Mapping[str, Any]] | None = None,
    ) -> SwitchReport:
        """Move every proxy to the `wanted` route: prepare all, then commit all, or abort all.
        Success is recorded as a `kind` event (flip, rollback, ramp) in every proxy's history.

        With `resync` (the way back), a game that differs is first copied from the current
        primary into the shadow on each proxy, so a divergence cannot block a rollback.

        `expect`: each proxy's route as the caller read it when it decided (before its
        readiness check); a proxy whose route is no longer that refuses (`changed`): another
        switch went through meanwhile. Without it, the route read just before the switch."""
        report = SwitchReport(ok=False, target=wanted)
        outcomes = {url: ProxyOutcome(url, "unreachable") for url in self.urls}
        report.proxies = list(outcomes.values())
        for url, exc in self.unreachable.items():
            outcomes[url].state, outcomes[url].error = _outcome_state(exc), _failure(exc)

        before: dict[str, dict[str, Any]] = {}
        for url, answer in (await self.each("STATUS")).items():
            if isinstance(answer, ControlError):
                outcomes[url].state, outcomes[url].error = _outcome_state(answer), _failure(answer)
            else:
                before[url] = dict(answer["status"]["route"])
                outcomes[url].state, outcomes[url].route = "unchanged", before[url]

        prepared: dict[str, str] = {}
        in_doubt: list[str] = []
        token = secrets.token_hex(8)
        if len(before) == len(self.urls):
            # One token of ours for this switch: an ABORT names it, so it can never cancel
            # another coordinator's prepared switch.
            extra = {"resync": True} if resync else {}
            # each proxy's route as read above: one changed since (another operator's
            # switch) refuses, rather than this switch undoing that one unseen
            expected = {
                url: {"expect": dict(expect[url]) if expect and url in expect else route}
                for url, route in before.items()
            }
            answers = await self.each(
                "PREPARE",
                list(before),
                per_proxy=expected,
                target=wanted,
                hold=hold,
                token=token,
                **extra,
            )
            for url, answer in answers.items():
                outcome = outcomes[url]
                if isinstance(answer, ControlError):
                    outcome.state, outcome.error = "failed", _failure(answer)
                    outcome.reason = answer.extra.get("reason")
                    # how long its refused PREPARE held its clients (0: refused before
                    # pausing them, e.g. a stalled shadow)
                    outcome.paused_ms = _millis(answer.extra.get("paused_ms"))
                    if answer.code in ("TIMEOUT", "BAD_ANSWER"):
                        # unanswered, or answered in a shape we cannot read: it may have
                        # prepared (paused its clients), so it is aborted by our token
                        in_doubt.append(url)
                else:
                    info = answer["prepared"]
                    prepared[url] = str(info["token"])
                    outcome.state = "prepared"
                    outcome.paused_ms = _millis(info.get("paused_ms"))
                    outcome.games_checked = _count(info.get("games_checked"))
                    outcome.games_unverified = _count(info.get("games_unverified")) or None

        if len(prepared) < len(self.urls):
            failed = [
                o for o in outcomes.values() if o.state in ("failed", "unreachable", "refused")
            ]
            why = "; ".join(f"{o.url}: {o.error}" for o in failed)
            await self._abort(prepared, outcomes, f"{reason}: aborted, {why}")
            # a prepare we stopped waiting for may still succeed: abort it by our token, on a
            # connection of its own (a request queued behind that PREPARE on this one is
            # never read once we close)
            await asyncio.gather(
                *(self._abort_apart(u, token, f"{reason}: prepare not confirmed") for u in in_doubt)
            )
            report.message = f"not switched: {why}" + (
                "; aborted on the others, their routes are unchanged" if prepared else ""
            )
            await self.record(
                "abort", "aborted", {"target": wanted, "reason": reason, "failures": why}
            )
            return report

        answers = await self._commit(prepared)
        committed = [u for u, a in answers.items() if not isinstance(a, ControlError)]
        # a COMMIT we stopped waiting for (or whose answer was lost, or cannot be read) may
        # have gone through: its route is unknown, so it is switched back like a committed one
        unknown = [
            u
            for u, a in answers.items()
            if isinstance(a, ControlError) and a.code in ("TIMEOUT", "UNREACHABLE", "BAD_ANSWER")
        ]
        for url, answer in answers.items():
            outcome = outcomes[url]
            if isinstance(answer, ControlError):
                outcome.state, outcome.error = "failed", _failure(answer)
                if url in unknown:
                    outcome.state, outcome.route = "unknown", None
            else:
                outcome.state, outcome.route = "committed", dict(answer["route"])
                # the whole pause, PREPARE to COMMIT (the PREPARE's covers only its part)
                committed_pause = _millis(answer.get("paused_ms"))
                if committed_pause is not None:
                    outcome.paused_ms = committed_pause
        if len(committed) == len(self.urls):
            report.ok = True
            n = len(committed)
            report.message = f"switched {n} prox{'y' if n == 1 else 'ies'}"
            await self.record(
                kind,
                "ok",
                {
                    "reason": reason,
                    "target": wanted,
                    "proxies": [p.to_dict() for p in report.proxies],
                },
            )
            return report

        # a commit failed after others succeeded: put the committed ones back as they were
        why = "; ".join(
            f"{o.url}: {o.error}" for o in outcomes.values() if o.state in ("failed", "unknown")
        )
        for url in committed:
            back = await self._one_switch(url, as_target(before[url]), hold)
            outcomes[url].state = "reverted" if back is None else "mixed"
            outcomes[url].error = back
        for url in unknown:
            # Its commit may still be under way (it waits for a resync) or may have landed:
            # an ABORT by token stops it if it never started; switching it back now could
            # leave a PREPARE nobody commits, pausing its clients for the hold. Said so.
            await self._abort_apart(url, prepared[url], f"{reason}: commit unanswered")
            outcomes[url].error = "COMMIT unanswered: its route is not known"
        mixed = [o.url for o in outcomes.values() if o.state in ("mixed", "unknown")]
        report.message = f"commit failed ({why}); " + (
            f"COULD NOT REVERT {', '.join(mixed)}: the fleet may have mixed routes, check "
            "`stateshift switchover status` and repeat the command"
            if mixed
            else "the committed proxies were switched back"
        )
        await self.record(
            "abort", "reverted", {"target": wanted, "reason": reason, "failures": why}
        )
        return report

    async def _commit(self, prepared: dict[str, str]) -> dict[str, dict[str, Any] | ControlError]:
        async def one(url: str) -> dict[str, Any] | ControlError:
            try:
                return await self.request(url, "COMMIT", token=prepared[url])
            except ControlError as exc:
                return exc

        results = await asyncio.gather(*(one(u) for u in prepared))
        return dict(zip(prepared, results, strict=True))

    async def _abort(
        self, prepared: dict[str, str], outcomes: dict[str, ProxyOutcome], reason: str
    ) -> None:
        async def one(url: str) -> None:
            try:
                answer = await self.request(url, "ABORT", token=prepared[url], reason=reason)
            except ControlError as exc:
                # the proxy auto-aborts when its hold expires: the route stays unchanged
                outcomes[url].state, outcomes[url].error = "aborted", f"ABORT: {_failure(exc)}"
            else:
                outcomes[url].state, outcomes[url].route = "aborted", dict(answer["route"])

        await asyncio.gather(*(one(u) for u in prepared))

    async def _abort_apart(self, url: str, switch_token: str, reason: str) -> None:
        try:
            async with ControlClient(url, self.token, timeout=self.timeout) as client:
                await client.request("ABORT", token=switch_token, reason=reason)
        except ControlError:
            pass  # the proxy's hold expires on its own

    async def _one_switch(self, url: str, wanted: dict[str, Any], hold: float) -> str | None:
        """Switch one proxy (used to revert); None on success, else the error."""
        try:
            answer = await self.request(url, "PREPARE", target=wanted, hold=hold, resync=True)
            await self.request(url, "COMMIT", token=answer["prepared"]["token"])
        except ControlError as exc:
            return _failure(exc)
        return None

    # ------------------------------------------------------------ watching

    async def watch(
        self,
        thresholds: Thresholds,
        duration: float,
        every: float,
        *,
        on_round: Callable[[float, list[Gate]], Awaitable[None] | None] | None = None,
        routes: Mapping[str, Mapping[str, Any]] | None = None,
    ) -> Breach | Superseded | None:
        """Re-check the gates every `every` seconds for `duration` seconds after a flip; the
        first round where a gate fails is a breach. The figures count from the switch on each
        proxy (FIGURES `since: "switch"`), so what happened before it can neither hide a
        regression nor set one off: a game diverged before it counts only if it diverges
        again. The gates are those of `after_flip`: the new server is judged, not the old one
        (the shadow now). `judged` says how many rounds could read the figures (none: the
        switch was not watched).

        `routes`: each proxy's route as the switch left it. A round that finds one changed
        (another operator's switch) ends the watch: `Superseded`, never "no breach"."""
        started = time.monotonic()
        self.judged = 0
        while True:
            await asyncio.sleep(min(every, max(0.0, started + duration - time.monotonic())))
            elapsed = time.monotonic() - started
            try:
                if routes is not None:
                    now = await self.routes()
                    if not all(same_route(now.get(url), r) for url, r in routes.items()):
                        return Superseded(now, elapsed)
                per_proxy, figures = await self.figures(max(1.0, elapsed), since_switch=True)
            except ControlError:
                gates: list[Gate] = []  # a missed round is not a breach; the next one counts
            else:
                self.judged += 1
                gates = after_flip(figures, thresholds)
                failing = breached(gates)
                if failing:
                    return Breach(failing, figures, per_proxy, elapsed)
            if on_round is not None:
                result = on_round(elapsed, gates)
                if result is not None:
                    await result
            if elapsed >= duration:
                return None
