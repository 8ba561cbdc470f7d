"""Rendering a `Report` with rich: a table per category, then totals (pure, no I/O but the
console)."""

from __future__ import annotations

from rich.console import Console
from rich.table import Table
from rich.text import Text

from conformance.runner import Report


def render(report: Report, console: Console, *, show_passed: bool = True) -> None:
    """Print `report` to `console`."""
    console.print(Text(f"Conformance of {report.url}", style="bold"))
    for category, results in report.by_category().items():
        failed = sum(not r.passed for r in results)
        title = f"{category}: {len(results) - failed}/{len(results)} passed"
        table = Table(title=title, title_justify="left", expand=False, show_lines=False)
        table.add_column("check", overflow="fold")
        table.add_column("result", no_wrap=True)
        table.add_column("message", overflow="fold")
        for r in results:
            if r.passed and not show_passed:
                continue
            verdict = Text("pass", style="green") if r.passed else Text("FAIL", style="bold red")
            table.add_row(r.name, verdict, r.message)
        console.print(table)
    style = "bold green" if report.ok else "bold red"
    console.print(
        Text(
            f"{report.passed} passed, {report.failed} failed, "
            f"{len(report.results)} checks in {report.duration:.1f}s",
            style=style,
        )
    )
