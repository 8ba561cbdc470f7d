"""`stateshift legacy`: run the reference old state server.

Owns the command line (flags shared with `stateshift serve`, plus `--data`, `--fault` and
`--seed`), the secret from the environment, the `listening on ws://HOST:PORT` line that
scripts and tests wait for, and the signal handling (SIGTERM/SIGINT: close clients with
1012, exit 0).
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import sys
import warnings
from collections.abc import Coroutine
from pathlib import Path
from typing import Annotated, Any

import typer

from legacy.errors import ConfigError, JournalError
from legacy.faults import Faults, fault_lines, parse_faults
from legacy.service import Config, LegacyServer
from stateshift.options import finite

SECRET_ENV = "STATESHIFT_SECRET"

app = typer.Typer()


def _faults_option(values: list[str] | None) -> list[str] | None:
    """Validate `--fault` specs while parsing the command line (typer.BadParameter)."""
    try:
        parse_faults(values or [])
    except ConfigError as exc:
        raise typer.BadParameter(str(exc)) from exc
    return values


_HELP = "\n\n".join(
    [
        "Run the reference OLD state server (in-memory state, append-only log).",
        f"The signing secret comes from the {SECRET_ENV} environment variable.",
        "Faults (--fault NAME[:ARG], repeatable; none: a healthy peer):",
        *(f"- {line}" for line in fault_lines()),
    ]
)


@app.command("legacy", help=_HELP)
def legacy(
    data: Annotated[
        Path,
        typer.Option(
            help="Append-only JSON-lines log (a directory gets legacy-log.jsonl).",
        ),
    ],
    host: Annotated[str, typer.Option(help="Interface to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(min=0, max=65535, help="Port; 0 picks a free one.")] = 8765,
    rate: Annotated[
        float, typer.Option(callback=finite, min=0.001, help="Messages per second per connection.")
    ] = 50.0,
    burst: Annotated[
        float, typer.Option(callback=finite, min=1.0, help="Token bucket depth per connection.")
    ] = 100.0,
    connect_timeout: Annotated[
        float,
        typer.Option(callback=finite, min=0.001, help="Seconds to send CONNECT before close 4401."),
    ] = 10.0,
    idle_timeout: Annotated[
        float,
        typer.Option(
            callback=finite, min=0.001, help="Seconds without a frame or pong before close 4408."
        ),
    ] = 60.0,
    ping_interval: Annotated[
        float,
        typer.Option(
            callback=finite,
            min=0.001,
            help="Seconds between server pings (at most a third of --idle-timeout).",
        ),
    ] = 20.0,
    fault: Annotated[
        list[str] | None,
        typer.Option(
            "--fault",
            metavar="NAME[:ARG]",
            callback=_faults_option,
            help="Inject a fault (repeatable): see the list above.",
        ),
    ] = None,
    seed: Annotated[
        int, typer.Option(help="Seed of the random faults (drop-broadcast, garbage).")
    ] = 0,
) -> None:
    """Run the reference old state server until SIGTERM/SIGINT."""
    secret = os.environ.get(SECRET_ENV, "")
    if not secret:
        typer.echo(
            f"error: {SECRET_ENV} is not set: export the secret shared by the old and new servers",
            err=True,
        )
        raise typer.Exit(code=2)
    config = Config(
        data=data,
        secret=secret,
        host=host,
        port=port,
        rate=rate,
        burst=burst,
        connect_timeout=connect_timeout,
        idle_timeout=idle_timeout,
        ping_interval=ping_interval,
        faults=parse_faults(fault or []),
        seed=seed,
    )
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    if len(secret.encode()) < 32:
        typer.echo(f"warning: {SECRET_ENV} is shorter than 32 bytes", err=True)
    # PyJWT would warn about a short key on every CONNECT; the line above said it once.
    warnings.filterwarnings("ignore", module="jwt")
    try:
        _run(_serve(config))
    except (JournalError, OSError) as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(code=1) from exc


def _run(main: Coroutine[Any, Any, None]) -> None:
    """Run on uvloop when it is installed (cheaper per frame), else on asyncio's loop."""
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a dependency off Windows
        asyncio.run(main)
    else:
        uvloop.run(main)


async def _serve(config: Config) -> None:
    server = LegacyServer(config)
    await server.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    replay = server.replay
    if replay is not None and replay.torn_bytes:
        print(f"log: dropped a torn last line ({replay.torn_bytes} bytes)", file=sys.stderr)
    active = [name for name, value in _active(config.faults)]
    if active:
        print(f"faults: {', '.join(active)}", file=sys.stderr)
    print(f"listening on {server.url}", flush=True)
    try:
        await stop.wait()
    finally:
        await server.stop()


def _active(faults: Faults) -> list[tuple[str, object]]:
    """The faults that differ from a healthy server, for the start-up line."""
    healthy = Faults()
    return [
        (name, getattr(faults, name))
        for name in Faults.__dataclass_fields__
        if getattr(faults, name) != getattr(healthy, name)
    ]
