"""`stateshift conformance`: run the protocol conformance suite against a server URL."""

from __future__ import annotations

import asyncio
import json
import os
from typing import Annotated

import typer
from rich.console import Console

from conformance.client import unreachable
from conformance.config import SuiteConfig
from conformance.registry import REGISTRY, select_checks
from conformance.report import render
from conformance.runner import run_suite
from stateshift.control import ws_url_problem
from stateshift.options import finite

app = typer.Typer()

# Tests replace these to render into io.StringIO (rich Console passed in, see STYLE.md).
console = Console()
err_console = Console(stderr=True)


@app.command()
def conformance(
    url: Annotated[str, typer.Option(help="Server base URL, e.g. ws://127.0.0.1:8765.")],
    secret_env: Annotated[
        str, typer.Option(help="Environment variable holding the shared signing secret.")
    ] = "STATESHIFT_SECRET",
    only: Annotated[
        list[str] | None,
        typer.Option("--only", help="Run checks whose name matches (glob or substring; repeat)."),
    ] = None,
    include_slow: Annotated[
        bool, typer.Option("--include-slow/--no-slow", help="Run checks that wait for deadlines.")
    ] = True,
    as_json: Annotated[bool, typer.Option("--json", help="Print a JSON report.")] = False,
    connect_timeout: Annotated[
        float, typer.Option(callback=finite, help="Server's CONNECT deadline (s).")
    ] = 10.0,
    idle_timeout: Annotated[
        float, typer.Option(callback=finite, help="Server's idle timeout (s).")
    ] = 60.0,
    rate: Annotated[
        float, typer.Option(callback=finite, help="Server's message rate per connection (/s).")
    ] = 50.0,
    burst: Annotated[int, typer.Option(help="Server's rate-limit burst.")] = 100,
    max_frame: Annotated[
        int, typer.Option(help="Largest frame the server accepts (bytes).")
    ] = 65536,
    concurrency: Annotated[int, typer.Option(help="Checks run at once.")] = 16,
) -> None:
    """Check a server against PROTOCOL.md and the protocol notes; exit 0 only if all pass.

    Exit codes: 0 every check passed, 1 some check failed, 2 usage error, or nothing can be
    reached at --url (no check is run).
    """
    secret = os.environ.get(secret_env, "")
    if not secret:
        err_console.print(f"error: {secret_env} is not set (the secret shared by both servers)")
        raise typer.Exit(code=2)
    problem = ws_url_problem(url)
    if problem is not None:
        err_console.print(
            f"error: --url is not a valid ws:// URL: {problem} ({url!r})",
            markup=False,
            highlight=False,
        )
        raise typer.Exit(code=2)
    if min(connect_timeout, idle_timeout, rate) <= 0 or burst < 1 or concurrency < 1:
        err_console.print("error: timeouts, --rate, --burst and --concurrency must be positive")
        raise typer.Exit(code=2)
    config = SuiteConfig(
        rate=rate,
        burst=burst,
        connect_timeout=connect_timeout,
        idle_timeout=idle_timeout,
        max_frame=max_frame,
        concurrency=concurrency,
    )
    if not select_checks(REGISTRY.values(), only, include_slow=include_slow):
        err_console.print(f"error: no check matches {only!r}", markup=False, highlight=False)
        raise typer.Exit(code=2)
    problem = asyncio.run(unreachable(url, config.answer_timeout))
    if problem is not None:
        err_console.print(
            f"error: cannot connect to {url}: {problem}",
            markup=False,
            highlight=False,
            soft_wrap=True,  # one line, however long
        )
        raise typer.Exit(code=2)
    report = asyncio.run(run_suite(url, secret, config, only, include_slow=include_slow))
    if as_json:
        console.print_json(json.dumps(report.to_json()))
    else:
        render(report, console)
    raise typer.Exit(code=0 if report.ok else 1)
