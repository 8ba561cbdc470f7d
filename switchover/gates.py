"""Readiness gates: is the new server ready to become primary? Pure, no I/O.

Readiness is evidence: each gate compares one measured figure (from the proxies' `FIGURES`
over a window) with its threshold and says pass, fail or *inconclusive*. Too little traffic is
never a pass: with fewer comparisons than the minimum the comparisons gate is inconclusive,
and so is every gate whose figure cannot be measured (no comparisons, no latency samples).
`ready` holds only when every gate passes.

Several proxies are one fleet: their counts are summed (diverged games are counted once
however many proxies found them: each proxy sweeps every game), their p99 latencies taken at
the worst, and the window is complete only when it is complete on every proxy.
"""

from __future__ import annotations

import dataclasses
import math
import tomllib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, Final, Literal

Result = Literal["pass", "fail", "inconclusive"]
RESULTS: Final = ("pass", "fail", "inconclusive")

#: the integer counts of a `FIGURES` answer, summed across proxies
COUNTS: Final = (
    "comparisons",
    "mismatches",
    "diverged",
    "not_comparable",
    "mirrored_connections",
    "shadow_connected",
    "shadow_drops",
    "primary_failures_new",
)


#: the p99 answer latencies of a `FIGURES` answer (seconds): by role, then by role and
#: upstream; the fleet's is the worst proxy's
P99_KEYS: Final = (
    "primary_p99",
    "shadow_p99",
    "primary_old_p99",
    "primary_new_p99",
    "shadow_old_p99",
    "shadow_new_p99",
)


class ThresholdsError(ValueError):
    """A readiness configuration that cannot be used (unknown key, wrong type, bad value)."""


@dataclass(frozen=True, slots=True)
class Thresholds:
    """The bars the figures must clear (TOML `[readiness]` table, flags override)."""

    min_comparisons: int = 200
    max_mismatch_ratio: float = 0.001
    max_diverged: int = 0
    max_shadow_drops: int = 0
    max_latency_ratio: float = 2.0
    #: seconds a p99 may exceed `max_latency_ratio` times the other before a latency gate
    #: fails: at a few milliseconds, one bucket of the latency histogram is a factor of 2
    latency_slack: float = 0.010
    #: seconds of history the figures cover
    window: float = 300.0

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise ThresholdsError(f"readiness.{f.name} must be a number, not {value!r}")
            if not math.isfinite(value):
                raise ThresholdsError(f"readiness.{f.name} must be finite, not {value!r}")
            if value < 0:
                raise ThresholdsError(f"readiness.{f.name} must not be negative")
            if f.type == "int" and not float(value).is_integer():
                raise ThresholdsError(f"readiness.{f.name} must be an integer, not {value!r}")
        if self.window <= 0:
            raise ThresholdsError("readiness.window must be positive")

    def override(self, **values: float | int | None) -> Thresholds:
        """These thresholds with the given (non-None) values replaced."""
        changes = {k: v for k, v in values.items() if v is not None}
        unknown = set(changes) - {f.name for f in fields(self)}
        if unknown:
            raise ThresholdsError(f"unknown thresholds: {', '.join(sorted(unknown))}")
        return dataclasses.replace(self, **changes)  # type: ignore[arg-type]  # checked above

    def to_dict(self) -> dict[str, float | int]:
        """JSON-ready form."""
        return dataclasses.asdict(self)

    @classmethod
    def from_mapping(cls, table: Mapping[str, Any]) -> Thresholds:
        """Thresholds from a `[readiness]` table; unknown keys are errors (a typo must not
        silently keep a default)."""
        names = {f.name for f in fields(cls)}
        unknown = set(table) - names
        if unknown:
            raise ThresholdsError(
                f"unknown readiness keys: {', '.join(sorted(unknown))} "
                f"(known: {', '.join(sorted(names))})"
            )
        values = {}
        for f in fields(cls):
            if f.name in table:
                value = table[f.name]
                if f.type == "int" and isinstance(value, float) and value.is_integer():
                    value = int(value)
                values[f.name] = value
        return cls(**values)

    @classmethod
    def load(cls, path: Path) -> Thresholds:
        """Thresholds from the `[readiness]` table of a TOML file (defaults for what is absent)."""
        try:
            data = tomllib.loads(path.read_text())
        except OSError as exc:
            raise ThresholdsError(f"cannot read {path}: {exc.strerror or exc}") from exc
        except tomllib.TOMLDecodeError as exc:
            raise ThresholdsError(f"{path} is not valid TOML: {exc}") from exc
        table = data.get("readiness", {})
        if not isinstance(table, dict):
            raise ThresholdsError(f"{path}: [readiness] must be a table")
        return cls.from_mapping(table)


@dataclass(frozen=True, slots=True)
class Gate:
    """One readiness gate: its measured figure, its threshold and the verdict."""

    name: str
    figure: float | int | None
    threshold: float | int | None
    result: Result
    detail: str

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        return dataclasses.asdict(self)


def _number(figures: Mapping[str, Any], key: str) -> int:
    value = figures.get(key, 0)
    return int(value) if isinstance(value, int | float) and not isinstance(value, bool) else 0


def _p99(figures: Mapping[str, Any], key: str) -> float | None:
    value = figures.get(key)
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value)


def combine(per_proxy: Iterable[Mapping[str, Any]]) -> dict[str, Any]:
    """The fleet's figures: counts summed, p99 at the worst proxy, complete only if all are."""
    parts = list(per_proxy)
    out: dict[str, Any] = {key: sum(_number(p, key) for p in parts) for key in COUNTS}
    for count, listed in (
        ("diverged", "diverged_games"),
        ("not_comparable", "not_comparable_games"),
    ):
        named = [p.get(listed) for p in parts]
        if parts and all(isinstance(games, list) for games in named):
            out[count] = len({game for games in named for game in games})  # type: ignore[union-attr]
    for key in P99_KEYS:
        if key not in ("primary_p99", "shadow_p99") and not all(key in p for p in parts):
            continue  # a proxy does not split them by upstream: `after_flip` falls back
        samples = [v for v in (_p99(p, key) for p in parts) if v is not None]
        out[key] = max(samples) if samples else None
    windows = [p["window"] for p in parts if isinstance(p.get("window"), int | float)]
    out["window"] = min(windows) if windows else None
    out["complete"] = bool(parts) and all(p.get("complete") is True for p in parts)
    out["proxies"] = len(parts)
    return out


def _no_latency(name: str, figure: float | None, whose: str) -> Gate:
    """A latency gate without the samples to judge it: inconclusive."""
    return Gate(
        name, figure, None, "inconclusive", f"no {whose} answer latency samples in the window"
    )


def _at_most(name: str, figure: float | int, limit: float | int, what: str) -> Gate:
    ok = figure <= limit
    return Gate(
        name,
        figure,
        limit,
        "pass" if ok else "fail",
        f"{what} {figure:g} {'≤' if ok else '>'} {limit:g}",
    )


def evaluate(figures: Mapping[str, Any], thresholds: Thresholds) -> list[Gate]:
    """Every readiness gate on (combined) figures, in a fixed order."""
    comparisons = _number(figures, "comparisons")
    mismatches = _number(figures, "mismatches")
    gates: list[Gate] = []

    span = "" if figures.get("complete", True) else " (the proxy is up for less than the window)"
    if comparisons >= thresholds.min_comparisons:
        gates.append(
            Gate(
                "comparisons",
                comparisons,
                thresholds.min_comparisons,
                "pass",
                f"{comparisons} comparisons in the window ≥ {thresholds.min_comparisons}",
            )
        )
    else:
        gates.append(
            Gate(
                "comparisons",
                comparisons,
                thresholds.min_comparisons,
                "inconclusive",
                f"too little traffic: {comparisons} comparisons in the window, "
                f"{thresholds.min_comparisons} needed{span}",
            )
        )

    if comparisons == 0:
        gates.append(
            Gate(
                "mismatch_ratio",
                None,
                thresholds.max_mismatch_ratio,
                "inconclusive",
                "no comparisons: no ratio to measure",
            )
        )
    else:
        ratio = mismatches / comparisons
        ok = ratio <= thresholds.max_mismatch_ratio
        gates.append(
            Gate(
                "mismatch_ratio",
                ratio,
                thresholds.max_mismatch_ratio,
                "pass" if ok else "fail",
                f"{mismatches} mismatched of {comparisons} = {ratio:.4g} "
                f"{'≤' if ok else '>'} {thresholds.max_mismatch_ratio:g}",
            )
        )

    diverged = _number(figures, "diverged")
    gates.append(_at_most("diverged", diverged, thresholds.max_diverged, "diverged games"))

    # a game the proxy could not mirror faithfully has no evidence until it is resynced
    unjudged = _number(figures, "not_comparable")
    gates.append(
        Gate("comparable", unjudged, 0, "pass", "every game comparable")
        if unjudged == 0
        else Gate(
            "comparable",
            unjudged,
            0,
            "inconclusive",
            f"{unjudged} games not comparable until resynced (`compare status` names them)",
        )
    )

    mirrored = _number(figures, "mirrored_connections")
    connected = _number(figures, "shadow_connected")
    if connected >= mirrored:
        detail = (
            f"shadow connected for all {mirrored} mirrored clients"
            if mirrored
            else "no mirrored clients connected"
        )
        gates.append(Gate("shadow_connected", connected, mirrored, "pass", detail))
    else:
        gates.append(
            Gate(
                "shadow_connected",
                connected,
                mirrored,
                "fail",
                f"shadow connected for {connected} of {mirrored} mirrored clients",
            )
        )

    drops = _number(figures, "shadow_drops")
    gates.append(_at_most("shadow_drops", drops, thresholds.max_shadow_drops, "shadow drops"))

    primary_p99 = _p99(figures, "primary_p99")
    shadow_p99 = _p99(figures, "shadow_p99")
    if primary_p99 is None or shadow_p99 is None:
        missing = "primary" if primary_p99 is None else "shadow"
        gates.append(_no_latency("shadow_latency", shadow_p99, missing))
    else:
        bound = thresholds.max_latency_ratio * primary_p99 + thresholds.latency_slack
        ok = shadow_p99 <= bound
        gates.append(
            Gate(
                "shadow_latency",
                shadow_p99,
                bound,
                "pass" if ok else "fail",
                f"shadow p99 {shadow_p99 * 1000:.1f} ms {'≤' if ok else '>'} "
                f"{thresholds.max_latency_ratio:g} x primary p99 {primary_p99 * 1000:.1f} ms"
                f" + {thresholds.latency_slack * 1000:g} ms",
            )
        )
    return gates


def verdict(gates: Iterable[Gate]) -> Result:
    """`fail` if any gate fails, else `inconclusive` if any is, else `pass`."""
    results = {g.result for g in gates}
    if "fail" in results:
        return "fail"
    if "inconclusive" in results or not results:
        return "inconclusive"
    return "pass"


def ready(gates: Iterable[Gate]) -> bool:
    """Ready only when every gate passes."""
    return verdict(gates) == "pass"


#: gates on the shadow's health: after a flip the shadow is the old server, and it being
#: down, dropping or slow is no reason to go back to it (a rollback onto it fails, or lands
#: the clients on a server that just came back, or on the slower one)
SHADOW_HEALTH: Final = ("shadow_connected", "shadow_drops", "shadow_latency")


def after_flip(figures: Mapping[str, Any], thresholds: Thresholds) -> list[Gate]:
    """The gates a flip or a ramp is watched on, a failing one rolls it back: the servers'
    agreement (mismatch ratio, diverged games), `primary_failures` (a client refused or lost
    by the new server as its primary: it is down, or failing its handshakes) and
    `primary_latency`: the new server's p99 as a primary against the old server's (as a
    primary under a ramp, as the shadow after a flip). Not the shadow's health
    (`SHADOW_HEALTH`): after a flip that is the old server's."""
    gates = [g for g in evaluate(figures, thresholds) if g.name not in SHADOW_HEALTH]
    failures = _number(figures, "primary_failures_new")
    gates.append(
        _at_most("primary_failures", failures, 0, "clients refused or lost by the new server")
    )
    new_p99 = _p99(figures, "primary_new_p99")
    old_p99 = _p99(figures, "primary_old_p99")
    old_role = "primary"
    if "primary_new_p99" not in figures:  # a proxy that does not split them by upstream
        new_p99, old_p99, old_role = (
            _p99(figures, "primary_p99"),
            _p99(figures, "shadow_p99"),
            "shadow",
        )
    elif old_p99 is None:  # after a flip: the old server is only the shadow
        old_p99, old_role = _p99(figures, "shadow_old_p99"), "shadow"
    if new_p99 is None or old_p99 is None:
        missing = "new server's (as a primary)" if new_p99 is None else "old server's"
        gates.append(_no_latency("primary_latency", new_p99, missing))
        return gates
    bound = thresholds.max_latency_ratio * old_p99 + thresholds.latency_slack
    ok = new_p99 <= bound
    gates.append(
        Gate(
            "primary_latency",
            new_p99,
            bound,
            "pass" if ok else "fail",
            f"new server p99 {new_p99 * 1000:.1f} ms as a primary {'≤' if ok else '>'} "
            f"{thresholds.max_latency_ratio:g} x old server p99 {old_p99 * 1000:.1f} ms "
            f"+ {thresholds.latency_slack * 1000:g} ms (as the {old_role})",
        )
    )
    return gates


def breached(gates: Iterable[Gate]) -> list[Gate]:
    """The gates that fail (inconclusive is not a breach: absence of evidence after a flip is
    not evidence of harm)."""
    return [g for g in gates if g.result == "fail"]
