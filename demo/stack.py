"""The demo's processes, in-process on loopback: old server, new server, proxy, comparator.

Wired the way `stateshift proxy` wires them (`proxy/cli.py`): the mirroring relay, its
control plane (health, `/metrics`, the control WebSocket), the live comparison with automatic
resync, and the switchboard (check/flip/rollback). Every port is picked free (port 0); every
file lives in one temporary directory. `StaticSite` serves the browser page
(`stateshift/static/`) when it exists.
"""

from __future__ import annotations

import contextlib
import functools
import http.server
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

from compare.live import LiveComparison
from compare.rules import defaults
from compare.store import FindingStore
from legacy.service import Config, LegacyServer
from proxy.admin import ControlPlane
from proxy.relay import MirrorProxy, ProxySettings
from proxy.route import Route
from proxy.state import ProxyState
from proxy.switch import Switchboard
from proxy.tap import Tap
from server.app import ServerSettings, StateServer
from stateshift.tokens import mint_token

#: the browser page, shipped with the package (written for the real-clients tests)
STATIC_DIR: Final = Path(__file__).resolve().parent.parent / "stateshift" / "static"


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:  # `format`: the stdlib's name
        """No access log on the demo's screen."""


class StaticSite:
    """A tiny HTTP server for a directory of static files, on a free port, in a thread."""

    def __init__(self, directory: Path, host: str = "127.0.0.1") -> None:
        handler = functools.partial(_QuietHandler, directory=str(directory))
        self.server = http.server.ThreadingHTTPServer((host, 0), handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        """The site's base URL."""
        host, port = self.server.server_address[:2]
        return f"http://{host!s}:{port}/"

    def close(self) -> None:
        """Stop serving."""
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout=5)


@dataclass
class Stack:
    """The running pieces of a demo (`await stack.stop()` ends them all)."""

    workdir: Path
    secret: str
    old: LegacyServer
    new: StateServer
    proxy: MirrorProxy
    control: ControlPlane
    comparison: LiveComparison
    switchboard: Switchboard
    site: StaticSite | None = None
    _stops: list[Any] = field(default_factory=list)

    @property
    def control_url(self) -> str:
        """The proxy's admin address (control plane, `/metrics`, `/healthz`)."""
        return self.control.url

    @property
    def metrics_url(self) -> str:
        """The proxy's Prometheus endpoint."""
        return f"http://{self.control.host}:{self.control.port}/metrics"

    def admin_token(self, ttl: float = 24 * 3600) -> str:
        """An admin token for the control plane and the servers' admin paths."""
        return mint_token(self.secret, "demo", "admin", ttl=ttl)

    def serve_page(self, directory: Path = STATIC_DIR) -> str | None:
        """Serve the browser page when it exists; its URL, or None."""
        if self.site is None and (directory / "index.html").is_file():
            self.site = StaticSite(directory)
        return self.site.url if self.site is not None else None

    async def stop(self) -> None:
        """Stop everything, newest first."""
        for stop in reversed(self._stops):
            with contextlib.suppress(Exception):
                await stop()
        self._stops.clear()
        if self.site is not None:
            self.site.close()
            self.site = None


async def start_stack(workdir: Path, secret: str, host: str = "127.0.0.1") -> Stack:
    """Start old server, new server, proxy, control plane, comparator and switchboard."""
    stops: list[Any] = []
    try:
        old = LegacyServer(Config(data=workdir / "old.jsonl", secret=secret, host=host, port=0))
        await old.start()
        stops.append(old.stop)
        new = StateServer(ServerSettings(db=workdir / "new.db", secret=secret, host=host, port=0))
        await new.start()
        stops.append(new.stop)
        settings = ProxySettings(
            old_url=old.url,
            new_url=new.url,
            secret=secret,
            state_path=workdir / "proxy.db",
            host=host,
            port=0,
            admin_host=host,
            admin_port=0,
        )
        store = ProxyState(settings.state_path)
        route = store.load_route(Route(primary="old", mirroring=True))
        rules = defaults()
        relay = MirrorProxy(settings, route, tap=Tap())
        await relay.start()
        stops.append(relay.stop)
        control = ControlPlane(relay, store, secret, host, 0)
        await control.start()
        stops.append(control.stop)
        comparison = LiveComparison(
            relay,
            control,
            rules,
            FindingStore(workdir / "findings.db"),
            resync=True,
            sweep_interval=None,  # the demo sweeps once, at the end
            pair_timeout=5.0,
        )
        comparison.start()
        stops.append(comparison.stop)
        board = Switchboard(relay, control, store, rules, comparison.comparator)
        board.start()
        stops.append(board.stop)
    except BaseException:
        for stop in reversed(stops):
            with contextlib.suppress(Exception):
                await stop()
        raise
    # stopped (newest first) as `stateshift proxy` stops them: switchboard, control plane,
    # relay, then the comparison; then the servers
    stops = [old.stop, new.stop, comparison.stop, relay.stop, control.stop, board.stop]
    return Stack(workdir, secret, old, new, relay, control, comparison, board, None, stops)
