"""Clients of stateshift's request/answer WebSocket channels.

Both the proxy's control plane (`ws://H:P/v1/control`) and a state server's admin path
(`ws://H:P/v1/admin`) speak the same conventions: the first message is `CONNECT` with an
admin JWT, then each request `{"type", "id", …}` gets one answer with `re` equal to its `id`,
or `ERROR {re, code, message}`. `Channel` implements those conventions once; `ControlClient`
is the proxy's control-plane client used by the `compare` and `switchover` CLIs, and
`compare.admin.AdminClient` builds on `Channel` for the servers' admin path.

Errors, drawn where they are defined:

    ControlError(code, message)     an ERROR answer (its wire `code`), or one of:
      code "UNREACHABLE"            cannot connect, or the connection was lost
      code "TIMEOUT"                no answer within the bound
      code "BAD_ANSWER"             the peer answered something that is not the protocol

Requests may be pipelined: a reader task hands each answer to the request with its `re`.
Every wait is bounded by `timeout`.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import os
from types import TracebackType
from typing import Any, Final, Self
from urllib.parse import urlsplit, urlunsplit

import orjson
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidURI
from websockets.uri import parse_uri

CONTROL_PATH: Final = "/v1/control"
ADMIN_TOKEN_ENV: Final = "STATESHIFT_ADMIN_TOKEN"
#: the longest a proxy lets a prepared switch hold its clients (PREPARE's `hold`, seconds)
MAX_HOLD: Final = 60.0
DEFAULT_TIMEOUT: Final = 10.0
#: frames from the peer may be large (full states, findings with both frames)
MAX_ANSWER_SIZE: Final = 16 * 1024 * 1024


class ControlError(Exception):
    """A request failed: an `ERROR` answer (`code` from the wire, `extra` its other fields),
    or `UNREACHABLE`, `TIMEOUT`, `BAD_ANSWER` on this side."""

    def __init__(self, code: str, message: str, **extra: Any) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message
        self.extra = extra


def ws_url_problem(url: str) -> str | None:
    """What makes `url` unusable as a ws:// or wss:// URL to connect to, or None when it is
    one. Every CLI taking a server's or a proxy's address checks it with this before
    connecting (a malformed URL is a usage error, never a traceback)."""
    try:
        parts = urlsplit(url)
        port = parts.port  # a port out of range or not a number raises here
    except ValueError as exc:  # `ws://[::1`, `ws://h:99999`, `ws://h:abc`, `ws://h:-1`
        return str(exc)
    if parts.scheme not in ("ws", "wss"):
        return f"the scheme is {parts.scheme + '://' if parts.scheme else 'missing'}, not ws://"
    if not parts.hostname:
        return "it has no host"
    if port == 0:
        return "port 0 is not a port to connect to"
    try:
        parse_uri(url)  # what `connect` will do with it (a fragment, a user without password)
    except InvalidURI as exc:
        return exc.msg
    except ValueError as exc:
        return str(exc)
    return None


def with_path(url: str, path: str) -> str:
    """`url` with `path` when it has none (`ws://h:p` -> `ws://h:p/v1/control`); a URL that
    cannot be parsed is returned as given (connecting to it fails with UNREACHABLE)."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return url
    if parts.path in ("", "/"):
        parts = parts._replace(path=path)
    return urlunsplit(parts)


def parse_frame(data: str | bytes) -> dict[str, Any] | None:
    """A text frame as a JSON object, or None. Integers beyond 64 bits are parsed exactly."""
    if not isinstance(data, str):
        return None
    try:
        msg = orjson.loads(data)
    except orjson.JSONDecodeError:
        try:  # orjson refuses integers beyond 64 bits; the json module does not
            msg = json.loads(data)
        except ValueError:
            return None
    return msg if isinstance(msg, dict) else None


class Channel:
    """One authenticated request/answer connection (CONNECT first, answers matched by `re`)."""

    def __init__(self, url: str, token: str, *, timeout: float = DEFAULT_TIMEOUT) -> None:
        self.url = url
        self.token = token
        self.timeout = timeout
        #: the CONNECTED answer
        self.connected: dict[str, Any] = {}
        self._ws: ClientConnection | None = None
        self._pending: dict[str, asyncio.Future[dict[str, Any]]] = {}
        self._reader: asyncio.Task[None] | None = None
        self._ids = itertools.count(1)
        self._lost: ControlError | None = None
        self._prefix = f"c{os.getpid()}-{id(self) & 0xFFFF:x}-"

    @property
    def is_open(self) -> bool:
        """Connected and not lost."""
        return self._ws is not None and self._lost is None

    async def open(self) -> dict[str, Any]:
        """Connect and authenticate; return the `CONNECTED` answer."""
        problem = ws_url_problem(self.url)
        if problem is not None:
            raise ControlError("UNREACHABLE", f"{self.url} is not a valid ws:// URL: {problem}")
        try:
            async with asyncio.timeout(self.timeout):
                self._ws = await connect(
                    self.url,
                    open_timeout=None,  # bounded by the timeout around it
                    proxy=None,  # never route through an HTTP proxy from the environment
                    max_size=MAX_ANSWER_SIZE,
                    compression=None,
                )
        except TimeoutError as exc:
            raise ControlError(
                "UNREACHABLE", f"{self.url}: no handshake within {self.timeout:g} s"
            ) from exc
        except (OSError, InvalidHandshake, InvalidURI, ValueError) as exc:
            raise ControlError("UNREACHABLE", f"{self.url}: {exc}") from exc
        self._lost = None
        self._reader = asyncio.create_task(self._read(self._ws))
        try:
            self.connected = await self.request("CONNECT", {"token": self.token}, "CONNECTED")
        except ControlError:
            await self.close()
            raise
        except BaseException:
            # Interrupted (a caller's own bound: cancelled): nothing may be awaited now, and
            # a stalled peer would not answer a closing handshake. Cut the connection.
            self._abandon()
            raise
        return self.connected

    def abandon(self) -> None:
        """Drop the connection at once (no closing handshake, nothing awaited)."""
        self._abandon()

    def _abandon(self) -> None:
        """Drop the connection at once (no closing handshake, nothing awaited)."""
        ws, self._ws = self._ws, None
        if ws is not None and ws.transport is not None:
            ws.transport.abort()
        if self._reader is not None:
            self._reader.cancel()
            self._reader = None
        self._fail_pending(ControlError("UNREACHABLE", "the connection was abandoned"))

    async def close(self) -> None:
        """Close the connection (idempotent); pending requests fail with UNREACHABLE."""
        ws, self._ws = self._ws, None
        if ws is not None:
            with contextlib.suppress(Exception):
                async with asyncio.timeout(self.timeout):
                    await ws.close()
        if self._reader is not None:
            self._reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reader
            self._reader = None
        self._fail_pending(ControlError("UNREACHABLE", "the connection was closed"))

    async def request(
        self, kind: str, fields: dict[str, Any] | None = None, expect: str | None = None
    ) -> dict[str, Any]:
        """Send `{"type": kind, "id": …, **fields}`; return its answer, of type `expect`
        (default: `kind`, the control plane's convention), or raise `ControlError`."""
        answer = await self.send_request(kind, fields or {})
        if answer.get("type") == "ERROR":
            extra = {k: v for k, v in answer.items() if k not in ("type", "re", "code", "message")}
            raise ControlError(str(answer.get("code")), str(answer.get("message", "")), **extra)
        if answer.get("type") != (expect or kind):
            raise ControlError(
                "BAD_ANSWER", f"{kind} answered by {answer.get('type')!r}, not {expect or kind}"
            )
        return answer

    async def send_request(self, kind: str, fields: dict[str, Any]) -> dict[str, Any]:
        """Send one request and return whatever frame answers it (`ERROR` included)."""
        if self._lost is not None:
            raise self._lost
        ws = self._ws
        if ws is None:
            raise ControlError("UNREACHABLE", "not connected")
        msg_id = f"{self._prefix}{next(self._ids)}"
        future: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._pending[msg_id] = future
        try:
            async with asyncio.timeout(self.timeout):
                await ws.send(orjson.dumps({"type": kind, "id": msg_id, **fields}).decode())
                return await future
        except TimeoutError as exc:
            raise ControlError(
                "TIMEOUT", f"no answer to {kind} within {self.timeout:g} s from {self.url}"
            ) from exc
        except ConnectionClosed as exc:
            raise self._lost_with(exc) from exc
        finally:
            self._pending.pop(msg_id, None)

    async def _read(self, ws: ClientConnection) -> None:
        try:
            async for data in ws:
                frame = parse_frame(data)
                if frame is None:
                    self._fail_pending(
                        ControlError("BAD_ANSWER", f"not a JSON object: {data!r:.200}")
                    )
                    continue
                re_id = frame.get("re")
                future = self._pending.get(re_id) if isinstance(re_id, str) else None
                if future is None and re_id is None and frame.get("type") == "ERROR":
                    # an ERROR without a readable id answers the oldest request (answers
                    # come in request order)
                    future = next(iter(self._pending.values()), None)
                if future is not None and not future.done():
                    future.set_result(frame)
                # anything else (broadcasts, late answers) is not ours to wait for
        except ConnectionClosed as exc:
            self._lost_with(exc)
        else:
            self._lost_with(None)
        self._fail_pending(self._lost or ControlError("UNREACHABLE", "the connection was closed"))

    def _lost_with(self, exc: ConnectionClosed | None) -> ControlError:
        if self._lost is None:
            ws = self._ws
            code = ws.close_code if ws is not None else None
            reason = ws.close_reason if ws is not None else None
            detail = f"close code {code}" + (f" ({reason})" if reason else "")
            self._lost = ControlError(
                "UNREACHABLE", f"{self.url}: the connection was lost: {detail}", close_code=code
            )
        return self._lost

    def _fail_pending(self, error: ControlError) -> None:
        for future in self._pending.values():
            if not future.done():
                future.set_exception(error)


class ControlClient:
    """The proxy's control plane: `async with ControlClient(url, token) as c:
    await c.request("STATUS")` returns the answer (a dict with `type`, `re` and its fields)."""

    def __init__(self, url: str, token: str, *, timeout: float = DEFAULT_TIMEOUT) -> None:
        self.channel = Channel(with_path(url, CONTROL_PATH), token, timeout=timeout)

    @property
    def url(self) -> str:
        """The control URL (path included)."""
        return self.channel.url

    @property
    def actor(self) -> str | None:
        """Who the proxy says we are (the token's `sub`)."""
        actor = self.channel.connected.get("actor")
        return actor if isinstance(actor, str) else None

    async def __aenter__(self) -> Self:
        await self.channel.open()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.channel.close()

    async def request(self, command: str, **fields: Any) -> dict[str, Any]:
        """Run one control command; its answer, or `ControlError`."""
        return await self.channel.request(command, fields)
