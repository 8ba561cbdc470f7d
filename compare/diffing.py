"""Comparing two frames: cheap when equal, DeepDiff only on a mismatch, and paths
normalised so that they can become metric labels.

Equality is checked first on copies stripped of the ignored keys and paths (`==` on plain
dicts); only when that fails does DeepDiff run, with every exclusion (regexes included), so
its verdict is final. Paths are normalised structurally: every key that is not a field name
of the protocol (a player id, a setting key, a list index) becomes `[*]`, so labels never
carry ids or values.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass
from typing import Any, Final

import orjson
from deepdiff import DeepDiff

from compare.rules import TypeRules

#: field names of the protocol's frames and state: kept in normalised paths
SCHEMA_KEYS: Final = frozenset(
    {
        "type",
        "re",
        "id",
        "code",
        "message",
        "version",
        "state",
        "game_id",
        "status",
        "current_player",
        "scores",
        "timer",
        "settings",
        "updated_at",
        "player_id",
        "role",
        "session_id",
        "server_time",
        "games",
        "next",
        "retry_after_ms",
    }
)
_STEP = re.compile(r"\[('(?:[^'\\]|\\.)*'|\"(?:[^\"\\]|\\.)*\"|[^\]]*)\]")
MAX_LABEL_DEPTH: Final = 4


def normalise_path(path: str) -> str:
    """`root['state']['scores']['alice']` -> `root['state']['scores'][*]`."""
    steps = []
    for match in _STEP.finditer(path):
        token = match.group(1)
        key = token[1:-1] if token[:1] in ("'", '"') else None
        steps.append(f"['{key}']" if key in SCHEMA_KEYS else "[*]")
        if len(steps) >= MAX_LABEL_DEPTH:
            break
    return "root" + "".join(steps)


def strip(value: Any, rules: TypeRules) -> Any:
    """A copy of `value` without the ignored keys (at any depth) and exact paths."""
    stripped = _strip_keys(value, rules.ignore_keys) if rules.ignore_keys else value
    for path in rules.exclude_paths:
        stripped = _strip_path(stripped, path)
    return stripped


def _strip_keys(value: Any, keys: frozenset[str]) -> Any:
    if isinstance(value, dict):
        return {k: _strip_keys(v, keys) for k, v in value.items() if k not in keys}
    if isinstance(value, list):
        return [_strip_keys(v, keys) for v in value]
    return value


def _strip_path(value: Any, path: str) -> Any:
    keys = [m.group(1) for m in _STEP.finditer(path)]
    if not keys or not isinstance(value, dict):
        return value
    return _without(value, [k[1:-1] if k[:1] in ("'", '"') else k for k in keys])


def _without(value: Any, keys: list[str]) -> Any:
    if not isinstance(value, dict) or keys[0] not in value:
        return value
    copy = dict(value)
    if len(keys) == 1:
        del copy[keys[0]]
    else:
        copy[keys[0]] = _without(copy[keys[0]], keys[1:])
    return copy


@dataclass(slots=True, init=False)
class Verdict:
    """The outcome of comparing a primary frame with the shadow's (one per comparison:
    `__init__` written out, so that mypyc compiles it)."""

    equal: bool
    #: normalised paths that differ (empty when equal)
    paths: list[str]
    #: the raw DeepDiff result (JSON-ready) when unequal
    diff: dict[str, Any]
    #: DeepDiff's human text when unequal
    text: str
    seconds: float

    def __init__(
        self,
        equal: bool,
        paths: list[str] | None = None,
        diff: dict[str, Any] | None = None,
        text: str = "",
        seconds: float = 0.0,
    ) -> None:
        self.equal = equal
        self.paths = [] if paths is None else paths
        self.diff = {} if diff is None else diff
        self.text = text
        self.seconds = seconds


def equal(a: Any, b: Any, ignore: frozenset[str]) -> bool:
    """Strict JSON equality skipping keys in `ignore` at any depth, without copying.

    Strict: `1`, `1.0` and `true` differ (Python's `==` would call them equal), as they do on
    the wire."""
    kind = type(a)
    if kind is not type(b):
        return False
    if kind is dict:
        if not ignore and len(a) != len(b):
            return False
        for key, value in a.items():
            if key in ignore:
                continue
            if key not in b or not equal(value, b[key], ignore):
                return False
        return all(key in a or key in ignore for key in b)
    if kind is list:
        return len(a) == len(b) and all(equal(x, y, ignore) for x, y in zip(a, b, strict=True))
    return bool(a == b)


def quick_equal(primary: Any, shadow: Any, rules: TypeRules) -> bool:
    """The cheap checks only (no DeepDiff): True means equal; False means "maybe not"
    (regex exclusions are not applied)."""
    if rules.exclude_paths:
        return equal(strip(primary, rules), strip(shadow, rules), rules.ignore_keys)
    return equal(primary, shadow, rules.ignore_keys)


def compare(primary: Any, shadow: Any, rules: TypeRules) -> Verdict:
    """Compare two frames (or states) under `rules`: structurally first (compiled, no
    DeepDiff), DeepDiff only when that finds a difference."""
    started = time.perf_counter()
    if rules.exclude_paths:
        same = equal(strip(primary, rules), strip(shadow, rules), rules.ignore_keys)
    else:
        same = equal(primary, shadow, rules.ignore_keys)
    if same:
        return Verdict(True, seconds=time.perf_counter() - started)
    diff = DeepDiff(
        primary,
        shadow,
        threshold_to_diff_deeper=0,
        **rules.deepdiff_kwargs(),
    )
    if not diff:  # only excluded (regex) paths differed
        return Verdict(True, seconds=time.perf_counter() - started)
    paths = sorted({normalise_path(str(p)) for p in diff.affected_paths})
    return Verdict(
        False,
        paths=paths,
        diff=orjson.loads(diff.to_json()),
        text=diff.pretty(),
        seconds=time.perf_counter() - started,
    )
