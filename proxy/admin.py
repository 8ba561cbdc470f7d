"""The proxy's control plane on `--admin`: `/healthz`, `/metrics`, and the admin WebSocket
`/v1/control`.

`/healthz` says whether this proxy can serve clients, for a load balancer or an orchestrator:
503 while it drains before a stop (`--drain-timeout`: clients are still served, new ones
too, but a load balancer should send no more), while it is shutting down (its client port no
longer accepts), or while an upstream that the route makes primary (for some games) cannot be
reached; 200 otherwise. Reachable means that a connection to the upstream, made by the check
itself, got an HTTP answer (any status: a primary that answers its own `/healthz` 503 fails
every proxy alike, so that is reported, not judged); one probe at a time per upstream, its
verdict shared by the checks of the next `PROBE_TTL` seconds. The shadow is reported, never
judged: a shadow fault must not take the proxy out of a load balancer (clients never see the
shadow). The first line of the body is the verdict (`ok`, `draining`, `shutting down`,
`primary upstream unreachable`), the next ones the figures behind it.

The control protocol follows the game protocol's conventions: JSON objects with `type` and
`id`, answers with `re`, `ERROR {re, code, message}`; the first message must be `CONNECT`
with an admin JWT (same secret as the servers). Commands are registered by name, so the
comparator and the switchover add theirs without touching this module.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from http import HTTPStatus
from typing import Any

import orjson
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.datastructures import Headers
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request, Response

from proxy.auth import ControlAuthError, verify_admin
from proxy.reachability import probe
from proxy.relay import MirrorProxy
from proxy.route import Route, other
from proxy.state import ProxyState
from stateshift.netloc import listen_url
from stateshift.runtime import bound_port

log = logging.getLogger("stateshift.proxy.admin")

CONTROL_PATH = "/v1/control"

#: a command gets (the admin's id, the message) and returns the answer's fields
Command = Callable[[str, dict[str, Any]], Awaitable[dict[str, Any]]]

#: seconds a probe's verdict on an upstream answers the health checks that follow it (many
#: checkers, one connection to the primary a second at most)
PROBE_TTL = 1.0
#: the longest a probe waits for an upstream's answer (capped by the proxy's open_timeout):
#: a load balancer's health-check timeout should be longer
PROBE_TIMEOUT = 2.0


@dataclass(frozen=True, slots=True)
class Probe:
    """One attempt to reach an upstream: `reachable` when it answered HTTP at all."""

    reachable: bool
    #: what it answered (`200 ok`), or why it could not be reached (`connection refused`)
    detail: str
    #: time.monotonic() when the attempt ended
    at: float
    #: time.monotonic() since when the upstream has been reachable (or not) without a break
    since: float
    #: time.monotonic() of the last probe that reached it (None: none since the proxy
    #: started); probes run only when a health check asks, so `since` of an unreachable
    #: one is when a check first found it down, not when it went down
    reached: float | None = None


class UpstreamWatch:
    """Whether each upstream can be reached, probed when a health check asks (never in the
    background: no connection to an upstream nobody asked about), one probe at a time per
    upstream, its verdict shared for `ttl` seconds."""

    def __init__(self, urls: dict[str, str], ttl: float, within: float) -> None:
        self.urls = urls
        self.ttl = ttl
        self.within = within
        self.last: dict[str, Probe] = {}
        self._running: dict[str, asyncio.Task[Probe]] = {}

    async def check(self, name: str) -> Probe:
        """The upstream's reachability: probed now, unless a probe is under way (its
        verdict is awaited) or ended less than `ttl` seconds ago."""
        last = self.last.get(name)
        if last is not None and time.monotonic() - last.at < self.ttl:
            return last
        task = self._running.get(name)
        if task is None:
            task = asyncio.ensure_future(self._probe(name))
            self._running[name] = task
            task.add_done_callback(lambda _: self._running.pop(name, None))
        # shielded: a checker that hangs up must not cancel the probe the others wait for
        return await asyncio.shield(task)

    async def _probe(self, name: str) -> Probe:
        reachable, detail = await probe(self.urls[name], self.within)
        now = time.monotonic()
        last = self.last.get(name)
        since = last.since if last is not None and last.reachable == reachable else now
        reached = now if reachable else (last.reached if last is not None else None)
        self.last[name] = result = Probe(reachable, detail, now, since, reached)
        return result

    async def stop(self) -> None:
        """Cancel the probes under way."""
        tasks = list(self._running.values())
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task


def primaries(route: Route) -> list[str]:
    """The upstreams the route makes primary for some clients: `route.primary` (connections
    without a game, and every game without a ramp), and under a ramp each side with a share."""
    names = [route.primary]
    if route.share_of(other(route.primary)) > 0:  # only under a ramp
        names.append(other(route.primary))
    return names


def health(
    serving: bool,
    route: Route,
    urls: dict[str, str],
    probes: dict[str, Probe],
    status: dict[str, Any],
    now: float,
    drain_ends: float | None = None,
) -> tuple[HTTPStatus, str]:
    """The health answer (pure): the status and a body whose first line is the verdict.
    `drain_ends`: when a drain under way closes the clients left (same clock as `now`)."""
    if not serving:
        return HTTPStatus.SERVICE_UNAVAILABLE, "shutting down\nclient port closed\n"
    if drain_ends is not None:
        return HTTPStatus.SERVICE_UNAVAILABLE, (
            f"draining\nconnected clients: {status['connections']}, still served; the proxy "
            f"stops once they have left, or in {max(0.0, drain_ends - now):.0f} s (the rest "
            "are closed with 1012)\n"
        )
    lines: list[str] = []
    unreachable = False
    ramp = route.ramp
    for name in primaries(route):
        found = probes[name]
        where = f"primary {name} ({urls[name]}"
        if ramp is not None:
            where += f", {route.share_of(name):g}% of games"
        where += ")"
        if found.reachable:
            lines.append(f"{where}: reachable, {found.detail}")
        else:
            unreachable = True
            when = (
                "never reached since this proxy started"
                if found.reached is None
                else f"last reached {now - found.reached:.0f} s ago"
            )
            lines.append(f"{where}: unreachable: {found.detail} ({when})")
    if route.mirroring:
        lines.append(
            f"shadow: {status['shadow_connected']} of {status['mirrored_connections']} mirrored "
            "connections connected (reported, not judged)"
        )
    else:
        lines.append("shadow: none (mirroring finalized)")
    if status["paused"]:
        lines.append("paused: a switchover holds client frames")
    verdict = "primary upstream unreachable" if unreachable else "ok"
    code = HTTPStatus.SERVICE_UNAVAILABLE if unreachable else HTTPStatus.OK
    return code, "\n".join([verdict, *lines]) + "\n"


class CommandError(Exception):
    """A command refused: `code` goes on the wire (BAD_MESSAGE, CONFLICT, FAILED, …)."""

    def __init__(self, code: str, message: str, **extra: Any) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.extra = extra


class ControlPlane:
    """Health, metrics and the authenticated control channel of one proxy."""

    def __init__(
        self,
        proxy: MirrorProxy,
        state: ProxyState,
        secret: str,
        host: str = "127.0.0.1",
        port: int = 8081,
    ) -> None:
        self.proxy = proxy
        self.state = state
        self.secret = secret
        self.host = host
        self.port_wanted = port
        self.commands: dict[str, Command] = {}
        self._server: Server | None = None
        self._stopping = False
        #: when a drain under way ends (monotonic), if one is
        self._drain_ends: float | None = None
        self.upstreams = UpstreamWatch(
            proxy.urls, PROBE_TTL, min(PROBE_TIMEOUT, proxy.settings.open_timeout)
        )
        self.register("STATUS", self._status)
        self.register("ROUTE", self._route)
        self.register("HISTORY", self._history)

    def register(self, name: str, command: Command) -> None:
        """Add (or replace) a control command."""
        self.commands[name] = command

    @property
    def port(self) -> int:
        assert self._server is not None
        return bound_port(self._server)

    @property
    def url(self) -> str:
        return listen_url("ws", self.host, self.port)

    async def start(self) -> None:
        """Listen on the admin address."""
        self._stopping = False
        self._server = await serve(
            self._handle,
            self.host,
            self.port_wanted,
            process_request=self._process_request,
            max_size=1 << 20,
            compression=None,
        )

    async def stop(self) -> None:
        """Close the control plane (health checks racing the close are told 503)."""
        self._stopping = True
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None
        await self.upstreams.stop()

    async def drain(self, within: float) -> None:
        """Let the clients leave before a stop, for `within` seconds at most: `/healthz`
        answers 503 `draining`, so that a load balancer sends no new clients, while every
        connection (a new one too) is still served. Returns once no client is connected."""
        if within <= 0:
            return
        self._drain_ends = time.monotonic() + within
        log.info(
            "draining: connected clients: %d; stopping once they have left, or in %g s",
            len(self.proxy.sessions),
            within,
        )
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.proxy.vacated.wait(), within)

    def serving(self) -> bool:
        """Whether the proxy accepts clients: its client port is open, and neither it nor
        this control plane is stopping."""
        return not self._stopping and self.proxy.serving

    async def healthz(self) -> tuple[HTTPStatus, str]:
        """The health answer: status and body (see the module's docstring)."""
        route = self.proxy.route
        serving = self.serving()
        probes: dict[str, Probe] = {}
        drain_ends = self._drain_ends
        if serving and drain_ends is None:
            names = primaries(route)
            found = await asyncio.gather(*(self.upstreams.check(name) for name in names))
            probes = dict(zip(names, found, strict=True))
            serving = self.serving()  # it may have begun to stop while the probes ran
        return health(
            serving, route, self.proxy.urls, probes, self.status(), time.monotonic(), drain_ends
        )

    async def _process_request(self, ws: ServerConnection, request: Request) -> Response | None:
        path = request.path.split("?", 1)[0]
        if path == "/healthz":
            code, text = await self.healthz()
            return ws.respond(code, text)
        if path == "/metrics":
            body = generate_latest(self.proxy.metrics.registry)
            headers = Headers([("Content-Type", CONTENT_TYPE_LATEST)])
            headers["Content-Length"] = str(len(body))
            return Response(HTTPStatus.OK, "OK", headers, body)
        if path != CONTROL_PATH:
            return ws.respond(HTTPStatus.NOT_FOUND, "not found\n")
        return None

    async def _handle(self, ws: ServerConnection) -> None:
        actor: str | None = None
        try:
            async for raw in ws:
                try:
                    msg = orjson.loads(raw) if isinstance(raw, str) and raw[:1] == "{" else None
                except orjson.JSONDecodeError:
                    msg = None  # answered BAD_MESSAGE below; the channel stays open
                if not isinstance(msg, dict) or not isinstance(msg.get("id"), str):
                    await self._error(ws, None, "BAD_MESSAGE", "send a JSON object with an id")
                    continue
                msg_id, kind = msg["id"], msg.get("type")
                if actor is None:
                    if kind != "CONNECT":
                        await self._error(ws, msg_id, "UNAUTHENTICATED", "send CONNECT first")
                        continue
                    try:
                        actor = verify_admin(msg.get("token"), self.secret)
                    except ControlAuthError as exc:
                        await self._error(ws, msg_id, exc.code, exc.message)
                        await ws.close(4401 if exc.code == "UNAUTHENTICATED" else 4403, exc.code)
                        return
                    await self._send(ws, {"type": "CONNECTED", "re": msg_id, "actor": actor})
                    continue
                command = self.commands.get(kind) if isinstance(kind, str) else None
                if command is None:
                    await self._error(ws, msg_id, "UNKNOWN_TYPE", f"unknown command {kind!r}")
                    continue
                try:
                    answer = await command(actor, msg)
                except CommandError as exc:
                    await self._error(ws, msg_id, exc.code, exc.message, **exc.extra)
                    continue
                except Exception as exc:
                    log.exception("control command %s failed", kind)
                    await self._error(ws, msg_id, "INTERNAL", f"{type(exc).__name__}: {exc}")
                    continue
                await self._send(ws, {"type": kind, "re": msg_id, **answer})
        except ConnectionClosed:
            pass

    async def _send(self, ws: ServerConnection, frame: dict[str, Any]) -> None:
        await ws.send(orjson.dumps(frame).decode())

    async def _error(
        self, ws: ServerConnection, re_id: str | None, code: str, message: str, **extra: Any
    ) -> None:
        await self._send(
            ws, {"type": "ERROR", "re": re_id, "code": code, "message": message, **extra}
        )

    # ----------------------------------------------------------------- commands

    def status(self) -> dict[str, Any]:
        """The proxy's live figures (also used by readiness checks)."""
        proxy = self.proxy
        sessions = list(proxy.sessions.values())
        mirrored = [s for s in sessions if s.mirrored]
        shadow_open = sum(1 for s in mirrored if proxy.shadow_ready(s))
        return {
            "route": proxy.route.to_dict(),
            "connections": len(sessions),
            "mirrored_connections": len(mirrored),
            "shadow_connected": shadow_open,
            "shadow_buffered": proxy.order.buffered(),
            "paused": not proxy.gate.is_set(),
            "time": time.time(),
        }

    async def _status(self, actor: str, msg: dict[str, Any]) -> dict[str, Any]:
        return {"status": self.status()}

    async def _route(self, actor: str, msg: dict[str, Any]) -> dict[str, Any]:
        return {"route": self.proxy.route.to_dict()}

    async def _history(self, actor: str, msg: dict[str, Any]) -> dict[str, Any]:
        limit = msg.get("limit", 50)
        if type(limit) is not int or not 1 <= limit <= 1000:
            raise CommandError("BAD_MESSAGE", "`limit` must be an integer from 1 to 1000")
        return {"events": await self.state.history(limit)}
