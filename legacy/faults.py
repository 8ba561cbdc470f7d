"""Fault injection for the legacy server: `--fault NAME[:ARG]` specs, parsed purely.

A fault turns the healthy reference server into a misbehaving peer on purpose, so that the
proxy, the comparator and the switchover checks can be shown to notice (or to stay unharmed
by) each kind of misbehaviour. With no fault the server is a healthy peer, and every hook is
a single falsy test on the hot path.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Final

from legacy.errors import ConfigError


@dataclass(frozen=True, slots=True)
class FaultInfo:
    """One fault's argument (None: takes none) and its one-line description."""

    arg: str | None
    help: str


FAULTS: Final[dict[str, FaultInfo]] = {
    "score-delta-off-by-one": FaultInfo(
        None, "apply every score delta one too high (a real, persisted logic divergence)"
    ),
    "drop-broadcast": FaultInfo("P", "drop a fraction P (0..1) of STATE broadcasts (--seed)"),
    "slow": FaultInfo("MS", "wait MS milliseconds before answering each message"),
    "stall-after": FaultInfo(
        "N", "after N messages in total, answer nothing more but keep connections open"
    ),
    "crash-after": FaultInfo("N", "when message N+1 arrives, exit the process abruptly (exit 1)"),
    "garbage": FaultInfo("P", "replace a fraction P (0..1) of answers by a frame that is not JSON"),
    "close-early": FaultInfo(
        "N", "close each connection with 1011 after answering its N-th message"
    ),
    "clock-skew": FaultInfo("MS", "shift every timestamp (updated_at, server_time) by MS (signed)"),
    "reorder-settings": FaultInfo(None, "send settings keys in reversed order (harmless)"),
    "refuse-auth": FaultInfo(
        None, "refuse every CONNECT with UNAUTHENTICATED/4401 (a peer with another secret)"
    ),
}


@dataclass(frozen=True, slots=True)
class Faults:
    """The faults a server runs with; the defaults are a healthy server."""

    score_delta_off_by_one: bool = False
    drop_broadcast: float = 0.0
    slow_ms: int = 0
    stall_after: int | None = None
    crash_after: int | None = None
    garbage: float = 0.0
    close_early: int | None = None
    clock_skew_ms: int = 0
    reorder_settings: bool = False
    refuse_auth: bool = False

    @property
    def counts_messages(self) -> bool:
        """Whether the server must count messages (stall-after, crash-after)."""
        return self.stall_after is not None or self.crash_after is not None


def fault_lines() -> list[str]:
    """One line per fault (`name:ARG: what it does`), for `--help`."""
    lines = []
    for name, info in FAULTS.items():
        spec = name if info.arg is None else f"{name}:{info.arg}"
        lines.append(f"{spec}: {info.help}")
    return lines


def _fraction(name: str, text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not 0.0 <= value <= 1.0:
        raise ConfigError(f"fault {name}: P must be a number from 0 to 1, not {text!r}")
    return value


def _integer(name: str, arg: str, text: str, minimum: int | None) -> int:
    try:
        value = int(text)
    except ValueError:
        raise ConfigError(f"fault {name}: {arg} must be an integer, not {text!r}") from None
    if minimum is not None and value < minimum:
        raise ConfigError(f"fault {name}: {arg} must be at least {minimum}, not {value}")
    return value


def parse_faults(specs: Iterable[str]) -> Faults:
    """Parse `NAME[:ARG]` specs into `Faults`; raise `ConfigError` with a clear message."""
    values: dict[str, Any] = {}
    for spec in specs:
        name, colon, text = spec.strip().partition(":")
        info = FAULTS.get(name)
        if info is None:
            raise ConfigError(f"unknown fault {name!r}; known: {', '.join(FAULTS)}")
        if name in values:
            raise ConfigError(f"fault {name} given twice")
        if info.arg is None:
            if colon:
                raise ConfigError(f"fault {name} takes no argument")
            values[name] = True
            continue
        if not text:
            raise ConfigError(f"fault {name} needs an argument: {name}:{info.arg}")
        if info.arg == "P":
            values[name] = _fraction(name, text)
        elif name == "clock-skew":
            values[name] = _integer(name, info.arg, text, None)
        elif name == "close-early":
            values[name] = _integer(name, info.arg, text, 1)
        else:
            values[name] = _integer(name, info.arg, text, 0)
    return Faults(**{_FIELDS.get(name, name.replace("-", "_")): v for name, v in values.items()})


# Fault names whose `Faults` field name is not the name with `_` for `-`.
_FIELDS: Final = {"slow": "slow_ms", "clock-skew": "clock_skew_ms"}
