"""The proxy's control plane on `--admin`: `/healthz`, `/metrics`, and the admin WebSocket
`/v1/control`.

The control protocol follows the game protocol's conventions: JSON objects with `type` and
`id`, answers with `re`, `ERROR {re, code, message}`; the first message must be `CONNECT`
with an admin JWT (same secret as the servers). Commands are registered by name, so the
comparator and the switchover add theirs without touching this module.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable
from http import HTTPStatus
from typing import Any

import orjson
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.datastructures import Headers
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request, Response

from proxy.auth import ControlAuthError, verify_admin
from proxy.relay import MirrorProxy
from proxy.state import ProxyState
from stateshift.runtime import bound_port

log = logging.getLogger("stateshift.proxy.admin")

CONTROL_PATH = "/v1/control"

#: a command gets (the admin's id, the message) and returns the answer's fields
Command = Callable[[str, dict[str, Any]], Awaitable[dict[str, Any]]]


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
        return f"ws://{self.host}:{self.port}"

    async def start(self) -> None:
        """Listen on the admin address."""
        self._server = await serve(
            self._handle,
            self.host,
            self.port_wanted,
            process_request=self._process_request,
            max_size=1 << 20,
            compression=None,
        )

    async def stop(self) -> None:
        """Close the control plane."""
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None

    def _process_request(self, ws: ServerConnection, request: Request) -> Response | None:
        path = request.path.split("?", 1)[0]
        if path == "/healthz":
            return ws.respond(HTTPStatus.OK, "ok\n")
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
