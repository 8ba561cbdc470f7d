"""`stateshift proxy`: run the mirroring proxy and its control plane."""

from __future__ import annotations

import asyncio
import logging
import sqlite3
from pathlib import Path
from typing import Annotated
from urllib.parse import urlsplit

import typer

from compare.admin import AdminClient, AdminError, AdminUnreachable
from compare.live import LiveComparison
from compare.rules import RulesError
from compare.rules import load as load_rules
from compare.store import FindingStore
from proxy.admin import ControlPlane, primaries
from proxy.relay import MirrorProxy, ProxySettings
from proxy.route import UPSTREAMS, Route
from proxy.state import ProxyState
from proxy.switch import Switchboard
from proxy.tap import Tap
from stateshift import native
from stateshift.control import ws_url_problem
from stateshift.netloc import listen_url
from stateshift.options import finite
from stateshift.runtime import run, serve_until_signalled
from stateshift.tokens import SECRET_ENV, mint_token

app = typer.Typer()


log = logging.getLogger(__name__)


def host_port(value: str, option: str) -> tuple[str, int]:
    """Split `HOST:PORT` (IPv6 in brackets) or fail with a usage error."""
    host, sep, port = value.rpartition(":")
    if not sep or not port.isdigit() or int(port) > 65535:
        raise typer.BadParameter(f"{option} must be HOST:PORT (PORT 0 to 65535), not {value!r}")
    return host.strip("[]") or "127.0.0.1", int(port)


def check_ws_url(value: str, option: str) -> None:
    """Exit 2 unless `value` is a ws:// URL the proxy can connect to (`ws_url_problem`, as
    every CLI checks it; a malformed URL would otherwise start the proxy and fail every
    client's connection with a logged traceback). Not wss://: the proxy takes no TLS
    settings for its upstreams, and no test covers one over TLS."""
    problem = ws_url_problem(value)
    if problem is None and urlsplit(value).scheme != "ws":
        problem = "the scheme must be ws"
    if problem is not None:
        typer.echo(f"error: {option} is not a valid ws:// URL: {value!r} ({problem})", err=True)
        raise typer.Exit(code=2)


@app.command()
def proxy(
    old: Annotated[str, typer.Option(help="URL of the old server, e.g. ws://10.0.0.5:8765")],
    new: Annotated[str, typer.Option(help="URL of the new server.")],
    state: Annotated[Path, typer.Option(help="SQLite file for the route and the history.")],
    listen: Annotated[str, typer.Option(help="HOST:PORT for clients.")] = "127.0.0.1:8080",
    admin: Annotated[str, typer.Option(help="HOST:PORT for health, metrics, control.")] = (
        "127.0.0.1:8081"
    ),
    primary: Annotated[
        str, typer.Option(help="Primary on first start (a persisted route wins).")
    ] = "old",
    mirror: Annotated[bool, typer.Option(help="Mirror to the shadow on first start.")] = True,
    shadow_buffer: Annotated[
        int, typer.Option(min=1, help="Frames a client may have waiting for its shadow.")
    ] = 1024,
    gap_timeout: Annotated[
        float,
        typer.Option(
            callback=finite, min=0.01, help="Seconds to wait for a version nobody claimed."
        ),
    ] = 5.0,
    answer_timeout: Annotated[
        float,
        typer.Option(
            callback=finite, min=0.01, help="Seconds before a silent shadow is declared stalled."
        ),
    ] = 5.0,
    shadow_reopen_rate: Annotated[
        float,
        typer.Option(
            callback=finite,
            min=1.0,
            help="Shadow connections reopened after a loss, at most this many a second in "
            "all (a shadow back after a crash is not reconnected for every client at once).",
        ),
    ] = 200.0,
    shadow_coalesce_ms: Annotated[
        float,
        typer.Option(
            callback=finite,
            min=0,
            help="Milliseconds a shadow copy without a place in its game's order (a "
            "heartbeat) may wait to share a write with the next ones (0: none).",
        ),
    ] = 0.0,
    rules: Annotated[
        Path | None, typer.Option(help="Comparator ignore rules (TOML); default: shipped rules.")
    ] = None,
    resync: Annotated[
        bool, typer.Option(help="Resync a diverged or not comparable game from the primary.")
    ] = False,
    sweep_interval: Annotated[
        float,
        typer.Option(
            callback=finite, min=0, help="Seconds between snapshot sweeps of every game (0: off)."
        ),
    ] = 60.0,
    pair_timeout: Annotated[
        float,
        typer.Option(
            callback=finite,
            min=0.01,
            help="Seconds before a frame without its partner is unpaired.",
        ),
    ] = 10.0,
    stall_timeout: Annotated[
        float,
        typer.Option(
            callback=finite,
            min=0.01,
            help="Seconds a switch waits on a server that owes an answer (the shadow's to a "
            "client, or the switch's own request) before it refuses ('stalled') rather than "
            "hold the clients longer.",
        ),
    ] = 1.0,
    quiesce_timeout: Annotated[
        float,
        typer.Option(
            callback=finite,
            min=0.01,
            help="Seconds a switch, clients paused, waits for the answers in flight before it "
            "refuses ('quiesce'), and for clients' connections to the other server still "
            "opening ('shadow').",
        ),
    ] = 5.0,
    verify_timeout: Annotated[
        float,
        typer.Option(
            callback=finite,
            min=0.01,
            help="Seconds a switch, clients paused, may take to compare the active games on "
            "both servers before it refuses ('verify').",
        ),
    ] = 10.0,
    drain_timeout: Annotated[
        float,
        typer.Option(
            callback=finite,
            min=0,
            help="Seconds a SIGTERM lets the clients leave before the proxy stops: /healthz "
            "answers 503 'draining' (the load balancer sends no new clients) while every "
            "client is still served; then the ones left are closed with 1012 (reconnect). "
            "A second signal stops at once. 0: stop at once.",
        ),
    ] = 0.0,
    secret: Annotated[
        str,
        typer.Option(envvar=SECRET_ENV, show_default=False, help="JWT secret (use the env var)."),
    ] = "",
    log_level: Annotated[str, typer.Option(help="Logging level.")] = "INFO",
) -> None:
    """Run the mirroring proxy: clients connect here as if to the server; every frame goes to
    the primary (whose answers they get) and, in the primary's order, to the shadow.

    Prints `listening on ws://HOST:PORT` and `admin on http://HOST:PORT` once ready.
    """
    if not secret:
        typer.echo(f"error: {SECRET_ENV} is not set (needed for the admin channel)", err=True)
        raise typer.Exit(code=2)
    if primary not in UPSTREAMS:
        raise typer.BadParameter("--primary must be old or new")
    for option, url in (("--old", old), ("--new", new)):
        check_ws_url(url, option)
    if old.rstrip("/") == new.rstrip("/"):
        raise typer.BadParameter(
            "--new must name another server than --old (every frame would be applied twice)"
        )
    if not isinstance(logging.getLevelName(log_level.upper()), int):
        raise typer.BadParameter(f"--log-level must be a logging level, not {log_level!r}")
    logging.basicConfig(level=log_level.upper(), format="%(asctime)s %(levelname)s %(message)s")
    logging.getLogger("websockets").setLevel(max(logging.WARNING, logging.getLogger().level))
    host, port = host_port(listen, "--listen")
    admin_host, admin_port = host_port(admin, "--admin")
    asked = Route(primary=primary, mirroring=mirror)
    try:
        store = ProxyState(state)
        route = store.load_route(asked)
    except (sqlite3.Error, OSError, ValueError, TypeError, AttributeError) as exc:
        typer.echo(f"error: --state {state}: cannot use it: {exc}", err=True)
        raise typer.Exit(code=2) from exc
    if route != asked:  # a flip, a ramp or a finalize persisted: it wins over the flags
        typer.echo(f"route from {state}: {route.describe()} (persisted route wins)")
    settings = ProxySettings(
        old_url=old,
        new_url=new,
        secret=secret,
        state_path=state,
        host=host,
        port=port,
        admin_host=admin_host,
        admin_port=admin_port,
        primary=route.primary,
        shadow_buffer=shadow_buffer,
        gap_timeout=gap_timeout,
        answer_timeout=answer_timeout,
        shadow_coalesce=shadow_coalesce_ms / 1000,
        shadow_reopen_rate=shadow_reopen_rate,
    )
    try:
        ignore_rules = load_rules(rules)
    except RulesError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(code=2) from exc
    relay = MirrorProxy(settings, route, tap=Tap())
    control = ControlPlane(relay, store, secret, admin_host, admin_port)
    samples = FindingStore(state.with_name(state.name + ".findings.db"))
    comparison = LiveComparison(
        relay,
        control,
        ignore_rules,
        samples,
        resync=resync,
        sweep_interval=sweep_interval or None,
        pair_timeout=pair_timeout,
    )

    switchboard = Switchboard(
        relay,
        control,
        store,
        ignore_rules,
        comparison.comparator,
        resync=comparison.resync_now,
        quiesce_timeout=quiesce_timeout,
        verify_timeout=verify_timeout,
        stall_timeout=stall_timeout,
    )

    async def start() -> None:
        await check_secret(relay.urls, secret, settings.open_timeout, primaries(relay.route))
        await relay.start()
        await control.start()
        comparison.start()
        switchboard.start()

    async def drain() -> None:
        await control.drain(drain_timeout)

    async def stop() -> None:
        await switchboard.stop()
        # the relay before the control plane: until the client port is closed, a health
        # check gets 503 `shutting down` rather than a refused connection
        await relay.stop()
        await control.stop()
        await comparison.stop()  # after the commands that read it

    def ready() -> None:
        typer.echo(f"listening on {relay.url}")  # an IPv6 host in brackets
        typer.echo(f"admin on {listen_url('http', admin_host, control.port)}")
        typer.echo(f"hot modules: {native.status()}")

    try:
        code = run(serve_until_signalled(start, stop, ready, drain))
    except OSError as exc:  # an address in use, not ours, or not on this machine
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(code=1) from exc
    except SecretRefused as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(code=2) from exc
    raise typer.Exit(code=code)


class SecretRefused(Exception):
    """A server refused an admin token signed with the proxy's secret."""


async def check_secret(urls: dict[str, str], secret: str, within: float, strict: list[str]) -> None:
    """The servers the route makes primary (`strict`) accept an admin token signed with
    `secret` (STATESHIFT_SECRET), else SecretRefused. The proxy's own admin work (sweeps,
    resyncs, a switch's verification) needs it; clients do not (their tokens are checked by
    the servers), so a wrong secret used to go unnoticed until the first flip was refused.
    A shadow that refuses is logged, not a reason to refuse to start (a shadow's fault must
    change nothing for the clients); nor is a server that cannot be reached (it may be
    down)."""
    token = mint_token(secret, "stateshift-proxy", "admin", ttl=60)

    async def one(name: str, url: str) -> str | None:
        try:
            async with AdminClient(url, token, timeout=within):
                return None
        except AdminUnreachable as exc:
            log.warning("the %s server (%s) could not be asked: %s", name, url, exc.message)
            return None
        except AdminError as exc:
            problem = f"the {name} server ({url}) refused the proxy's admin token: {exc}"
            if name in strict:
                return problem
            log.error("%s (is STATESHIFT_SECRET the servers' secret?)", problem)
            return None

    refusals = await asyncio.gather(*(one(name, url) for name, url in urls.items()))
    problems = [r for r in refusals if r is not None]
    if problems:
        raise SecretRefused("; ".join(problems) + " (is STATESHIFT_SECRET the servers' secret?)")
