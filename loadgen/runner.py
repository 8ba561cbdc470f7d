"""The load generator's asyncio layer: one task per simulated player, one reader per socket.

Each player connects to `URL/v1/games/{game}`, sends `CONNECT` with its own token, then, on a
fixed schedule, one message per tick (an update from its `PlayerPlan`, now and then an
invalid message) and a heartbeat every second, pipelined up to `MAX_IN_FLIGHT` unanswered
requests. A reader matches every answer to its request by `re` (answers on one connection
come in request order, so an `ERROR` with `re: null` answers the oldest one), measures the
ACK latency and learns from broadcasts. Now and then a player says `DISCONNECT` and comes
back (a reconnect); any other close is *unexpected* and counted, with the requests it left
unanswered.

`LoadGen` is live (the demo reads its `stats` while it runs and can hold score deltas);
`run_load` is the one-call form.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import secrets
import time
from collections import Counter, OrderedDict
from dataclasses import dataclass, field
from typing import Any, Final

import orjson
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidURI

from loadgen.plan import (
    HEARTBEAT_EVERY,
    INVALID,
    PlayerPlan,
    connection_rate,
    invalid_frame,
    percentile,
)
from stateshift.tokens import mint_token

#: unanswered requests a player may have before it waits
MAX_IN_FLIGHT: Final = 32
#: seconds a player waits for its last answers when the run ends
DRAIN_TIMEOUT: Final = 10.0
#: seconds to wait for a handshake or a CONNECTED answer
CONNECT_TIMEOUT: Final = 10.0
#: seconds before a player whose connection failed tries again
RETRY_DELAY: Final = 0.2


@dataclass(slots=True)
class Pending:
    """A request waiting for its answer."""

    kind: str  # CONNECT, STATE_UPDATE, HEARTBEAT, DISCONNECT, or an invalid kind
    sent_at: float
    #: for an invalid message: the error code it must get
    expect: str | None = None
    #: a STATE_UPDATE with score deltas (the demo waits for these around its fault)
    delta: bool = False


@dataclass
class GameCount:
    """What the load generator did to one game: accepted updates and joins (each one version)."""

    acked: int = 0
    joins: int = 0
    #: the highest version an ACK of ours showed
    last_version: int = 0

    @property
    def versions(self) -> int:
        """Versions this run accounts for (a new game: its version at the end)."""
        return self.acked + self.joins


@dataclass
class Stats:
    """Live counters, shared by every player of a run."""

    sent: Counter[str] = field(default_factory=Counter)
    answers: Counter[str] = field(default_factory=Counter)
    acked: int = 0
    errors: Counter[str] = field(default_factory=Counter)
    expected_errors: Counter[str] = field(default_factory=Counter)
    unexpected_errors: Counter[str] = field(default_factory=Counter)
    invalid_sent: Counter[str] = field(default_factory=Counter)
    #: invalid messages answered otherwise than documented ("kind: got X, expected Y")
    invalid_wrong: list[str] = field(default_factory=list)
    unanswered: int = 0
    unexpected_closes: int = 0
    #: STATE broadcasts a connection never got: a version skipped between the ones it saw
    #: (from its CONNECTED on, every change of its game is broadcast to it)
    missed_broadcasts: int = 0
    close_codes: Counter[int] = field(default_factory=Counter)
    connect_failures: int = 0
    reconnects: int = 0
    connected: int = 0
    latencies: list[float] = field(default_factory=list)
    games: dict[str, GameCount] = field(default_factory=dict)
    #: score-delta updates sent and not yet answered
    pending_deltas: int = 0

    @property
    def total_sent(self) -> int:
        """Every frame sent."""
        return sum(self.sent.values())


@dataclass
class LoadReport:
    """The outcome of a run: what was sent, what came back, what went wrong, how fast."""

    url: str
    games: list[str]
    players: int
    rate: float
    connection_rate: float
    duration: float
    stats: Stats

    @property
    def ok(self) -> bool:
        """Nothing went wrong: no unexpected error or close, every request answered, every
        invalid message got its documented error."""
        s = self.stats
        return not (
            s.unexpected_errors
            or s.invalid_wrong
            or s.unanswered
            or s.unexpected_closes
            or s.missed_broadcasts
            or s.connect_failures
        )

    def latency_ms(self) -> dict[str, float | None]:
        """ACK latency percentiles (milliseconds) of accepted updates."""
        samples = sorted(self.stats.latencies)
        out: dict[str, float | None] = {}
        for name, q in (("p50", 50.0), ("p95", 95.0), ("p99", 99.0), ("max", 100.0)):
            value = percentile(samples, q)
            out[name] = None if value is None else round(value * 1000, 3)
        return out

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form (`--json`)."""
        s = self.stats
        return {
            "ok": self.ok,
            "url": self.url,
            "games": len(self.games),
            "players_per_game": self.players,
            "duration_s": round(self.duration, 3),
            "rate": {
                "requested": self.rate,
                "per_connection": round(self.connection_rate, 3),
                "achieved": round(s.sent["STATE_UPDATE"] / self.duration, 1)
                if self.duration
                else 0.0,
            },
            "sent": {"total": s.total_sent, **dict(s.sent)},
            "acked": s.acked,
            "answers": dict(s.answers),
            "errors": dict(s.errors),
            "expected_errors": dict(s.expected_errors),
            "unexpected_errors": dict(s.unexpected_errors),
            "invalid_sent": dict(s.invalid_sent),
            "invalid_answered_wrong": s.invalid_wrong[:20],
            "unanswered": s.unanswered,
            "unexpected_closes": s.unexpected_closes,
            "missed_broadcasts": s.missed_broadcasts,
            "close_codes": {str(k): v for k, v in s.close_codes.items()},
            "connect_failures": s.connect_failures,
            "reconnects": s.reconnects,
            "latency_ms": self.latency_ms(),
            "per_game": {
                g: {"acked": c.acked, "joins": c.joins, "last_version": c.last_version}
                for g, c in sorted(s.games.items())
            },
        }


class _Lost(Exception):
    """The connection closed without our DISCONNECT."""


class Player:
    """One simulated player: its plan, its connection, its pending requests."""

    def __init__(self, gen: LoadGen, game: str, player: str, host: bool, seed: int) -> None:
        self.gen = gen
        self.game = game
        self.player = player
        self.rng = random.Random(seed)
        self.plan = PlayerPlan(player, game, host, random.Random(seed + 1))
        self.url = f"{gen.url}/v1/games/{game}"
        self.token = mint_token(gen.secret, player, "player", [game], ttl=gen.duration + 3600)
        self.pending: OrderedDict[str, Pending] = OrderedDict()
        self.answered = asyncio.Event()
        self.ids = 0
        self.joined = False
        self.sessions = 0
        self.ws: ClientConnection | None = None
        self.disconnecting = False
        self.lost = False
        self.welcomed = False
        #: the newest version this connection saw broadcast (or joined at)
        self.broadcast_version: int | None = None

    def _id(self, prefix: str) -> str:
        self.ids += 1
        return f"{prefix}{self.ids}"

    async def run(self) -> None:
        """Play until the run ends, reconnecting when asked to (or when the link is lost)."""
        gen = self.gen
        while not gen.stopping.is_set():
            try:
                again = await self._session()
            except (OSError, InvalidHandshake, InvalidURI, TimeoutError):
                gen.stats.connect_failures += 1
                again = True
            if not again:
                return
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(gen.stopping.wait(), RETRY_DELAY)

    async def _session(self) -> bool:
        """One connection; True when the player should connect again."""
        stats = self.gen.stats
        self.disconnecting = False
        self.lost = False
        self.broadcast_version = None  # known from this connection's CONNECTED
        async with asyncio.timeout(CONNECT_TIMEOUT):
            ws = await connect(self.url, proxy=None, compression=None, open_timeout=None)
        self.ws = ws
        reader = asyncio.create_task(self._read(ws))
        try:
            await self._send(
                ws, {"type": "CONNECT", "id": self._id("c"), "token": self.token}, "CONNECT"
            )
            self.welcomed = False
            async with asyncio.timeout(CONNECT_TIMEOUT):
                while self.pending and not self.lost:
                    await self._wait_answer()
            if self.lost or not self.welcomed:
                raise _Lost  # refused (its ERROR is counted) or closed
            self.sessions += 1
            if self.sessions > 1:
                stats.reconnects += 1
            stats.connected += 1
            try:
                again = await self._play(ws)
            finally:
                stats.connected -= 1
            return again
        except (_Lost, ConnectionClosed):
            self._count_lost()
            return True
        finally:
            if not reader.done():
                with contextlib.suppress(Exception):
                    await ws.close()
            reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await reader
            self.ws = None

    def _count_lost(self) -> None:
        stats = self.gen.stats
        if self.pending:
            stats.unanswered += len(self.pending)
            stats.pending_deltas -= sum(1 for p in self.pending.values() if p.delta)
            self.pending.clear()

    async def _play(self, ws: ClientConnection) -> bool:
        gen, stats, rng = self.gen, self.gen.stats, self.rng
        loop = asyncio.get_running_loop()
        interval = 1.0 / gen.per_connection if gen.per_connection > 0 else None
        now = loop.time()
        next_update = now + (rng.random() * interval if interval else 0.0)
        next_beat = now + rng.random() * HEARTBEAT_EVERY
        reconnect_p = (interval / gen.reconnect_every) if interval and gen.reconnect_every else 0.0
        while not gen.stopping.is_set():
            if self.lost:
                raise _Lost
            if gen.paused:
                # quiet but connected; the schedule restarts when the pause ends
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(gen.stopping.wait(), 0.05)
                next_update = next_beat = loop.time()
                continue
            at = min(next_beat, next_update) if interval else next_beat
            delay = at - loop.time()
            if delay > 0:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(gen.stopping.wait(), delay)
                continue
            if len(self.pending) >= MAX_IN_FLIGHT:
                await self._wait_answer(within=0.5)
                continue
            if at == next_beat:
                next_beat += HEARTBEAT_EVERY
                await self._send(ws, {"type": "HEARTBEAT", "id": self._id("h")}, "HEARTBEAT")
                continue
            assert interval is not None
            next_update += interval
            roll = rng.random()
            if roll < reconnect_p:
                await self._disconnect(ws)
                return True
            if roll < reconnect_p + gen.invalid_ratio:
                kind = rng.choice(tuple(INVALID))
                msg_id = self._id("x")
                text = invalid_frame(kind, msg_id, self.player)
                stats.invalid_sent[kind] += 1
                key = msg_id if INVALID[kind][1] else f"?{msg_id}"
                self.pending[key] = Pending(kind, time.perf_counter(), expect=INVALID[kind][0])
                stats.sent["invalid"] += 1
                await ws.send(text)
                continue
            self.plan.hold_deltas = gen.deltas_held
            updates = self.plan.next_update()
            delta = "score_deltas" in updates
            msg = {"type": "STATE_UPDATE", "id": self._id("u"), "updates": updates}
            if delta:
                stats.pending_deltas += 1
            await self._send(ws, msg, "STATE_UPDATE", delta=delta)
        await self._drain()
        await self._disconnect(ws)
        return False

    async def _drain(self) -> None:
        """Wait (bounded) for the answers to everything sent."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(DRAIN_TIMEOUT):
                while self.pending and not self.lost:
                    await self._wait_answer()

    async def _disconnect(self, ws: ClientConnection) -> None:
        """Say goodbye: DISCONNECT, its answer, then the server's close 1000."""
        await self._drain()
        if self.lost:
            raise _Lost
        self.disconnecting = True
        await self._send(ws, {"type": "DISCONNECT", "id": self._id("d")}, "DISCONNECT")
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(DRAIN_TIMEOUT):
                await ws.wait_closed()
        code = ws.close_code
        if code != 1000:
            stats = self.gen.stats
            stats.unexpected_closes += 1
            stats.close_codes[code if code is not None else 1006] += 1
            self._count_lost()

    async def _send(
        self, ws: ClientConnection, msg: dict[str, Any], kind: str, *, delta: bool = False
    ) -> None:
        msg_id = msg["id"]
        self.pending[msg_id] = Pending(kind, time.perf_counter(), delta=delta)
        self.gen.stats.sent[kind] += 1
        await ws.send(orjson.dumps(msg).decode())

    async def _wait_answer(self, within: float | None = None) -> None:
        self.answered.clear()
        if within is None:
            await self.answered.wait()
        else:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.answered.wait(), within)

    async def _read(self, ws: ClientConnection) -> None:
        stats = self.gen.stats
        clock = time.perf_counter  # uvloop's loop.time() ticks in whole milliseconds
        try:
            async for data in ws:
                frame = orjson.loads(data)
                if not isinstance(frame, dict):
                    continue
                self._take(frame, clock())
        except ConnectionClosed:
            pass
        except orjson.JSONDecodeError:
            stats.unexpected_errors["NOT_JSON_ANSWER"] += 1
        if not self.disconnecting:
            code = ws.close_code
            stats.unexpected_closes += 1
            stats.close_codes[code if code is not None else 1006] += 1
            self.lost = True
        self.answered.set()

    def _broadcast(self, version: object) -> None:
        """A STATE broadcast at `version`: count the versions skipped since the last one
        this connection saw (its CONNECTED's first)."""
        last = self.broadcast_version
        if type(version) is not int or last is None:
            return
        if version > last + 1:
            self.gen.stats.missed_broadcasts += version - last - 1
        if version > last:
            self.broadcast_version = version

    def _take(self, frame: dict[str, Any], now: float) -> None:
        """Match one frame to its request (or learn from a broadcast)."""
        stats = self.gen.stats
        kind = frame.get("type")
        re_id = frame.get("re")
        if kind == "STATE" and "re" not in frame:
            self._broadcast(frame.get("version"))
            state = frame.get("state")
            if isinstance(state, dict):
                self.plan.see(state)
            return
        if isinstance(re_id, str):
            pending = self.pending.pop(re_id, None)
        elif kind == "ERROR" and self.pending:
            # no readable id: it answers the oldest request (answers come in order)
            pending = self.pending.pop(next(iter(self.pending)))
        else:
            pending = None
        if pending is None:
            stats.unexpected_errors[f"UNMATCHED_{kind}"] += 1
            return
        self.answered.set()
        stats.answers[str(kind)] += 1
        if pending.delta:
            stats.pending_deltas -= 1
        if kind == "ERROR":
            code = str(frame.get("code"))
            stats.errors[code] += 1
            if pending.expect is None:
                stats.unexpected_errors[code] += 1
            elif pending.expect == code:
                stats.expected_errors[code] += 1
            else:
                stats.invalid_wrong.append(f"{pending.kind}: got {code}, expected {pending.expect}")
            return
        if pending.expect is not None:
            stats.invalid_wrong.append(f"{pending.kind}: got {kind}, expected {pending.expect}")
            return
        if kind == "ACK" and pending.kind == "STATE_UPDATE":
            stats.acked += 1
            stats.latencies.append(now - pending.sent_at)
            game = stats.games[self.game]
            game.acked += 1
            version = frame.get("version")
            if isinstance(version, int):
                game.last_version = max(game.last_version, version)
        elif kind == "CONNECTED" and pending.kind == "CONNECT":
            self.welcomed = True
            state = frame.get("state")
            if isinstance(state, dict):
                self.plan.see(state)
                version = state.get("version")
                self.broadcast_version = version if type(version) is int else None
            if not self.joined:
                self.joined = True
                stats.games[self.game].joins += 1
        elif kind == "STATE" and isinstance(frame.get("state"), dict):
            self.plan.see(frame["state"])


class LoadGen:
    """A run of simulated players (`await gen.run()`; `stop()` ends it early)."""

    def __init__(
        self,
        url: str,
        secret: str,
        games: int,
        players: int,
        rate: float,
        duration: float,
        *,
        game_prefix: str | None = None,
        invalid_ratio: float = 0.02,
        reconnect_every: float = 20.0,
        seed: int | None = None,
    ) -> None:
        if games < 1 or players < 1:
            raise ValueError("games and players must be at least 1")
        if players > 64:
            raise ValueError("a game holds at most 64 players (PROTOCOL.md)")
        if not 0.0 <= invalid_ratio <= 0.5:
            raise ValueError("invalid_ratio must be from 0 to 0.5")
        self.url = url.rstrip("/")
        self.secret = secret
        self.rate = rate
        self.duration = duration
        self.invalid_ratio = invalid_ratio
        self.reconnect_every = reconnect_every
        self.per_connection = connection_rate(rate, games * players)
        prefix = game_prefix or f"lg-{secrets.token_hex(3)}"
        self.game_ids = [f"{prefix}-g{n}" for n in range(games)]
        self.players_per_game = players
        base = seed if seed is not None else random.randrange(1 << 30)
        self.stats = Stats(games={g: GameCount() for g in self.game_ids})
        self.players = [
            Player(self, game, f"p{n}", n == 0, base + 1000 * g + 2 * n)
            for g, game in enumerate(self.game_ids)
            for n in range(players)
        ]
        self.stopping = asyncio.Event()
        self.deltas_held = False
        self.paused = False
        self.started: float | None = None
        self.ended: float | None = None

    def stop(self) -> None:
        """End the run now: players finish what they sent and disconnect."""
        self.stopping.set()

    def hold_deltas(self, held: bool) -> None:
        """While held, players send every kind of update but score deltas."""
        self.deltas_held = held

    def pause(self, paused: bool) -> None:
        """While paused, players stay connected and send nothing."""
        self.paused = paused

    async def all_answered(self, within: float = DRAIN_TIMEOUT) -> None:
        """Wait until no request of any player waits for its answer."""
        async with asyncio.timeout(within):
            # polled (bounded): the players' queues change on every frame
            while any(p.pending for p in self.players):  # noqa: ASYNC110
                await asyncio.sleep(0.01)

    async def deltas_answered(self, within: float = DRAIN_TIMEOUT) -> None:
        """Wait until no score delta is waiting for its answer."""
        async with asyncio.timeout(within):
            # a counter every player updates: polling it (bounded) is simpler than an event
            while self.stats.pending_deltas > 0:  # noqa: ASYNC110
                await asyncio.sleep(0.01)

    @property
    def elapsed(self) -> float:
        """Seconds of load so far (or in all, once ended)."""
        if self.started is None:
            return 0.0
        return (self.ended or time.monotonic()) - self.started

    async def run(self) -> LoadReport:
        """Run every player until `duration` elapses (or `stop`); return the report."""
        self.started = time.monotonic()
        tasks = [asyncio.create_task(p.run()) for p in self.players]
        timer = asyncio.get_running_loop().call_later(self.duration, self.stop)
        try:
            await asyncio.gather(*tasks)
        finally:
            timer.cancel()
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
        self.ended = time.monotonic()
        return self.report()

    def report(self) -> LoadReport:
        """The report so far."""
        return LoadReport(
            url=self.url,
            games=self.game_ids,
            players=self.players_per_game,
            rate=self.rate,
            connection_rate=self.per_connection,
            duration=self.elapsed,
            stats=self.stats,
        )


async def run_load(
    url: str,
    secret: str,
    games: int,
    players: int,
    rate: float,
    duration: float,
    **options: Any,
) -> LoadReport:
    """Run `games` x `players` simulated players against `url` at `rate` updates/s in all
    for `duration` seconds; return the report. Options: see `LoadGen`."""
    gen = LoadGen(url, secret, games, players, rate, duration, **options)
    return await gen.run()
