"""`stateshift demo`: the whole migration in one command (see `demo.scenario`)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import signal
import tempfile
from pathlib import Path
from typing import Annotated
from urllib.parse import urlencode

import typer
from rich.console import Console

from demo.scenario import Demo, Options
from demo.stack import Stack, start_stack
from loadgen.runner import LoadGen
from stateshift.control import ADMIN_TOKEN_ENV
from stateshift.options import finite
from stateshift.runtime import run
from stateshift.tokens import SECRET_ENV, mint_token

app = typer.Typer()

# Tests may replace it (STYLE.md: a console passed in).
console = Console()


def _urls(stack: Stack, out: Console, page: str | None, live_game: str) -> None:
    """Everything a person (or Prometheus) can point at while the demo stays up."""
    control = stack.control
    out.rule("left running (Ctrl-C stops everything)")
    rows = [
        ("clients (the proxy)", f"{stack.proxy.url}/v1/games/{{game_id}}"),
        ("proxy control plane", control.url),
        ("proxy metrics", stack.metrics_url),
        ("proxy health", f"http://{control.host}:{control.port}/healthz"),
        ("old server", f"{stack.old.url}  (metrics: http://{stack.old.url[5:]}/metrics)"),
        ("new server", f"{stack.new.url}  (metrics: http://{stack.new.url[5:]}/metrics)"),
        ("files", str(stack.workdir)),
    ]
    if page is not None:
        query = urlencode(
            {
                "ws": stack.proxy.url,
                "game": live_game,
                "token": mint_token(stack.secret, "browser", "player", [live_game], ttl=86400),
            }
        )
        rows.insert(0, ("browser page", f"{page}?{query}"))
    for name, value in rows:
        out.print(f"[bold]{name:22}[/] {value}", highlight=False, soft_wrap=True)
    out.print(
        f"\nexport {SECRET_ENV}={stack.secret}\n"
        f"export {ADMIN_TOKEN_ENV}=$(stateshift token --sub ops --role admin)\n"
        f"stateshift compare status --proxy {control.url}\n"
        f"stateshift switchover status --proxy {control.url}",
        highlight=False,
        soft_wrap=True,
    )


async def _keep_running(stack: Stack, options: Options, out: Console) -> None:
    """Light traffic on fresh games until SIGINT/SIGTERM, with the URLs printed."""
    loop = asyncio.get_running_loop()
    stopping = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stopping.set)
    load = LoadGen(
        stack.proxy.url,
        stack.secret,
        min(options.games, 2),
        options.players,
        rate=2.0 * min(options.games, 2) * options.players,
        duration=365 * 24 * 3600.0,
        game_prefix="live",
        invalid_ratio=0.01,
        reconnect_every=20.0,
    )
    traffic = asyncio.create_task(load.run())
    _urls(stack, out, stack.serve_page(), load.game_ids[0])
    try:
        await stopping.wait()
    finally:
        load.stop()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(traffic, 30)


async def _main(options: Options, keep_running: bool, out: Console) -> int:
    secret = secrets.token_hex(32)
    with tempfile.TemporaryDirectory(prefix="stateshift-demo-") as tmp:
        stack = await start_stack(Path(tmp), secret)
        try:
            out.print(
                f"old server {stack.old.url} (reference, primary) · "
                f"new server {stack.new.url} (SQLite in {tmp}, shadow) · "
                f"proxy {stack.proxy.url} · control {stack.control_url}",
                highlight=False,
            )
            demo = Demo(stack, options, out)
            ok = await demo.run()
            out.print()  # a file or pipe gets the live view's last frame without a newline
            out.print(demo.summary())
            out.print(
                "[bold green]demo OK[/]" if ok else "[bold red]demo FAILED (see above)[/]",
                highlight=False,
            )
            if keep_running:
                await _keep_running(stack, options, out)
        finally:
            await stack.stop()
    return 0 if ok else 1


@app.command()
def demo(
    duration: Annotated[
        float,
        typer.Option(
            callback=finite, min=6.0, help="Seconds of traffic (the whole demo takes ~15 s more)."
        ),
    ] = 45.0,
    players: Annotated[int, typer.Option(min=1, max=64, help="Players per game.")] = 4,
    games: Annotated[int, typer.Option(min=1, max=200, help="Games played.")] = 5,
    rate: Annotated[
        float | None,
        typer.Option(
            callback=finite, min=0.1, help="Updates per second in all [default: 3 per player]."
        ),
    ] = None,
    no_fault: Annotated[
        bool, typer.Option("--no-fault", help="Do not inject the divergence.")
    ] = False,
    keep_running: Annotated[
        bool,
        typer.Option(
            "--keep-running",
            help="Afterwards, leave everything up (with light traffic) and print the URLs: "
            "proxy, /metrics, servers, the browser page. Ctrl-C stops.",
        ),
    ] = False,
) -> None:
    """The whole migration on loopback, in one command: old server, new server (SQLite in a
    temporary directory), the mirroring proxy with its comparator, and simulated players.

    Injects one divergence (the old server's score-delta-off-by-one fault, on one game) and
    shows it found, explained and resynced; runs `switchover check`, `flip` and `rollback`
    under load; ends with a measured summary. Exit 0 when every step succeeded (no client
    disconnected, no update lost), 1 otherwise.
    """
    # the story is told by the demo; the components' own logs would only interleave
    logging.basicConfig(level=logging.ERROR)
    logging.getLogger("websockets").setLevel(logging.CRITICAL)
    options = Options(
        duration=duration, players=players, games=games, rate=rate, fault=not no_fault
    )
    raise typer.Exit(code=run(_main(options, keep_running, console)))
