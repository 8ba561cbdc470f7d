"""The relay: client sockets in, two upstream sockets out per client (primary and shadow).

The client path forwards first and thinks later: a client frame is written to the primary,
as it was received, as soon as its bytes are complete (`proxy.frames`), and a primary frame
is written to the client the same way, before either is parsed. Everything else (parsing,
ordering for the shadow, latency, the tap) runs once per event-loop turn, after every socket
that was ready in that turn has been relayed (`settle`), and the shadow is never awaited by
the client path: frames released to it are written without awaiting, and its connection is
opened, lost and retried on the side.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import itertools
import logging
import re
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from http import HTTPStatus
from pathlib import Path
from typing import Any

import orjson
from websockets.asyncio.client import connect
from websockets.asyncio.connection import Connection
from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.datastructures import Headers
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidHeader, InvalidStatus
from websockets.frames import Frame, Opcode
from websockets.headers import parse_subprotocol
from websockets.http11 import Request, Response
from websockets.protocol import OPEN
from websockets.typing import Subprotocol

from proxy.frames import ClientSide, UpstreamSide
from proxy.metrics import ProxyMetrics
from proxy.reachability import Reachability, http_get, plain_response
from proxy.route import Route, other
from proxy.sequencer import Event, ShadowOrder, readable_id
from proxy.splice import can_splice, end_splice, splice
from proxy.tap import Tap, TapNotice, TapRecord
from stateshift.exactjson import exact_json
from stateshift.netloc import listen_url
from stateshift.runtime import bound_port
from stateshift.wsclose import close_within

log = logging.getLogger("stateshift.proxy")

GAME_PATH = re.compile(r"/v1/games/([A-Za-z0-9_.-]{1,64})")
#: request headers passed upstream as they are (auth, cookies, origin, identity)
FORWARDED_HEADERS = ("Authorization", "Cookie", "Origin", "User-Agent")
#: close codes that cannot be sent in a close frame: the peer vanished
NO_CLOSE_FRAME = frozenset({1005, 1006, 1015})
#: a primary's closes that end a session for the server's reasons, not the client's (going
#: away, restarting, overloaded, bad gateway): counted as lost primaries
PRIMARY_GONE = frozenset({1001, 1012, 1013, 1014})
#: the protocol's close for a missing or bad CONNECT (PROTOCOL.md, close codes)
CLOSE_UNAUTHENTICATED = 4401
#: most message ids tracked per upstream and connection for answer latency
MAX_TRACKED = 4096
#: the longest plain HTTP answer (a health check) relayed from the primary
PLAIN_HTTP_LIMIT = 1 << 20
#: the shadow's latest broadcasts kept per connection, for a flip (`MirrorProxy.flipped`)
SHADOW_STATES_KEPT = 32


@dataclass(slots=True)
class ProxySettings:
    """Everything `stateshift proxy` can be told."""

    old_url: str
    new_url: str
    secret: str
    state_path: Path
    host: str = "127.0.0.1"
    port: int = 8080
    admin_host: str = "127.0.0.1"
    admin_port: int = 8081
    primary: str = "old"
    max_size: int = 1024 * 1024
    shadow_buffer: int = 1024
    gap_timeout: float = 5.0
    answer_timeout: float = 5.0
    open_timeout: float = 5.0
    ping_interval: float | None = 20.0
    retry_max: float = 5.0
    #: shadow connections reopened after a loss, at most this many a second in all (a shadow
    #: back after a crash under thousands of clients is not reconnected in one burst)
    shadow_reopen_rate: float = 200.0
    #: a shadow whose unsent output exceeds this is given up (it does not read)
    shadow_write_limit: int = 4 * 1024 * 1024
    #: seconds a released shadow copy may wait to share one write with the next ones of its
    #: connection (0, the default: write each turn). Only copies without a place in their
    #: game's order wait (heartbeats, ...): a change, or a read at a version, goes at once
    #: (with what waited before it). Shadow answer latency is measured from the write. Off by
    #: default: the CPU it saves was within noise, and a flip writes the waiting copies just
    #: before it swaps roles, so their answers are likelier to arrive after the swap.
    shadow_coalesce: float = 0.0
    #: a client that takes longer than this to take a frame is dropped (it does not read):
    #: the proxy must not keep it, and what it buffers, forever
    client_send_timeout: float = 30.0
    tap_capacity: int = 65_536


def parse(is_text: bool, payload: bytes) -> dict[str, Any] | None:
    """A message as a JSON object, or None (binary, not JSON, not an object)."""
    if not is_text:
        return None
    try:
        msg = orjson.loads(payload)
    except orjson.JSONDecodeError:
        # the servers read integers too long for a double (note 30): so must the proxy,
        # or a frame they answer by its id is taken for one answered `re: null`
        msg = exact_json(payload)
    return msg if isinstance(msg, dict) else None


def crashed(code: int | None) -> bool:
    """An upstream's close that is a crash: no close frame, or 1011 (an internal error)."""
    return code is None or code in NO_CLOSE_FRAME or code == 1011


def writable(conn: Connection) -> bool:
    """Whether a frame can be written to `conn` now without awaiting: it is open and its
    peer keeps up (its write buffer is below websockets' high-water mark). When it is open
    but not writable, the caller awaits `conn.drain()` first (backpressure).

    Frames written this way go straight to the transport, between websockets' own writes
    (each a whole frame: pongs, close frames). The relay never sends a fragmented message
    with websockets' `send()`, so no frame can land between two fragments."""
    return conn.protocol.state is OPEN and not conn.paused


def game_of(path: str) -> str | None:
    """The game id of a game path, else None."""
    match = GAME_PATH.fullmatch(path.split("?", 1)[0])
    return match.group(1) if match else None


@dataclass(eq=False, slots=True)
class Late:
    """After a flip, what the new primary still owed as the shadow: its answers to `ids`,
    and its broadcasts up to version `floor`. The client had those from the previous
    primary; they go to the bookkeeping as the shadow's frames, not to the client. The
    window closes when nothing is owed any more (a broadcast past `floor` arrived: the
    connection's later ones are newer), or at `until` (a shadow that never answers)."""

    #: `re` -> answers owed with it (None: `ERROR`s answering frames without a readable id)
    ids: dict[str | None, int]
    floor: int | None
    until: float


@dataclass(eq=False, slots=True)
class Session:
    """One client connection and its two upstream connections."""

    id: int
    client: ClientSide
    path: str
    game_id: str | None
    headers: list[tuple[str, str]]
    subprotocols: list[Subprotocol]
    primary: str
    up: dict[str, UpstreamSide | None] = field(default_factory=dict)
    mirrored: bool = True
    #: relayed as bytes (proxy/splice.py), not frames
    spliced: bool = False
    closed: bool = False
    #: upstreams the proxy itself closed (the client left, or mirroring ended): not faults
    deliberate: set[str] = field(default_factory=set)
    #: the client said DISCONNECT: a shadow closing with 1000 is then its normal answer
    disconnecting: bool = False
    #: the client's CONNECT frame (masked, as received), replayed to a revived shadow
    connect_frame: bytes | None = None
    #: its id: the revived shadow's answer to the replay is owed like any other
    connect_id: str | None = None
    #: frames without a readable id forwarded to each upstream as primary, not yet
    #: answered (`ERROR re: null`): a flip waits for them too
    nameless: dict[str, int] = field(default_factory=lambda: {"old": 0, "new": 0})
    #: what `_release_held` waits on while the primary does not drain (a flip cancels it)
    rewait: asyncio.Future[None] | None = None
    #: message id -> time it was forwarded, per upstream (answer latency)
    sent: dict[str, dict[str, float]] = field(default_factory=dict)
    tasks: set[asyncio.Task[Any]] = field(default_factory=set)
    #: client frames waiting for the gate (a flip) or for the primary to drain, in order
    held: deque[tuple[bool, bytes, bytes]] | None = None
    #: primary frames waiting for the client to drain, in order
    to_client: deque[bytes] | None = None
    #: upstreams whose reading is paused until the client drains
    paused: set[UpstreamSide] = field(default_factory=set)
    #: the task writing `to_client` while it is not empty
    drainer: asyncio.Task[Any] | None = None
    #: what the primary still owes from before the last flip (None: nothing)
    late: Late | None = None
    #: the newest version of the game whose broadcast the client got (from its primary)
    delivered: int = 0
    #: the shadow's latest broadcasts (version, payload): at a flip, those newer than
    #: `delivered` go to the client (another proxy's clients may have made them, and the
    #: previous primary's copy would now arrive as the shadow's)
    shadow_states: deque[tuple[int, bytes]] = field(
        default_factory=lambda: deque(maxlen=SHADOW_STATES_KEPT)
    )
    #: the newest version pushed out of `shadow_states` (kept no longer)
    evicted: int = 0
    #: shadow upstreams the proxy cut to start afresh (the order gave them up: stalled or
    #: overflowed): their close is not a new fault; they reconnect (with the usual backoff)
    recycling: set[str] = field(default_factory=set)

    @property
    def shadow(self) -> str:
        return other(self.primary)

    def ended(self) -> bool:
        """The client is gone (a call, not an attribute: re-read after every await)."""
        return self.closed


@dataclass(eq=False, slots=True, init=False)
class ShadowBatch:
    """Copies released to one shadow connection, waiting to share one write (`__init__`
    written out: see `proxy.sequencer.Entry`)."""

    session: Session
    name: str
    up: UpstreamSide
    frames: list[bytes]
    ids: list[str]

    def __init__(self, session: Session, name: str, up: UpstreamSide) -> None:
        self.session = session
        self.name = name
        self.up = up
        self.frames = []
        self.ids = []


class MirrorProxy:
    """The mirroring proxy's data plane (the control plane is in `proxy.admin`)."""

    def __init__(
        self,
        settings: ProxySettings,
        route: Route,
        metrics: ProxyMetrics | None = None,
        tap: Tap | None = None,
    ) -> None:
        self.settings = settings
        self.route = route
        self.metrics = metrics or ProxyMetrics()
        self.tap = tap
        self.urls = {"old": settings.old_url.rstrip("/"), "new": settings.new_url.rstrip("/")}
        #: per upstream: known unreachable? (shared by every client's shadow connection)
        self.reach = {
            name: Reachability(
                url,
                rate=settings.shadow_reopen_rate,
                retry_max=settings.retry_max,
                open_timeout=settings.open_timeout,
                on_probe_failed=functools.partial(self._probe_failed, name),
            )
            for name, url in self.urls.items()
        }
        self.order = ShadowOrder(
            max_buffer=settings.shadow_buffer,
            gap_timeout=settings.gap_timeout,
            answer_timeout=settings.answer_timeout,
        )
        self.sessions: dict[int, Session] = {}
        #: set while no client is connected or connecting (what a drain waits for)
        self.vacated = asyncio.Event()
        self.vacated.set()
        #: upgrades whose primary connection is being opened
        self._connecting = 0
        #: open while client frames may flow upstream; cleared during a flip
        self.gate = asyncio.Event()
        self.gate.set()
        self._ids = itertools.count(1)
        #: upstream opened during a client's handshake: (connection, its name, headers sent)
        self._handshakes: dict[
            ServerConnection, tuple[UpstreamSide, str, list[tuple[str, str]]]
        ] = {}
        #: bookkeeping of frames already forwarded, done once per event-loop turn: every
        #: socket that is ready in a turn is relayed before any frame is thought about
        self._later: list[tuple[Callable[..., None], tuple[Any, ...]]] = []
        #: held by a switch's commit (from its readiness wait to the swap) and by a resync
        #: (from choosing the primary to the import): a resync must not read one server and
        #: write the other across a swap (it would overwrite the new primary)
        self.swap_lock = asyncio.Lock()
        #: released shadow copies not written yet, per shadow connection (see `flush`)
        self._to_shadow: dict[UpstreamSide, ShadowBatch] = {}
        self._coalescing: asyncio.TimerHandle | None = None
        self._server: Server | None = None
        self._ticker: asyncio.Task[None] | None = None
        self._orphans: set[asyncio.Future[None]] = set()
        self.metrics.watch(self._snapshot)
        # bound metric children: a labels() lookup per frame costs more than the count
        self._counted = {
            (direction, upstream, role): self.metrics.frames.labels(direction, upstream, role)
            for direction in ("client", "upstream")
            for upstream in ("old", "new")
            for role in ("primary", "shadow")
        }
        self._latency = {
            (role, upstream): self.metrics.latency.labels(role, upstream)
            for upstream in ("old", "new")
            for role in ("primary", "shadow")
        }
        self._publish_route()

    # ----------------------------------------------------------------- lifecycle

    @property
    def port(self) -> int:
        assert self._server is not None
        return bound_port(self._server)

    @property
    def url(self) -> str:
        return listen_url("ws", self.settings.host, self.port)

    @property
    def serving(self) -> bool:
        """Whether the client port accepts connections: started, and `stop` not begun
        (websockets closes the listener one loop turn after `close()`)."""
        server = self._server
        return server is not None and server.close_task is None and server.is_serving()

    async def start(self) -> None:
        """Listen for clients."""
        self._server = await serve(
            self._handle,
            self.settings.host,
            self.settings.port,
            create_connection=ClientSide,
            process_request=self._process_request,
            select_subprotocol=self._select_subprotocol,
            max_size=self.settings.max_size,
            compression=None,
            ping_interval=self.settings.ping_interval,
            ping_timeout=None,  # a proxy must not invent closes; liveness is the servers' job
            server_header=None,
        )
        self._ticker = asyncio.create_task(self._tick(), name="shadow-order-tick")

    async def stop(self) -> None:
        """Stop listening and close every client with 1012 (reconnect elsewhere)."""
        if self._server is None:
            return
        for session in list(self.sessions.values()):
            # A spliced session is a byte stream: no 1012 close frame can be put in it.
            end_splice(session.client)
        self._server.close(close_connections=True, code=1012, reason="proxy restarting")
        await self._server.wait_closed()
        if self._coalescing is not None:
            self._coalescing.cancel()
            self._coalescing = None
        if self._ticker is not None:
            self._ticker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._ticker
        for reach in self.reach.values():
            await reach.stop()
        self._server = None

    def set_route(self, route: Route) -> None:
        """Adopt a new route for new connections (flips go through `proxy.switch`)."""
        self.route = route
        self._publish_route()

    def finalize(self, route: Route) -> None:
        """Stop mirroring for good: close every shadow connection (after a flip, the old
        server stops receiving traffic)."""
        self.set_route(route)
        self.write_shadows()  # what was released before the end is sent, then they close
        now = time.monotonic()
        for session in list(self.sessions.values()):
            if not session.mirrored:
                continue
            session.mirrored = False
            session.deliberate.add(session.shadow)
            self.order.remove_conn(session.id, now)
            up = session.up.get(session.shadow)
            if up is not None:
                closing = close_within(up, self.settings.open_timeout, 1000, "mirroring finalized")
                self._spawn(session, closing)
        retired = self.reach[other(route.primary)]
        retired.close()  # no shadow any more: stop probing it
        self.flush()

    def shadow_ready(self, session: Session, name: str | None = None) -> bool:
        """Whether the session's upstream `name` (default: its shadow) is connected, open,
        and receiving the client's frames (the order has not given it up)."""
        name = session.shadow if name is None else name
        up = session.up.get(name)
        if up is None or up.protocol.state is not OPEN or name in session.recycling:
            return False
        conn = self.order.conns.get(session.id)
        return conn is not None and not conn.dead and conn.shadow_open

    def _publish_route(self) -> None:
        route = self.route
        ramp = route.share()
        # the upstream that is primary for all games, or for most of them under a ramp
        # (`route.primary` is then only the one of connections without a game)
        most = route.primary if ramp == 50.0 else ("new" if ramp > 50.0 else "old")
        for upstream in ("old", "new"):
            self.metrics.route_primary.labels(upstream).set(1 if most == upstream else 0)
        self.metrics.route_ramp.set(ramp)
        self.metrics.mirroring.set(1 if route.mirroring else 0)

    def _snapshot(self) -> dict[str, float]:
        values = {
            "buffered": float(self.order.buffered()),
            "tap_backlog": float(len(self.tap)) if self.tap is not None else 0.0,
        }
        # client connections by state (a partition: they add up to client_connections,
        # plus the handshakes in progress)
        values["conn:handshaking"] = float(len(self._handshakes))
        for session in self.sessions.values():
            if session.closed:
                continue  # the client left; its shadow finishing is not a client connection
            if session.spliced:
                state = "conn:spliced"
            elif session.held is not None:
                state = "conn:held"  # frames held: a flip's pause, or a primary not draining
            elif session.mirrored:
                state = "conn:mirrored"
            else:
                state = "conn:relayed"
            values[state] = values.get(state, 0.0) + 1.0
            for name, up in session.up.items():
                if up is not None:
                    role = "primary" if name == session.primary else "shadow"
                    key = f"up:{name}:{role}"
                    values[key] = values.get(key, 0.0) + 1.0
        return values

    # ----------------------------------------------------------------- handshake

    def _upstream_headers(self, ws: ServerConnection, request: Request) -> list[tuple[str, str]]:
        headers = [
            (name, value) for name in FORWARDED_HEADERS for value in request.headers.get_all(name)
        ]
        peer = ws.remote_address[0] if ws.remote_address else "unknown"
        prior = ", ".join(request.headers.get_all("X-Forwarded-For"))
        headers.append(("X-Forwarded-For", f"{prior}, {peer}" if prior else str(peer)))
        return headers

    async def _open(
        self,
        upstream: str,
        path: str,
        headers: list[tuple[str, str]],
        subprotocols: list[Subprotocol],
    ) -> UpstreamSide:
        user_agent = dict(headers).get("User-Agent")
        up = await connect(
            self.urls[upstream] + path,
            create_connection=UpstreamSide,
            subprotocols=subprotocols or None,
            additional_headers=[(k, v) for k, v in headers if k != "User-Agent"],
            user_agent_header=user_agent,
            open_timeout=self.settings.open_timeout,
            # what the servers send is theirs to size (the client gets it directly, and from
            # the splice): `max_size` bounds what clients send
            max_size=None,
            compression=None,
            ping_interval=None,  # the servers ping us; we answer
            close_timeout=2,
            proxy=None,
        )
        assert isinstance(up, UpstreamSide)
        return up

    async def _process_request(self, ws: ServerConnection, request: Request) -> Response | None:
        if "upgrade" not in request.headers.get("Connection", "").lower():
            return await self._plain_http(ws, request)
        game_id = game_of(request.path)
        primary = self.route.primary_for(game_id)
        headers = self._upstream_headers(ws, request)
        try:
            offered = [
                protocol
                for value in request.headers.get_all("Sec-WebSocket-Protocol")
                for protocol in parse_subprotocol(value)
            ]
        except InvalidHeader:
            # Not a header the handshake can pass: websockets refuses it (400) as the
            # servers would, and no upstream is opened for it.
            return None
        self._connecting += 1
        self.vacated.clear()
        try:
            up = await self._open(primary, request.path, headers, offered)
            self._handshakes[ws] = (up, primary, headers)
        except InvalidStatus as exc:
            # The primary refused the handshake: the client gets the same answer. A 4xx is
            # about the client's request (a path the server does not serve): `rejected`, not
            # a fault of the primary (`refused`, which pages after a flip).
            answer = exc.response
            reason = "rejected" if 400 <= answer.status_code < 500 else "refused"
            self.metrics.connect_failures.labels(primary, "primary", reason).inc()
            return Response(answer.status_code, answer.reason_phrase, Headers(), answer.body)
        except (OSError, TimeoutError, InvalidHandshake) as exc:
            self.metrics.connect_failures.labels(primary, "primary", "down").inc()
            log.warning("primary %s unreachable: %s", primary, exc)
            return ws.respond(HTTPStatus.BAD_GATEWAY, "primary upstream unreachable\n")
        finally:
            self._connecting -= 1
            self._vacate_if_empty()
        # A client that vanishes between handshake and handler must not leak the upstream.
        asyncio.get_running_loop().call_later(
            self.settings.open_timeout * 2, self._forget_handshake, ws
        )
        return None

    def _forget_handshake(self, ws: ServerConnection) -> None:
        pending = self._handshakes.pop(ws, None)
        self._vacate_if_empty()
        if pending is not None:
            task = asyncio.ensure_future(close_within(pending[0], self.settings.open_timeout))
            self._orphans.add(task)
            task.add_done_callback(self._orphans.discard)

    def _select_subprotocol(self, ws: ServerConnection, offered: Any) -> Subprotocol | None:
        pending = self._handshakes.get(ws)
        return pending[0].subprotocol if pending is not None else None

    async def _plain_http(self, ws: ServerConnection, request: Request) -> Response:
        """A plain HTTP request (health checks): ask the primary, relay its answer."""
        primary = self.route.primary_for(None)
        try:
            async with asyncio.timeout(self.settings.open_timeout):
                raw = await http_get(self.urls[primary], request.path, PLAIN_HTTP_LIMIT)
            return plain_response(raw)
        except (OSError, TimeoutError, ValueError, IndexError):
            return ws.respond(HTTPStatus.BAD_GATEWAY, "primary upstream unreachable\n")

    # ----------------------------------------------------------------- sessions

    async def _handle(self, client: ServerConnection) -> None:
        assert isinstance(client, ClientSide)  # serve(create_connection=ClientSide)
        pending = self._handshakes.pop(client, None)
        if pending is None or client.request is None:
            self._vacate_if_empty()
            return
        up, primary, headers = pending
        request = client.request
        session = Session(
            id=next(self._ids),
            client=client,
            path=request.path,
            game_id=game_of(request.path),
            headers=headers,
            subprotocols=[up.subprotocol] if up.subprotocol else [],
            primary=primary,
            mirrored=self.route.mirroring,
        )
        session.up[primary] = up
        session.sent = {"old": {}, "new": {}}
        self.sessions[session.id] = session
        self.vacated.clear()
        self.metrics.client_connections.inc()
        if session.mirrored:
            self.order.add_conn(session.id, session.game_id)
            self._spawn(session, self._upstream_loop(session, session.shadow, None))
        if not session.mirrored and can_splice(client, up):
            # Not mirrored: relay bytes, not frames, until both sides close (proxy/splice.py).
            # No await may come before this: websockets must not have read anything yet.
            session.spliced = True
            try:
                await splice(
                    client,
                    up,
                    self.metrics.spliced,
                    stall_timeout=self.settings.client_send_timeout,
                    on_stall=self.metrics.client_drops.labels("slow").inc,
                )
            finally:
                session.closed = True
                self._forget(session)
                self.metrics.client_connections.dec()
            return
        client.attach(functools.partial(self._client_frame, session))
        self._spawn(session, self._upstream_loop(session, primary, up))
        # Not `finally: await self._end(...)`: compiled, an await in a finally block loses
        # the exception in flight (`stateshift.native.unsafe_awaits`).
        interrupted: BaseException | None = None
        try:
            await client.wait_closed()
        except BaseException as exc:  # cancelled (the proxy stops): end the session first
            interrupted = exc
        await self._end(session)
        if interrupted is not None:
            raise interrupted

    def _spawn(self, session: Session, coro: Any) -> asyncio.Task[Any]:
        task: asyncio.Task[Any] = asyncio.create_task(coro)
        session.tasks.add(task)
        task.add_done_callback(session.tasks.discard)
        return task

    # ----------------------------------------------------------------- client -> upstreams

    def _client_frame(self, session: Session, is_text: bool, payload: bytes, raw: bytes) -> None:
        """A client frame, as it is parsed: to the primary first, then to the bookkeeping."""
        if session.held is not None or not self.gate.is_set() or not self._forward(session, raw):
            self._hold(session, (is_text, payload, raw))
            return
        if session.mirrored:
            self._defer(self._mirror_client_frame, session, is_text, payload, raw, time.monotonic())

    def _forward(self, session: Session, raw: bytes) -> bool:
        """Write a client frame to the primary; False when it must wait (the primary's
        buffer is full). A frame for a primary that is gone is dropped: its close is on
        its way to the client."""
        primary = session.primary
        up = session.up.get(primary)
        if up is not None:
            if not writable(up):
                return up.protocol.state is not OPEN
            up.transport.write(raw)
            self._counted[("client", primary, "primary")].inc()
        return True

    def _hold(self, session: Session, frame: tuple[bool, bytes, bytes]) -> None:
        """Keep a client frame (and the ones after it) until it can go: the client is not
        read meanwhile, so what is held stays small."""
        if session.held is None:
            session.held = deque()
            transport = session.client.transport
            if not transport.is_closing():
                transport.pause_reading()
            self._spawn(session, self._release_held(session))
        session.held.append(frame)

    async def _release_held(self, session: Session) -> None:
        held = session.held
        assert held is not None
        try:
            while held:
                if not self.gate.is_set():
                    await self.gate.wait()  # a flip is swapping roles under us
                is_text, payload, raw = held[0]
                if not self._forward(session, raw):
                    up = session.up.get(session.primary)
                    if up is not None:
                        # not `await up.drain()`: a flip must wake it (the frames then go
                        # to the new primary), and a lost upstream must not end the loop
                        session.rewait = waiter = asyncio.ensure_future(up.drain())
                        await asyncio.wait({waiter})
                        session.rewait = None
                        if not waiter.cancelled():
                            waiter.exception()
                    continue
                held.popleft()
                if session.mirrored:
                    self._defer(
                        self._mirror_client_frame, session, is_text, payload, raw, time.monotonic()
                    )
        finally:
            session.held = None
            transport = session.client.transport
            if not transport.is_closing():
                transport.resume_reading()

    def _defer(self, fn: Callable[..., None], *args: Any) -> None:
        """Do `fn(*args)` at the end of this event-loop turn (see `settle`)."""
        later = self._later
        if not later:
            asyncio.get_running_loop().call_soon(self.settle)
        later.append((fn, args))

    def settle(self) -> None:
        """The bookkeeping of every frame forwarded so far, in the order they were
        forwarded, then one flush (what it released goes to the shadows)."""
        later = self._later
        if later:
            self._later = []
            for fn, args in later:
                try:
                    fn(*args)
                except Exception:  # one frame's bookkeeping must not lose the others'
                    log.exception("bookkeeping of a relayed frame failed")
        self.flush()

    def _mirror_client_frame(
        self, session: Session, is_text: bool, payload: bytes, raw: bytes, now: float
    ) -> None:
        """What the proxy learns from a client frame it forwarded: its id (answer latency),
        and its shadow copy, placed by the order."""
        msg = parse(is_text, payload)
        if msg is not None:
            msg_id = readable_id(msg.get("id"))  # an unreadable one is answered `re: null`
            if msg_id is not None:
                sent = session.sent[session.primary]
                if len(sent) >= MAX_TRACKED:
                    sent.clear()  # ids never answered: forget them rather than grow
                sent[msg_id] = now
            else:
                session.nameless[session.primary] += 1
            kind = msg.get("type")
            if kind == "CONNECT" and session.connect_frame is None:
                session.connect_frame = raw
                session.connect_id = msg_id
            elif kind == "DISCONNECT":
                session.disconnecting = True
        else:
            session.nameless[session.primary] += 1
        self.order.client_frame(session.id, raw, msg, now)

    # ----------------------------------------------------------------- upstreams -> client

    def _upstream_frame(
        self, session: Session, name: str, is_text: bool, payload: bytes, raw: bytes
    ) -> None:
        """An upstream frame, as it is parsed: the primary's to the client first (the
        shadow's to nobody), then to the bookkeeping."""
        late = False
        if session.primary == name:
            role = "primary"
            if session.late is not None and self._owed(session, is_text, payload):
                role, late = "shadow", True
            elif session.to_client is not None or not writable(session.client):
                self._hold_for_client(session, name, raw)
            else:
                session.client.transport.write(raw)
        else:
            role = "shadow"
        self._counted[("upstream", name, role)].inc()
        if session.mirrored:
            now = time.monotonic()
            self._defer(
                self._observe_upstream_frame, session, name, role, is_text, payload, now, late
            )

    def flipped(self, session: Session) -> None:
        """A switch made the session's shadow its primary (`Switchboard.commit`, after
        `settle`): what the new primary still owed as the shadow must not reach the client
        (`Late`), and what it broadcast as the shadow that the client never got from the
        previous primary must.

        With several proxies, flipped one after the other, another proxy's clients may
        already write to the new server: its broadcasts of their changes reached this proxy
        as the shadow's, and the previous primary's copies, later, will arrive as the new
        shadow's. Those versions are relayed now, from the shadow's copies, in order; the
        new primary's broadcasts up to the newest version the client has are owed."""
        for sent in session.sent.values():
            sent.clear()
        session.nameless = {"old": 0, "new": 0}
        if session.rewait is not None:
            session.rewait.cancel()  # held client frames go to the new primary now
        owed = self.order.roles_swapped(session.id)
        delivered = session.delivered
        missed: dict[int, bytes] = {}
        for version, payload in session.shadow_states:
            if version > delivered:
                missed[version] = payload
        session.shadow_states.clear()
        evicted, session.evicted = session.evicted, 0
        if missed and evicted > delivered:
            # Versions between were left unread in the previous primary's socket (the
            # client did not keep up) and are no longer kept from the shadow: it cannot
            # have them in order. It reconnects (its CONNECTED has the state).
            self.drop_client(session, 1012, "updates missed during a switchover")
            missed = {}
        for version in sorted(missed):
            frame = Frame(Opcode.TEXT, missed[version]).serialize(mask=False, extensions=[])
            if session.to_client is not None or not writable(session.client):
                self._hold_for_client(session, session.primary, frame)
            else:
                session.client.transport.write(frame)
            delivered = version
        session.delivered = delivered
        session.late = None  # a previous flip's window was about the other upstream
        if owed or delivered:
            ids: dict[str | None, int] = {}
            for re_id in owed:
                ids[re_id] = ids.get(re_id, 0) + 1
            until = time.monotonic() + self.settings.answer_timeout
            session.late = Late(ids, delivered or None, until)

    def _owed(self, session: Session, is_text: bool, payload: bytes) -> bool:
        """Whether a frame of the primary is something it owed from before the flip (then
        it is the shadow's, and the client does not get it). Frames are parsed here only
        while something may still be owed."""
        late = session.late
        assert late is not None
        if time.monotonic() >= late.until:
            session.late = None  # what was not answered by now is not coming
            return False
        msg = parse(is_text, payload)
        if msg is None:
            return False
        owed = False
        if "re" in msg:  # an answer: owed if its `re` (an id, or null) still is
            re_id = msg["re"]
            if re_id is None or isinstance(re_id, str):
                left = late.ids.get(re_id, 0)
                if left > 1:
                    late.ids[re_id] = left - 1
                    owed = True
                elif left == 1:
                    del late.ids[re_id]
                    owed = True
        elif late.floor is not None and msg.get("type") == "STATE":
            version = msg.get("version")
            if type(version) is int and version <= late.floor:
                owed = True
            else:
                late.floor = None
        if owed:
            late.until = time.monotonic() + self.settings.answer_timeout  # still answering
        if not late.ids and late.floor is None:
            session.late = None
        return owed

    def _hold_for_client(self, session: Session, name: str, raw: bytes) -> None:
        """Keep a frame for a client that does not keep up; stop reading the upstream that
        sent it until the client drains (or is dropped)."""
        client = session.client
        if client.protocol.state is not OPEN:
            return  # the client is leaving: nothing more reaches it
        up = session.up.get(name)
        if up is not None and up not in session.paused and not up.transport.is_closing():
            up.transport.pause_reading()
            session.paused.add(up)
        if session.to_client is None:
            session.to_client = deque()
            session.drainer = self._spawn(session, self._drain_to_client(session))
        session.to_client.append(raw)

    async def _drain_to_client(self, session: Session) -> None:
        """Relay held frames to a client whose buffer is full, waiting for it to read: but
        not forever (a client that takes nothing for `client_send_timeout` is dropped)."""
        client = session.client
        waiting = session.to_client
        assert waiting is not None
        try:
            while waiting:
                if client.protocol.state is not OPEN:
                    return
                if not writable(client):
                    try:
                        async with asyncio.timeout(self.settings.client_send_timeout):
                            await client.drain()
                    except TimeoutError:
                        self.metrics.client_drops.labels("slow").inc()
                        log.warning("dropping a client that does not read (session %d)", session.id)
                        client.transport.abort()
                        return
                    continue
                client.transport.write(waiting.popleft())
        finally:
            session.to_client = session.drainer = None
            for up in session.paused:
                if not up.transport.is_closing():
                    up.transport.resume_reading()
            session.paused.clear()

    def _observe_upstream_frame(
        self,
        session: Session,
        name: str,
        role: str,
        is_text: bool,
        payload: bytes,
        now: float,
        late: bool = False,
    ) -> None:
        """What the proxy learns from an upstream frame: answer latency, versions and
        answers for the order; the frame goes to the tap. A `late` frame (owed from before
        a flip) goes to the tap only: the order has moved on."""
        msg = parse(is_text, payload)
        if msg is not None and msg.get("type") == "STATE" and "re" not in msg:
            version = msg.get("version")
            if type(version) is int:
                if role == "primary" and not late:
                    if version > session.delivered:
                        session.delivered = version
                elif role == "shadow" and not late and session.mirrored:
                    kept = session.shadow_states
                    if len(kept) == kept.maxlen:
                        session.evicted = max(session.evicted, kept[0][0])
                    kept.append((version, payload))
        if msg is None:
            if role == "shadow" and session.game_id is not None:
                # A shadow that answers garbage: what it says can no longer be trusted.
                self._events([Event("not_comparable", "garbage", session.id, session.game_id)])
        elif not late:
            re_id = msg.get("re")
            if re_id is None and "re" in msg and role == "primary" and session.nameless[name]:
                session.nameless[name] -= 1
            if isinstance(re_id, str):
                started = session.sent[name].pop(re_id, None)
                if started is not None:
                    self._latency[(role, name)].observe(now - started)
            if role == "primary":
                self.order.primary_frame(session.id, msg, now)
            else:
                self.order.shadow_frame(session.id, msg, now)
        if self.tap is not None:
            self.tap.offer(
                TapRecord(
                    session.id, "upstream", role, name, time.time(), session.game_id, payload, msg
                )
            )

    async def _relay_close(self, session: Session, up: UpstreamSide) -> None:
        """The primary closed: the client gets exactly that close (or a vanished peer),
        after every frame the primary sent before it."""
        drainer = session.drainer
        if drainer is not None:
            # bounded: a client that takes nothing for client_send_timeout is dropped
            await asyncio.wait({drainer})
        code = up.close_code
        client = session.client
        if code == 1005:  # the primary's close frame had no status code: nor has the client's
            await close_within(client, self.settings.open_timeout, None)
            return
        if code is None or code in NO_CLOSE_FRAME:
            if client.transport is not None:
                client.transport.abort()
            return
        await close_within(client, self.settings.open_timeout, code, up.close_reason or "")

    async def _end(self, session: Session) -> None:
        """The client is gone: close the primary (its in-flight answers still feed the
        shadow's order), let the shadow finish what it was sent, then close it."""
        session.closed = True
        self.metrics.client_connections.dec()
        code = session.client.close_code
        close_code = 1000 if code is None or code in NO_CLOSE_FRAME else code
        primary = session.primary
        primary_up = session.up.get(primary)
        if primary_up is not None:
            session.deliberate.add(primary)
            reason = session.client.close_reason or ""
            await close_within(primary_up, self.settings.open_timeout, close_code, reason)
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.settings.open_timeout):
                    await primary_up.wait_closed()  # its answers arrive before its close
        self.settle()
        if session.mirrored:
            # Bounded: the order declares a silent shadow stalled after answer_timeout.
            deadline = time.monotonic() + self.settings.answer_timeout
            while self.order.pending(session.id) and time.monotonic() < deadline:  # noqa: ASYNC110
                await asyncio.sleep(0.05)
            if self.order.pending(session.id):
                self.order.shadow_lost(session.id, "stall", time.monotonic())
                self.flush()
        shadow = other(primary)
        session.deliberate.add(shadow)
        shadow_up = session.up.get(shadow)
        if shadow_up is not None:
            await close_within(shadow_up, self.settings.open_timeout, close_code)
        for task in list(session.tasks):
            task.cancel()
        # Only now: until here its shadow still receives what the order releases for it.
        self.settle()
        self._forget(session)
        self.order.remove_conn(session.id, time.monotonic())
        self.flush()
        if self.tap is not None:
            self.tap.offer(TapNotice("conn_closed", "client closed", session.game_id, session.id))

    def _forget(self, session: Session) -> None:
        self.sessions.pop(session.id, None)
        self._vacate_if_empty()

    def _vacate_if_empty(self) -> None:
        if not self.sessions and not self._connecting and not self._handshakes:
            self.vacated.set()

    # ----------------------------------------------------------------- upstreams

    async def _upstream_loop(self, session: Session, name: str, up: UpstreamSide | None) -> None:
        """Own one upstream of a client for the session's life, whatever its role.

        While it is primary its frames go to the client and its close ends the client's
        connection the same way. While it is shadow, a close or a failed connection is a
        shadow loss (counted by reason, its frames dropped, its games not comparable) and
        the connection is retried with backoff. Roles may swap (a flip) at any time.
        """
        backoff = 0.1
        #: the delay before reopening after the shadow's CONNECT deadline, doubled by each
        #: such close and not reset by an opening (they all come before the client's CONNECT):
        #: a shadow that cuts every connection at once must not be reopened ten times a second
        deadline_backoff = 0.1
        revive = False
        while True:
            if up is None:
                if not session.mirrored or name in session.deliberate:
                    return
                if session.ended() and not self.order.pending(session.id):
                    # The client left. Frames still waiting for a fresh connection (its
                    # CONNECT, after the shadow's deadline) are what `_end` waits for: they
                    # go, or `_end` counts them lost; with none, nothing needs a connection.
                    return
                reach = self.reach[name]
                if reach.down:
                    # Known unreachable: no attempt of its own (one probe finds out when it
                    # is back); lost, without a connection failure counted per client.
                    self._shadow_lost(session, name, "down", attempted=False)
                    revive = True
                    await reach.wait(backoff)
                    backoff = min(backoff * 2, self.settings.retry_max)
                    continue
                if revive:
                    await reach.reopen()  # after a loss: a bounded rate for all of them
                    if reach.down or (session.ended() and not self.order.pending(session.id)):
                        continue  # look again: gone down meanwhile, or the client left
                reason = "down"
                try:
                    up = await self._open(name, session.path, session.headers, session.subprotocols)
                except InvalidStatus:
                    reason = "refused"
                except (OSError, TimeoutError):
                    reach.failed()
                except InvalidHandshake:
                    pass
                if up is None:
                    self._shadow_lost(session, name, reason)
                    revive = True
                    await asyncio.sleep(backoff)
                    backoff = min(backoff * 2, self.settings.retry_max)
                    continue
                reach.reached()
                if not session.mirrored or (session.ended() and not self.order.pending(session.id)):
                    # the client left (nothing waits to be sent), or mirroring ended
                    # (finalize) while this connected
                    await close_within(up, self.settings.open_timeout)
                    return
                session.up[name] = up
                session.sent[name].clear()  # sent on a connection now gone: never answered
                now = time.monotonic()
                if revive:
                    self.order.revive(session.id, session.connect_frame, now, session.connect_id)
                else:
                    self.order.shadow_opened(session.id, now)
                self.flush()
                backoff = 0.1
            try:
                up.on_ping = functools.partial(self._upstream_ping, session, name, up)
                up.attach(functools.partial(self._upstream_frame, session, name))
                await up.wait_closed()
            finally:
                session.up[name] = None
            if name in session.deliberate:
                return  # the proxy closed it: the client is gone
            if name in session.recycling and session.primary != name:
                # Cut by `_recycle_shadow`: the order counted the loss already.
                session.recycling.discard(name)
                if session.ended() or not session.mirrored:
                    return
                up = None
                revive = True
                await asyncio.sleep(backoff)  # a shadow that stalls again is not hammered
                backoff = min(backoff * 2, self.settings.retry_max)
                continue
            if session.primary == name:
                if not session.closed:
                    if session.mirrored and not session.disconnecting:
                        # what it never answered will never be placed in the shadow's order
                        self.settle()  # its last answers first
                        self.order.primary_lost(session.id, time.monotonic())
                        self.flush()
                    lost = up.close_code
                    # lost under the client: counted (docs/metrics.md), as a shadow's is
                    if crashed(lost):
                        self.metrics.connect_failures.labels(name, "primary", "crash").inc()
                    elif lost in PRIMARY_GONE:
                        self.metrics.connect_failures.labels(name, "primary", "closed").inc()
                    await self._relay_close(session, up)
                return
            code = up.close_code
            if code == 1000 and session.disconnecting:
                return  # the shadow's answer to the client's DISCONNECT, not a fault
            if (
                code == CLOSE_UNAUTHENTICATED
                and session.connect_frame is None
                and self.order.shadow_closed(session.id)
            ):
                # The shadow's deadline for a CONNECT the client has not sent (shorter than
                # the primary's, which may still take a late one): nothing was lost, so no
                # loss; a fresh connection takes the client's frames. Opened again, it is
                # not a revival (that would drop what waits for it).
                up = None
                revive = False
                await asyncio.sleep(deadline_backoff)
                deadline_backoff = min(deadline_backoff * 2, self.settings.retry_max)
                continue
            if code in (CLOSE_UNAUTHENTICATED, 4403):
                reason = "refused"
            elif crashed(code):
                reason = "crash"
            else:
                reason = "closed"
            self._shadow_lost(session, name, reason)
            if session.ended() or not session.mirrored:
                return
            up = None
            revive = True
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, self.settings.retry_max)

    def _upstream_ping(self, session: Session, name: str, up: UpstreamSide, data: bytes) -> None:
        """An upstream's ping. The shadow's is answered now; the primary's when the client
        shows it is alive: at once if it sent anything since the primary's last ping, else
        once it answers a ping of the proxy. Whether the client is alive is the primary's to
        judge (PROTOCOL.md: a connection silent for the idle period, pongs included, is
        closed 4408), as it would judge it directly; answered by the proxy regardless, a
        dead client would keep its seat for ever."""
        client = session.client
        if session.primary != name or session.ended():
            up.answer_ping(data)
            return
        if client.heard:
            client.heard = False  # the next ping asks again
            up.answer_ping(data)
            return
        self._spawn(session, self._answer_ping_when_client_pongs(session, up, data))

    async def _answer_ping_when_client_pongs(
        self, session: Session, up: UpstreamSide, data: bytes
    ) -> None:
        try:
            pong = await session.client.ping()
            await pong
        except ConnectionClosed:
            return
        up.answer_ping(data)

    def _probe_failed(self, name: str) -> None:
        """A probe of an unreachable upstream found it still down (counted as one
        connection failure: the clients waiting for it make no attempt of their own)."""
        self.metrics.connect_failures.labels(name, "shadow", "down").inc()

    def _shadow_lost(
        self, session: Session, name: str, reason: str, attempted: bool = True
    ) -> None:
        if attempted:
            self.metrics.connect_failures.labels(name, "shadow", reason).inc()
        self.order.shadow_lost(session.id, reason, time.monotonic())
        self.flush()

    def flush(self) -> None:
        """Hand what the order released to the shadows (never awaited), report events.

        A released copy without a place in its game's order (a heartbeat) waits, at most
        `shadow_coalesce`, for the next ones of its connection, to share one write with them
        (and the shadow's answers one read): fewer wake-ups and system calls on the proxy and
        on the shadow. A copy with a place (a change, or a read at a version) is written at
        once, with what waits before it."""
        order = self.order
        if order.releases:
            releases = order.take_releases()
            waiting = self._to_shadow
            urgent: list[ShadowBatch] | None = None
            for conn_id, data, msg_id, must_go in releases:
                session = self.sessions.get(conn_id)
                if session is None:
                    continue
                up = session.up.get(session.shadow)
                if up is None or up.protocol.state is not OPEN:
                    continue
                batch = waiting.get(up)
                if batch is None:
                    batch = waiting[up] = ShadowBatch(session, session.shadow, up)
                batch.frames.append(data)
                if msg_id is not None:
                    batch.ids.append(msg_id)
                if must_go:
                    if urgent is None:
                        urgent = [batch]
                    else:
                        urgent.append(batch)
            if urgent is not None or self.settings.shadow_coalesce <= 0:
                now = time.monotonic()
                for batch in urgent or list(waiting.values()):
                    if waiting.pop(batch.up, None) is not None:
                        self._write_shadow(batch, now)
            if waiting and self._coalescing is None:
                self._coalescing = asyncio.get_running_loop().call_later(
                    self.settings.shadow_coalesce, self.write_shadows
                )
        if order.events:
            self._events(order.take_events())
        if self.tap is not None:
            self.tap.pour()

    def write_shadows(self) -> None:
        """Write every released shadow copy that is still waiting (the coalescing timer,
        and before anything that must find them sent: a flip, the end of mirroring)."""
        if self._coalescing is not None:
            self._coalescing.cancel()
            self._coalescing = None
        waiting, self._to_shadow = self._to_shadow, {}
        now = time.monotonic()
        for batch in waiting.values():
            self._write_shadow(batch, now)
        if self.order.releases or self.order.events:
            self.flush()  # a shadow given up for not reading: what the order did next

    def _write_shadow(self, batch: ShadowBatch, now: float) -> None:
        session, name = batch.session, batch.name
        up = batch.up
        frames = batch.frames
        if session.up.get(name) is not up or up.protocol.state is not OPEN:
            return  # the connection is gone: its loss is reported by its own loop
        if session.shadow != name:
            # Roles swapped under them (a flip writes what waits first): never hand a
            # shadow copy to the primary.
            log.error("dropped %d shadow copies after a role swap", len(frames))
            return
        up.transport.write(frames[0] if len(frames) == 1 else b"".join(frames))
        self._counted[("client", name, "shadow")].inc(len(frames))
        if batch.ids:
            sent = session.sent[name]
            for msg_id in batch.ids:
                if len(sent) >= MAX_TRACKED:
                    sent.clear()  # ids a shadow never answered: forget them rather than grow
                sent[msg_id] = now
        if up.transport.get_write_buffer_size() > self.settings.shadow_write_limit:
            self.order.shadow_lost(session.id, "stall", now)
            up.transport.abort()

    def _events(self, events: list[Event]) -> None:
        tap = self.tap
        for event in events:
            if event.kind == "not_mirrored":
                if tap is not None:
                    tap.offer(TapNotice("not_mirrored", event.reason, event.game_id, event.conn_id))
            elif event.kind == "drop":
                self.metrics.shadow_drops.labels(event.reason).inc()
                self.metrics.shadow_dropped_frames.labels(event.reason).inc(event.frames)
                if tap is not None:
                    tap.offer(TapNotice("shadow_lost", event.reason, event.game_id, event.conn_id))
                if event.conn_id is not None:
                    self._recycle_shadow(event.conn_id)
            else:
                self.metrics.not_comparable.labels(event.reason).inc()
                if self.tap is not None:
                    self.tap.offer(
                        TapNotice("not_comparable", event.reason, event.game_id, event.conn_id)
                    )

    def drop_client(self, session: Session, code: int, reason: str) -> None:
        """Close a client's connection with `code` (its session ends as usual)."""
        self._spawn(session, close_within(session.client, self.settings.open_timeout, code, reason))

    def _recycle_shadow(self, conn_id: int) -> None:
        """The order gave up a connection's shadow (it stalled, or fell too far behind) while
        its socket is still open: cut it, so that it reconnects and starts afresh (`revive`
        replays the client's CONNECT) instead of staying connected and receiving nothing."""
        session = self.sessions.get(conn_id)
        if session is None or session.closed or not session.mirrored:
            return
        name = session.shadow
        up = session.up.get(name)
        if up is None or up.transport is None or up.transport.is_closing():
            return  # already closed or closing: its loop reconnects
        session.recycling.add(name)
        up.transport.abort()

    async def _tick(self) -> None:
        while True:
            await asyncio.sleep(0.25)
            self.order.tick(time.monotonic())
            self.flush()
            if self.tap is not None and self.tap.dropped:
                self.metrics.tap_dropped.inc(self.tap.dropped)
                self.tap.dropped = 0
