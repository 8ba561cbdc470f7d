"""The registry of named conformance checks and the failure they raise.

A check is an `async def (ctx) -> None` registered with `@check("category.sentence", ...)`.
It raises `ConformanceFailure` (expected vs got) when the server breaks the contract; any
other exception is reported as a failure of the check too. The registry is a plain dict,
filled when `conformance.checks` is imported.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from conformance.context import CheckContext

CheckFn = Callable[["CheckContext"], Awaitable[None]]


class ConformanceFailure(AssertionError):
    """The server did something the contract forbids (message says expected vs got)."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


def expect(condition: bool, message: str) -> None:
    """Raise `ConformanceFailure(message)` unless `condition` holds."""
    if not condition:
        raise ConformanceFailure(message)


def expect_equal(what: str, expected: Any, got: Any) -> None:
    """Raise a failure saying `what`: expected `expected`, got `got` when they differ."""
    # bool is an int in Python: `True == 1` must not pass for a version or a score
    if type(expected) is not type(got) or expected != got:
        raise ConformanceFailure(f"{what}: expected {expected!r}, got {got!r}")


@dataclass(frozen=True)
class Check:
    """One registered check."""

    name: str
    category: str
    fn: CheckFn
    slow: bool
    doc: str


REGISTRY: dict[str, Check] = {}


def check(
    name: str, *, category: str | None = None, slow: bool = False
) -> Callable[[CheckFn], CheckFn]:
    """Register `fn` as the check `name` (category defaults to the part before the first dot)."""

    def register(fn: CheckFn) -> CheckFn:
        add_check(name, fn, category=category, slow=slow, doc=fn.__doc__ or "")
        return fn

    return register


def add_check(
    name: str, fn: CheckFn, *, category: str | None = None, slow: bool = False, doc: str = ""
) -> None:
    """Register a check built at import time (used for the generated transition checks)."""
    if name in REGISTRY:
        raise ValueError(f"duplicate check name {name!r}")
    if not doc.strip():
        raise ValueError(f"check {name!r} needs a docstring saying what it verifies")
    REGISTRY[name] = Check(
        name=name,
        category=category or name.split(".", 1)[0],
        fn=fn,
        slow=slow,
        doc=" ".join(doc.split()),
    )


def select_checks(
    checks: Iterable[Check], patterns: Iterable[str] | None = None, *, include_slow: bool = True
) -> list[Check]:
    """The checks matching any of `patterns` (globs or substrings), sorted by name."""
    pats = [p for p in (patterns or []) if p]
    chosen = []
    for c in checks:
        if not include_slow and c.slow:
            continue
        if pats and not any(_matches(c.name, p) for p in pats):
            continue
        chosen.append(c)
    return sorted(chosen, key=lambda c: c.name)


def _matches(name: str, pattern: str) -> bool:
    if any(ch in pattern for ch in "*?["):
        return fnmatch.fnmatchcase(name, pattern)
    return pattern in name
