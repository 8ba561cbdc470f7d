"""`stateshift serve`: run the new state server."""

from __future__ import annotations

import gc
import logging
from pathlib import Path
from typing import Annotated

import typer

from server.app import ServerSettings, StateServer
from server.errors import DatabaseError
from stateshift import native
from stateshift.netloc import netloc
from stateshift.options import finite
from stateshift.runtime import run, serve_until_signalled
from stateshift.tokens import SECRET_ENV

app = typer.Typer()

#: allocations between collections of the youngest generation (Python's default: 700)
GC_THRESHOLD_0 = 10_000


class CannotListen(Exception):
    """The listening socket could not be opened (the database was, and is closed again)."""


@app.command()
def serve(
    db: Annotated[Path, typer.Option(help="SQLite database file (created if missing).")],
    host: Annotated[str, typer.Option(help="Address to listen on.")] = "127.0.0.1",
    port: Annotated[
        int, typer.Option(min=0, max=65535, help="TCP port (0: any free port).")
    ] = 8765,
    rate: Annotated[
        float, typer.Option(callback=finite, min=0.001, help="Messages per second per connection.")
    ] = 50.0,
    burst: Annotated[int, typer.Option(min=1, help="Token bucket burst per connection.")] = 100,
    connect_timeout: Annotated[
        float, typer.Option(callback=finite, min=0.001, help="Seconds to send CONNECT.")
    ] = 10.0,
    idle_timeout: Annotated[
        float, typer.Option(callback=finite, min=0.001, help="Seconds of silence before 4408.")
    ] = 60.0,
    ping_interval: Annotated[
        float,
        typer.Option(
            callback=finite,
            min=0.001,
            help="Seconds between pings (at most a third of --idle-timeout).",
        ),
    ] = 20.0,
    secret: Annotated[
        str,
        typer.Option(envvar=SECRET_ENV, show_default=False, help="JWT secret (use the env var)."),
    ] = "",
    max_batch: Annotated[
        int,
        typer.Option(min=1, help="Most changes per group commit (1: one commit per change)."),
    ] = 256,
    log_level: Annotated[str, typer.Option(help="Logging level.")] = "INFO",
) -> None:
    """Run the new state server (PROTOCOL.md over WebSocket, state in SQLite).

    Prints `listening on ws://HOST:PORT` once it accepts connections. SIGTERM or SIGINT stop
    it gracefully: in-flight commits finish, clients are closed with 1012.
    """
    if not secret:
        typer.echo(
            f"error: {SECRET_ENV} is not set: the token secret shared by the old and new "
            f"servers is required (e.g. export {SECRET_ENV}=$(openssl rand -hex 32))",
            err=True,
        )
        raise typer.Exit(code=2)
    if not isinstance(logging.getLevelName(log_level.upper()), int):
        raise typer.BadParameter(f"--log-level must be a logging level, not {log_level!r}")
    logging.basicConfig(level=log_level.upper(), format="%(asctime)s %(levelname)s %(message)s")
    # one line per connection is noise at this rate; websockets' warnings still show
    logging.getLogger("websockets").setLevel(max(logging.WARNING, logging.getLogger().level))
    settings = ServerSettings(
        db=db,
        secret=secret,
        host=host,
        port=port,
        rate=rate,
        burst=burst,
        connect_timeout=connect_timeout,
        idle_timeout=idle_timeout,
        ping_interval=ping_interval,
        max_batch=max_batch,
    )
    server = StateServer(settings)

    def ready() -> None:
        typer.echo(f"listening on {server.url}")
        typer.echo(f"hot modules: {native.status()}")

    # What is loaded now lives as long as the process: the collector need not scan it again.
    # Each message allocates a few dozen short-lived objects (almost never in cycles), so the
    # young generation is collected less often than the default 700 allocations.
    gc.freeze()
    gc.set_threshold(GC_THRESHOLD_0, 20, 20)

    async def start() -> None:
        try:
            await server.start()
        except OSError as exc:  # an address in use, not ours, or not on this machine
            raise CannotListen(f"cannot listen on {netloc(host, port)}: {exc}") from exc

    try:
        code = run(serve_until_signalled(start, server.stop, ready))
    except DatabaseError as exc:
        typer.echo(f"error: {exc.message}", err=True)
        raise typer.Exit(code=1) from exc
    except CannotListen as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(code=1) from exc
    raise typer.Exit(code=code)
