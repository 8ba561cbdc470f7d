"""The `stateshift` console script: one typer app joining each component's sub-commands."""

from __future__ import annotations

from typing import Annotated

import typer

from compare.cli import app as compare_app
from compare.cli import backfill
from conformance.cli import app as conformance_app
from demo.cli import app as demo_app
from legacy.cli import app as legacy_app
from loadgen.cli import app as loadgen_app
from proxy.cli import app as proxy_app
from server.cli import app as server_app
from server.rules import is_identifier
from stateshift import native
from stateshift.options import finite
from stateshift.tokens import ROLES, SECRET_ENV, mint_token
from switchover.cli import app as switchover_app

app = typer.Typer(
    name="stateshift",
    help="Move a live, stateful WebSocket game server to a new one without its users noticing.",
    no_args_is_help=True,
    add_completion=False,
)
# Each component owns its typer app; their commands appear at the top level.
for component in (server_app, legacy_app, conformance_app, proxy_app, loadgen_app, demo_app):
    app.add_typer(component)
app.add_typer(compare_app, name="compare")
app.add_typer(switchover_app, name="switchover")
app.command()(backfill)


@app.command()
def token(
    sub: Annotated[str, typer.Option(help="Player id (the `sub` claim).")],
    role: Annotated[str, typer.Option(help="player | observer | admin")] = "player",
    game: Annotated[
        list[str] | None,
        typer.Option("--game", help="A game the token may open (repeat); default: all (`*`)."),
    ] = None,
    ttl: Annotated[float, typer.Option(callback=finite, help="Lifetime in seconds.")] = 3600.0,
    secret: Annotated[
        str, typer.Option(envvar=SECRET_ENV, show_default=False, help="Signing secret.")
    ] = "",
) -> None:
    """Print a signed client token (JWT, HS256) on stdout."""
    if not secret:
        typer.echo(f"error: {SECRET_ENV} is not set (the secret shared by both servers)", err=True)
        raise typer.Exit(code=2)
    if role not in ROLES:
        typer.echo(f"error: --role must be one of {', '.join(ROLES)}", err=True)
        raise typer.Exit(code=2)
    # the servers refuse a token whose ids they cannot read: say so now, not at CONNECT
    ids = [sub, *(g for g in game or [] if g != "*")]
    bad = next((value for value in ids if not is_identifier(value)), None)
    if bad is not None:
        typer.echo(
            f"error: {bad!r} is not an id (1 to 64 of A-Z a-z 0-9 _ . -; --game also *)",
            err=True,
        )
        raise typer.Exit(code=2)
    typer.echo(mint_token(secret, sub, role, game or ["*"], ttl))


@app.command(name="native")
def native_status(
    fresh: Annotated[
        bool, typer.Option(help="Exit 1 unless every hot module is compiled and up to date.")
    ] = False,
) -> None:
    """Say whether the hot modules run compiled (mypyc) or from source, and why."""
    typer.echo(native.status())
    missing, stale = native.inspect()
    if fresh and (missing or stale):
        raise typer.Exit(code=1)


def main() -> None:
    """Entry point of the console script."""
    app()
