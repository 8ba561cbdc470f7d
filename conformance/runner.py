"""Running checks against a server: bounded concurrency, a timeout per check, a report.

`run_suite` is the only asyncio here; `Report`/`CheckResult` are plain data that the CLI and
the pytest wiring render or assert on.
"""

from __future__ import annotations

import asyncio
import time
import traceback
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import conformance.checks  # noqa: F401  (fills the registry)
from conformance.config import SuiteConfig
from conformance.context import CheckContext
from conformance.registry import REGISTRY, Check, ConformanceFailure, select_checks


@dataclass(frozen=True)
class CheckResult:
    """The outcome of one check."""

    name: str
    category: str
    passed: bool
    message: str = ""
    duration: float = 0.0
    slow: bool = False
    doc: str = ""


@dataclass
class Report:
    """The outcome of a run."""

    url: str
    results: list[CheckResult] = field(default_factory=list)
    duration: float = 0.0

    @property
    def passed(self) -> int:
        """How many checks passed."""
        return sum(r.passed for r in self.results)

    @property
    def failed(self) -> int:
        """How many checks failed."""
        return len(self.results) - self.passed

    @property
    def ok(self) -> bool:
        """All selected checks passed (and at least one ran)."""
        return bool(self.results) and self.failed == 0

    def by_category(self) -> dict[str, list[CheckResult]]:
        """Results grouped by category, categories and checks sorted by name."""
        groups: dict[str, list[CheckResult]] = {}
        for result in sorted(self.results, key=lambda r: (r.category, r.name)):
            groups.setdefault(result.category, []).append(result)
        return groups

    def result(self, name: str) -> CheckResult:
        """The result of the check `name`."""
        for r in self.results:
            if r.name == name:
                return r
        raise KeyError(name)

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready summary for scripts."""
        return {
            "url": self.url,
            "ok": self.ok,
            "passed": self.passed,
            "failed": self.failed,
            "duration": round(self.duration, 3),
            "results": [
                {k: (round(v, 3) if k == "duration" else v) for k, v in asdict(r).items()}
                for r in sorted(self.results, key=lambda r: r.name)
            ],
        }


def failure_message(exc: BaseException) -> str:
    """A readable one-paragraph message for what a check raised."""
    if isinstance(exc, ConformanceFailure):
        return exc.message
    frames = traceback.extract_tb(exc.__traceback__)
    where = next(
        (
            f"{f.filename.rsplit('/', 1)[-1]}:{f.lineno}"
            for f in reversed(frames)
            if "checks" in f.filename
        ),
        "",
    )
    return f"unexpected {type(exc).__name__}: {exc}" + (f" (at {where})" if where else "")


async def run_check(check: Check, url: str, secret: str, config: SuiteConfig) -> CheckResult:
    """Run one check under its timeout; every outcome becomes a `CheckResult`."""
    ctx = CheckContext(url, secret, config)
    limit = config.timeout_for(check.slow)
    started = time.monotonic()
    passed, message = False, ""
    try:
        await asyncio.wait_for(check.fn(ctx), limit)
        passed = True
    except TimeoutError:
        message = f"did not finish within {limit:g}s (a hang is a failure)"
    except Exception as exc:  # any error of a check is its failure, never the suite's
        message = failure_message(exc)
    finally:
        try:
            await asyncio.wait_for(ctx.aclose(), config.answer_timeout)
        except Exception:  # a clean-up problem must not hide the verdict
            pass
    return CheckResult(
        name=check.name,
        category=check.category,
        passed=passed,
        message=message,
        duration=time.monotonic() - started,
        slow=check.slow,
        doc=check.doc,
    )


async def run_checks(checks: Sequence[Check], url: str, secret: str, config: SuiteConfig) -> Report:
    """Run `checks` concurrently (at most `config.concurrency` at a time)."""
    gate = asyncio.Semaphore(max(1, config.concurrency))
    started = time.monotonic()

    async def one(check: Check) -> CheckResult:
        async with gate:
            return await run_check(check, url, secret, config)

    # slow checks mostly wait: start them first so they overlap with the rest
    ordered = sorted(checks, key=lambda c: (not c.slow, c.name))
    results = await asyncio.gather(*(one(c) for c in ordered))
    return Report(url=url, results=list(results), duration=time.monotonic() - started)


async def run_suite(
    url: str,
    secret: str,
    config: SuiteConfig | None = None,
    select: Iterable[str] | None = None,
    *,
    include_slow: bool = True,
) -> Report:
    """Run the registered checks matching `select` (globs or substrings; all when None)."""
    chosen = select_checks(REGISTRY.values(), select, include_slow=include_slow)
    return await run_checks(chosen, url, secret, config or SuiteConfig())
