"""`stateshift loadgen`: simulated players against a server or a proxy, and their report."""

from __future__ import annotations

import json
from typing import Annotated

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from loadgen.plan import MAX_CONNECTION_RATE
from loadgen.runner import LoadGen, LoadReport
from stateshift.control import ws_url_problem
from stateshift.options import finite
from stateshift.runtime import run
from stateshift.tokens import SECRET_ENV

app = typer.Typer()

# Tests may replace these (STYLE.md: a console passed in).
console = Console()
err_console = Console(stderr=True)


def render_report(report: LoadReport, out: Console) -> None:
    """The report as two tables: traffic and outcomes, then latency."""
    doc = report.to_dict()
    s = report.stats
    traffic = Table(title=f"loadgen against {report.url}", title_justify="left")
    traffic.add_column("figure")
    traffic.add_column("value", justify="right")
    traffic.add_column("detail", overflow="fold")
    rate = doc["rate"]
    traffic.add_row(
        "games x players",
        f"{len(report.games)} x {report.players}",
        f"{report.duration:.1f} s of load",
    )
    traffic.add_row(
        "updates/s",
        f"{rate['achieved']:g}",
        f"asked {rate['requested']:g}, {rate['per_connection']:g} per connection",
    )
    traffic.add_row(
        "sent", str(s.total_sent), ", ".join(f"{k} {v}" for k, v in sorted(s.sent.items()))
    )
    traffic.add_row("acked", str(s.acked), "accepted updates")
    traffic.add_row(
        "invalid sent",
        str(sum(s.invalid_sent.values())),
        ", ".join(f"{k} {v}" for k, v in sorted(s.invalid_sent.items())),
    )
    traffic.add_row(
        "errors (expected)",
        str(sum(s.expected_errors.values())),
        ", ".join(f"{k} {v}" for k, v in sorted(s.expected_errors.items())),
    )
    bad = "bold red"
    traffic.add_row(
        "errors (unexpected)",
        f"[{bad if s.unexpected_errors else 'green'}]{sum(s.unexpected_errors.values())}[/]",
        ", ".join(f"{k} {v}" for k, v in sorted(s.unexpected_errors.items())),
    )
    traffic.add_row(
        "invalid answered wrong",
        f"[{bad if s.invalid_wrong else 'green'}]{len(s.invalid_wrong)}[/]",
        "; ".join(s.invalid_wrong[:3]),
    )
    traffic.add_row(
        "unexpected closes",
        f"[{bad if s.unexpected_closes else 'green'}]{s.unexpected_closes}[/]",
        ", ".join(f"{k}: {v}" for k, v in sorted(s.close_codes.items())),
    )
    traffic.add_row(
        "unanswered", f"[{bad if s.unanswered else 'green'}]{s.unanswered}[/]", "lost requests"
    )
    traffic.add_row(
        "missed broadcasts",
        f"[{bad if s.missed_broadcasts else 'green'}]{s.missed_broadcasts}[/]",
        "versions of a game a connection never got as STATE",
    )
    traffic.add_row("reconnects", str(s.reconnects), "connected again after a goodbye or a loss")
    if s.connect_failures:
        traffic.add_row("connect failures", f"[{bad}]{s.connect_failures}[/]", "")
    out.print(traffic)
    latency = Table(title="ACK latency (ms)", title_justify="left")
    for column in ("p50", "p95", "p99", "max"):
        latency.add_column(column, justify="right")
    lat = doc["latency_ms"]
    latency.add_row(
        *("-" if lat[c] is None else f"{lat[c]:.2f}" for c in ("p50", "p95", "p99", "max"))
    )
    out.print(latency)
    out.print("[green]ok[/]" if report.ok else "[bold red]something went wrong (see above)[/]")


@app.command()
def loadgen(
    url: Annotated[str, typer.Option(help="Server or proxy, ws://HOST:PORT.")],
    games: Annotated[int, typer.Option(min=1, help="Games to play.")] = 4,
    players: Annotated[int, typer.Option(min=1, max=64, help="Players per game.")] = 4,
    rate: Annotated[
        float,
        typer.Option(
            callback=finite,
            min=0.0,
            help=f"Updates per second in all (at most {MAX_CONNECTION_RATE:g} per connection, "
            "under the protocol's limit).",
        ),
    ] = 100.0,
    duration: Annotated[
        float, typer.Option(callback=finite, min=0.1, help="Seconds of load.")
    ] = 10.0,
    invalid_ratio: Annotated[
        float,
        typer.Option(
            callback=finite, min=0.0, max=0.5, help="Share of messages sent invalid on purpose."
        ),
    ] = 0.02,
    reconnect_every: Annotated[
        float,
        typer.Option(
            callback=finite, min=0.0, help="Mean seconds between a player's reconnects (0: none)."
        ),
    ] = 20.0,
    game_prefix: Annotated[
        str | None, typer.Option(help="Game ids are PREFIX-g0…; default: a fresh random prefix.")
    ] = None,
    seed: Annotated[int | None, typer.Option(help="Random seed (repeatable runs).")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON document.")] = False,
    secret: Annotated[
        str,
        typer.Option(envvar=SECRET_ENV, show_default=False, help="JWT secret (use the env var)."),
    ] = "",
) -> None:
    """Simulated players: joins, turns, score deltas, timers, settings, heartbeats, reconnects
    and occasional invalid messages (each must get its documented error).

    Reports sent / acked / errors by code / unexpected closes and ACK latency percentiles.
    Exit codes: 0 ok, 1 something went wrong (unexpected error or close, unanswered request,
    an invalid message answered otherwise than documented), 2 usage error.
    """
    if not secret:
        err_console.print(f"[red]error:[/] {SECRET_ENV} is not set (the servers' shared secret)")
        raise typer.Exit(code=2)
    problem = ws_url_problem(url)
    if problem is not None:
        err_console.print(
            "[red]error:[/] --url is not a valid ws:// URL: "
            f"{escape(problem)} ({escape(repr(url))})",
            highlight=False,
        )
        raise typer.Exit(code=2)
    gen = LoadGen(
        url,
        secret,
        games,
        players,
        rate,
        duration,
        game_prefix=game_prefix,
        invalid_ratio=invalid_ratio,
        reconnect_every=reconnect_every,
        seed=seed,
    )

    async def main() -> int:
        await gen.run()
        return 0

    run(main())
    report = gen.report()
    if as_json:
        typer.echo(json.dumps(report.to_dict(), indent=2))
    else:
        render_report(report, console)
    raise typer.Exit(code=0 if report.ok else 1)
