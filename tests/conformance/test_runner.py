"""Pure tests of the runner, the report and the registry (fake checks, no server)."""

from __future__ import annotations

import asyncio
import io
import json
import re

import pytest
from rich.console import Console

from conformance.config import SuiteConfig
from conformance.context import CheckContext
from conformance.registry import (
    REGISTRY,
    Check,
    ConformanceFailure,
    add_check,
    expect_equal,
    select_checks,
)
from conformance.report import render
from conformance.runner import CheckResult, Report, run_checks

URL = "ws://127.0.0.1:9"  # never dialled: the fake checks do not connect
FAST = SuiteConfig(check_timeout=0.2, answer_timeout=0.2, connect_timeout=0.1, idle_timeout=0.1)


def fake(name: str, body: object = None, *, slow: bool = False) -> Check:
    async def fn(ctx: CheckContext) -> None:
        if isinstance(body, BaseException):
            raise body
        if body == "hang":
            await asyncio.sleep(3600)

    return Check(name=name, category=name.split(".")[0], fn=fn, slow=slow, doc="a fake check")


async def test_runner_reports_pass_failure_error_and_hang_as_results() -> None:
    checks = [
        fake("a.passes"),
        fake("a.fails", ConformanceFailure("expected 1, got 2")),
        fake("b.raises", KeyError("boom")),
        fake("b.hangs", "hang"),
    ]
    report = await run_checks(checks, URL, "s", FAST)
    verdicts = {r.name: (r.passed, r.message) for r in report.results}
    assert verdicts["a.passes"] == (True, "")
    assert verdicts["a.fails"] == (False, "expected 1, got 2")
    assert verdicts["b.raises"][1].startswith("unexpected KeyError: 'boom'")
    assert "did not finish within 0.2s" in verdicts["b.hangs"][1]
    assert (report.passed, report.failed, report.ok) == (1, 3, False)


async def test_runner_bounds_concurrency() -> None:
    running = 0
    peak = 0

    async def fn(ctx: CheckContext) -> None:
        nonlocal running, peak
        running += 1
        peak = max(peak, running)
        await asyncio.sleep(0.01)
        running -= 1

    checks = [Check(f"c.n{i}", "c", fn, False, "doc") for i in range(20)]
    report = await run_checks(checks, URL, "s", SuiteConfig(concurrency=3))
    assert report.ok
    assert peak == 3


def test_slow_checks_get_the_server_deadlines_on_top_of_the_check_timeout() -> None:
    config = SuiteConfig(check_timeout=30, connect_timeout=10, idle_timeout=60)
    assert config.timeout_for(slow=False) == 30
    assert config.timeout_for(slow=True) == 270


def test_an_empty_report_is_not_ok() -> None:
    assert not Report(url=URL).ok


def sample_report() -> Report:
    return Report(
        url=URL,
        results=[
            CheckResult("b.second", "b", True, duration=0.01),
            CheckResult("a.first", "a", False, "expected 4401, got 1000", duration=0.5),
            CheckResult("a.other", "a", True, duration=1.23456),
        ],
        duration=2.0,
    )


def test_report_renders_a_table_per_category_and_totals() -> None:
    buffer = io.StringIO()
    render(sample_report(), Console(file=buffer, width=120))
    text = buffer.getvalue()
    assert "a: 1/2 passed" in text
    assert "b: 1/1 passed" in text
    assert re.search(r"a\.first\s*│\s*FAIL\s*│\s*expected 4401, got 1000", text)
    assert "2 passed, 1 failed, 3 checks in 2.0s" in text
    assert text.index("a: 1/2") < text.index("b: 1/1")


def test_report_json_is_sorted_and_rounded() -> None:
    data = json.loads(json.dumps(sample_report().to_json()))
    assert [r["name"] for r in data["results"]] == ["a.first", "a.other", "b.second"]
    assert data["results"][1]["duration"] == 1.235
    assert (data["ok"], data["passed"], data["failed"]) == (False, 2, 1)


def test_select_matches_globs_and_substrings_and_can_skip_slow() -> None:
    checks = [fake("auth.x"), fake("auth.y", slow=True), fake("idle.z", slow=True), fake("b.auth")]
    names = [c.name for c in select_checks(checks, ["auth.*"])]
    assert names == ["auth.x", "auth.y"]
    assert [c.name for c in select_checks(checks, ["auth"])] == ["auth.x", "auth.y", "b.auth"]
    assert [c.name for c in select_checks(checks, None, include_slow=False)] == ["auth.x", "b.auth"]


def test_registry_refuses_duplicates_and_checks_without_docstrings() -> None:
    async def fn(ctx: CheckContext) -> None:
        return None

    name = next(iter(REGISTRY))
    with pytest.raises(ValueError, match="duplicate"):
        add_check(name, fn, doc="x")
    with pytest.raises(ValueError, match="docstring"):
        add_check("zz.no_doc_please", fn, doc="  ")
    assert "zz.no_doc_please" not in REGISTRY


def test_every_registered_check_reads_as_a_sentence_and_cites_its_source() -> None:
    assert len(REGISTRY) > 100
    for name, c in REGISTRY.items():
        assert re.fullmatch(r"[a-z]+\.[a-z0-9_]+", name), name
        assert "PROTOCOL.md" in c.doc or "Note" in c.doc or "note" in c.doc, name


def test_expect_equal_tells_true_from_1() -> None:
    with pytest.raises(ConformanceFailure, match="version: expected 1, got True"):
        expect_equal("version", 1, True)
