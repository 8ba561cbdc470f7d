"""Switchover on one proxy: pause, quiesce, verify, swap roles, resume, without closing a
client connection.

The proxy keeps the client sockets and both upstream connections of every client; a flip
only swaps which upstream is primary. `prepare` pauses client->upstream forwarding, waits
(bounded) until every forwarded frame is answered by the primary and the shadow has caught up,
then confirms that every active game it moves to the other server has the same state
(versions included) on both servers and that every client has its shadow connected.
`commit` swaps and resumes; `abort` resumes with the route unchanged. Several proxies are
flipped by preparing all, then committing all (or aborting all): the CLI drives that over
the control plane.

Clients must not notice a switch that cannot succeed. What the proxy already knows is checked
before they are paused: a shadow it gave up, or one that owes an answer for longer than
`stall_timeout` (connected, but stalled), refuses the switch at once. Those checks cost no
time on purpose: while they ran, the primary would keep answering and a shadow that lags
would fall further behind, all of which the pause must then drain. Once paused, no server is
waited on for longer than `stall_timeout` (a shadow answer owed during the quiesce, each
admin request of the verification): a server that stalls refuses the switch then, not at the
quiesce's or the verification's bound.

A refusal names its `reason` (`shadow`, `stalled`, `unreachable`, `quiesce`, `unequal`,
`verify`, …) and says how long it held the clients (`paused_ms`: 0 when refused before
pausing them).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import secrets
import time
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from dataclasses import dataclass, replace
from typing import Any, TypeGuard

from compare.admin import AdminClient, AdminError, AdminUnreachable
from compare.comparator import StateComparator
from compare.rules import Rules, TypeRules
from compare.sweep import compare_states
from proxy.admin import CommandError, ControlPlane, primaries
from proxy.relay import MirrorProxy, Session
from proxy.route import Route
from proxy.state import ProxyState
from stateshift.control import MAX_HOLD
from stateshift.runtime import settle
from stateshift.tokens import mint_token

log = logging.getLogger(__name__)

#: a sample of the figures readiness is judged on, every SAMPLE_EVERY seconds
SAMPLE_EVERY = 2.0
#: games the verification reads over one admin connection to each server: within the
#: protocol's burst (100 messages per connection, 50 a second after it), its CONNECT and a
#: resync's second read included, so that no read waits for the rate limit with the clients
#: paused (300 games read over one connection paused them 4 s)
GAMES_PER_CONNECTION = 48
#: the most admin connections a verification opens to each server (past
#: MAX_CONNECTIONS x GAMES_PER_CONNECTION games, reads may wait for the rate limit)
MAX_CONNECTIONS = 64
#: reads under way at once to each server, at least: one per admin connection, so that a
#: read's `stall_timeout` covers its own answer, not a queue of the switch's own reads
READERS = 16


class SwitchError(Exception):
    """A switch step failed; the route is unchanged and forwarding resumed."""

    def __init__(self, reason: str, message: str, server: str | None = None) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message
        #: the server that could not be reached (`unreachable`)
        self.server = server
        #: how long a refused switch held the clients' frames (0.0: its PREPARE refused
        #: before pausing them; a COMMIT's refusal: since its PREPARE paused them); None
        #: where it is not known
        self.paused_ms: float | None = None

    def pause(self) -> dict[str, float]:
        """`paused_ms` as the fields of an answer or a history record (none if unknown)."""
        return {} if self.paused_ms is None else {"paused_ms": self.paused_ms}


@dataclass(slots=True)
class Prepared:
    token: str
    target: Route
    previous: Route
    paused_at: float
    games_checked: int = 0
    #: games moved off a server that could not be reached, without comparing them
    games_unverified: int = 0
    expiry: asyncio.TimerHandle | None = None


async def all_or_first_error(awaitables: Iterable[Awaitable[None]]) -> None:
    """Run `awaitables` concurrently until all have ended, or one fails: then the others
    are cancelled (and waited for: none outlives the connections it uses) and the failure
    of the first in their order among those that failed is raised."""
    failures = await settle(awaitables, asyncio.FIRST_EXCEPTION)
    if failures:
        raise failures[0]


#: the most game ids a FIGURES answer lists (a mass divergence must not outgrow an answer:
#: past it the list is null, and a fleet sums the counts instead)
MAX_NAMED = 10_000


def named(games: list[str]) -> list[str] | None:
    """Game ids for a FIGURES answer, or None past MAX_NAMED."""
    return list(games) if len(games) <= MAX_NAMED else None


def number(value: object) -> TypeGuard[int | float]:
    """A JSON number that is one: finite, and not a boolean (`true` is an int in Python)."""
    return (type(value) is int or type(value) is float) and math.isfinite(value)


class Switchboard:
    """The switchover operations of one proxy, on its control plane."""

    def __init__(
        self,
        proxy: MirrorProxy,
        control: ControlPlane,
        state: ProxyState,
        rules: Rules,
        comparator: StateComparator | None = None,
        *,
        resync: Callable[[str], Awaitable[int]] | None = None,
        quiesce_timeout: float = 5.0,
        verify_timeout: float = 10.0,
        stall_timeout: float = 1.0,
    ) -> None:
        self.proxy = proxy
        self.control = control
        self.state = state
        self.rules = rules
        self.comparator = comparator
        self.resync = resync
        self.quiesce_timeout = quiesce_timeout
        self.verify_timeout = verify_timeout
        #: a server that owes an answer for longer than this is stalled (or too slow to
        #: switch without holding the clients): the switch is refused, before the clients
        #: are paused when it already shows, else as soon as it does
        self.stall_timeout = stall_timeout
        self.prepared: Prepared | None = None
        #: the token of a PREPARE still quiescing or verifying, and whether it was aborted
        self._preparing: str | None = None
        self._aborted = False
        self._lock = asyncio.Lock()
        self._samples: deque[tuple[float, dict[str, float], dict[str, list[float]]]] = deque(
            maxlen=int(3600 / SAMPLE_EVERY)
        )
        self._started = time.monotonic()
        self._sampler: asyncio.Task[None] | None = None
        #: the closing of verifications' admin connections, in the background
        self._closing: set[asyncio.Future[Any]] = set()
        #: the figures' sample taken as the last switch resumed the clients
        self._switched: tuple[float, dict[str, float], dict[str, list[float]]] | None = None
        #: the comparator's diverged games then (game id -> its finding)
        self._diverged_at_switch: dict[str, int] = {}
        for name, command in (
            ("FIGURES", self._figures),
            ("PREPARE", self._prepare),
            ("COMMIT", self._commit),
            ("ABORT", self._abort),
            ("FLIP", self._flip),
            ("ROLLBACK", self._rollback),
            ("RAMP", self._ramp),
            ("FINALIZE", self._finalize),
            ("RECORD", self._record),
        ):
            control.register(name, command)

    def start(self) -> None:
        """Start sampling the readiness figures."""
        self._sampler = asyncio.create_task(self._sample_loop(), name="figures")

    async def stop(self) -> None:
        """Stop sampling; a pending prepare is aborted."""
        if self.prepared is not None:
            self._resume(self.prepared.previous)
        for closing in list(self._closing):
            closing.cancel()
        if self._sampler is not None:
            self._sampler.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._sampler

    # ----------------------------------------------------------------- the switch

    async def prepare(
        self,
        target: Route,
        hold: float = 10.0,
        *,
        token: str | None = None,
        resync: bool = False,
    ) -> Prepared:
        """Check, pause, quiesce and verify for `target`; stay paused until commit or abort.

        What the proxy knows already is checked before pausing the clients
        (`_check_shadows`): a switch that cannot succeed is refused while they carry on.

        With `resync` (the way back, a rollback), a game whose states differ is first copied
        from the current primary into the shadow, so the route can change without losing
        what the primary acknowledged."""
        if self.prepared is not None:
            raise SwitchError("busy", "another switch is prepared on this proxy")
        proxy = self.proxy
        if not proxy.serving:
            # its clients are being closed (1012): a fleet switch waits until it is back
            raise SwitchError(
                "stopping",
                "this proxy is stopping (its client port is closed); switch once it is back",
            )
        previous = proxy.route
        if not previous.mirroring and target != previous:
            raise SwitchError("not_mirroring", "mirroring is off (finalized): no switch back")
        if target.mirroring != previous.mirroring:
            raise SwitchError("mirroring", "a switch keeps mirroring as it is (FINALIZE ends it)")
        self._preparing, self._aborted = token, False
        paused_at: float | None = None
        try:
            self._check_shadows()  # no await before the pause: see the module's docstring
            proxy.gate.clear()
            paused_at = time.monotonic()
            await self._quiesce()
            checked, unverified = await self._verify(target, resync)
            if self._aborted:
                raise SwitchError("aborted", "aborted while it was being prepared")
        except SwitchError as exc:
            self._refused(exc, paused_at)
            raise
        except Exception as exc:
            failure = SwitchError("error", f"{type(exc).__name__}: {exc}")
            self._refused(failure, paused_at)
            raise failure from exc
        finally:
            self._preparing = None
        assert paused_at is not None
        prepared = Prepared(
            token or secrets.token_hex(8), target, previous, paused_at, checked, unverified
        )
        prepared.expiry = asyncio.get_running_loop().call_later(hold, self._expire, prepared)
        self.prepared = prepared
        return prepared

    def _refused(self, exc: SwitchError, paused_at: float | None) -> None:
        """A PREPARE refused: resume the clients if it had paused them; say for how long."""
        if paused_at is None:
            exc.paused_ms = 0.0
            return
        self.proxy.gate.set()
        exc.paused_ms = (time.monotonic() - paused_at) * 1000

    def _expire(self, prepared: Prepared) -> None:
        if self.prepared is prepared:
            self.prepared = None
            self.proxy.gate.set()  # a coordinator that vanished must not freeze clients

    async def commit(self, token: str) -> tuple[Route, float]:
        """Wait (bounded) until every client to swap has its other upstream ready, persist
        the route, then swap roles under every client and resume.

        Nothing is awaited between the swap and `flipped` (what each new primary still owes
        as the shadow must not reach its client). A client whose other upstream was lost in
        the instant of the route's save is swapped and closed with 1012 (reconnect): it
        cannot stay on the previous primary (its game would be on two servers) and has no
        connection to the new one."""
        prepared = self._take(token)
        try:
            return await self._swap(prepared)
        except SwitchError as exc:
            # refused after the clients were paused (by its PREPARE): say for how long
            exc.paused_ms = (time.monotonic() - prepared.paused_at) * 1000
            raise

    async def _swap(self, prepared: Prepared) -> tuple[Route, float]:
        proxy = self.proxy
        # No resync reads one server and writes the other across the swap (`swap_lock`);
        # one under way is waited for, as long as a client may stay paused.
        try:
            async with asyncio.timeout(self.quiesce_timeout):
                await proxy.swap_lock.acquire()
        except TimeoutError:
            self._resume(prepared.previous)
            raise SwitchError(
                "busy", "a resync is copying a game between the servers: try again"
            ) from None
        try:
            try:
                await self._swappable(prepared.target)
                await self.state.save_route(prepared.target)
            except SwitchError:
                self._resume(prepared.previous)
                raise
            except Exception as exc:
                self._resume(prepared.previous)
                raise SwitchError("persist", f"the route could not be saved: {exc}") from exc
            proxy.settle()  # what was read before the swap is bookkept under its roles
            for session in list(proxy.sessions.values()):
                if session.mirrored and not session.closed:
                    wanted = prepared.target.primary_for(session.game_id)
                    if wanted != session.primary:
                        ready = proxy.shadow_ready(session, wanted)
                        session.primary = wanted
                        proxy.flipped(session)
                        if not ready:
                            proxy.drop_client(session, 1012, "upstream lost during a switchover")
        finally:
            proxy.swap_lock.release()
        paused = (time.monotonic() - prepared.paused_at) * 1000
        self._resume(prepared.target)
        # the base of figures "since the switch" (a watch's): nothing relayed in between
        self._switched = (time.monotonic(), *self._read())
        if self.comparator is not None:
            self.comparator.mark_epoch(time.time())  # the tap's clock
            self._diverged_at_switch = dict(self.comparator.diverged)
        return prepared.target, paused

    async def _swappable(self, target: Route) -> None:
        """Every client that `target` moves has its other upstream open and in step (the
        order has not given it up), waiting up to `quiesce_timeout` for those still
        connecting (clients that arrived during the pause); else SwitchError("shadow")."""
        proxy = self.proxy

        def missing() -> list[Session]:
            return [
                s
                for s in list(proxy.sessions.values())
                if s.mirrored
                and not s.closed
                and target.primary_for(s.game_id) != s.primary
                and not proxy.shadow_ready(s, target.primary_for(s.game_id))
            ]

        # a shadow lost meanwhile is waited for too: the proxy reopens it (a revived one
        # answers its client's replayed CONNECT before the swap)
        await self._until_open(
            missing, "have no open connection to the upstream they would move to", False
        )

    async def _until_open(
        self, missing: Callable[[], list[Session]], what: str, given_up_refuses: bool
    ) -> None:
        """Wait, up to `quiesce_timeout`, until `missing()` (clients whose connection to an
        upstream is not open yet) is empty; SwitchError("shadow", "N clients `what`") at the
        bound, or at once, when `given_up_refuses`, if the order gave one of them up."""
        conns = self.proxy.order.conns
        deadline = time.monotonic() + self.quiesce_timeout
        while True:
            left = missing()
            if not left:
                return
            given_up = given_up_refuses and any(
                (conn := conns.get(s.id)) is not None and conn.dead for s in left
            )
            if given_up or time.monotonic() > deadline:
                raise SwitchError("shadow", f"{len(left)} clients {what}")
            await asyncio.sleep(0.005)

    async def abort(self, token: str) -> Route:
        """Resume with the route unchanged (when `token` is the prepared switch's)."""
        prepared = self.prepared
        if prepared is not None and token == prepared.token:
            self._take(prepared.token)
            self._resume(prepared.previous)
        elif token == self._preparing:
            self._aborted = True  # the PREPARE under way refuses when its checks end
        return self.proxy.route

    def _take(self, token: str) -> Prepared:
        prepared = self.prepared
        if prepared is None or prepared.token != token:
            raise SwitchError("not_prepared", "nothing prepared with that token (expired?)")
        self.prepared = None
        if prepared.expiry is not None:
            prepared.expiry.cancel()
        return prepared

    def _resume(self, route: Route) -> None:
        self.prepared = None
        self.proxy.set_route(route)
        self.proxy.gate.set()

    async def _servers(self, count: int = 1) -> list[tuple[AdminClient, AdminClient]]:
        """`count` pairs of admin connections to the old and the new server (`_admins`)."""
        clients = await self._admins([name for _ in range(count) for name in ("old", "new")])
        return list(zip(clients[::2], clients[1::2], strict=True))

    async def _reach(self, names: list[str]) -> None:
        """An admin connection to each server of `names` answers (within `stall_timeout`),
        else SwitchError (`stalled`, `unreachable`)."""
        self._release(await self._admins(names), failed=False)

    async def _admins(self, names: list[str]) -> list[AdminClient]:
        """An admin connection to each server of `names`, each answered within
        `stall_timeout`, else SwitchError (`stalled`, `unreachable`) and none left open.
        The caller ends them with `_release`."""
        token = mint_token(self.proxy.settings.secret, "stateshift-switch", "admin", ttl=120)
        clients = [AdminClient(self.proxy.urls[name], token) for name in names]
        try:
            opened = await asyncio.gather(
                *(self._connect(name, c) for name, c in zip(names, clients, strict=True)),
                return_exceptions=True,  # all end before any is dropped
            )
        except BaseException:  # cancelled (the verification's bound)
            self._release(clients, failed=True)
            raise
        failures = [result for result in opened if isinstance(result, BaseException)]
        if failures:
            self._release(clients, failed=True)
            raise failures[0]
        return clients

    def _release(self, clients: list[AdminClient], *, failed: bool) -> None:
        """End the switch's admin connections without holding the clients: dropped at once
        after a failure (a server that stopped answering would hold each closing handshake
        for its timeout), else closed in the background."""
        if failed:
            for admin in clients:
                admin.abandon()
            return
        closing = asyncio.ensure_future(
            asyncio.gather(*(admin.close() for admin in clients), return_exceptions=True)
        )
        self._closing.add(closing)
        closing.add_done_callback(self._closing.discard)

    async def _connect(self, name: str, admin: AdminClient) -> AdminClient:
        """`admin` connected to server `name`, or SwitchError."""
        try:
            async with self._answering(name, "an admin CONNECT"):
                await admin.__aenter__()
        except AdminError as exc:
            raise SwitchError(
                "error", f"the {name} server refused the switch's admin connection: {exc}"
            ) from exc
        return admin

    @contextlib.asynccontextmanager
    async def _answering(self, name: str, what: str) -> AsyncIterator[None]:
        """A request to server `name` while the clients are paused: bounded by
        `stall_timeout`, else SwitchError("stalled"); a server that cannot be reached (or
        was lost) is SwitchError("unreachable")."""
        stalled = SwitchError(
            "stalled",
            f"the {name} server did not answer {what} within {self.stall_timeout:g} s: "
            "it is stalled or too slow to switch without holding the clients",
        )
        try:
            async with asyncio.timeout(self.stall_timeout):
                yield
        except TimeoutError as exc:
            raise stalled from exc
        except AdminUnreachable as exc:
            if exc.code == "TIMEOUT":  # the client's own bound (not under stall_timeout)
                raise stalled from exc
            raise SwitchError(
                "unreachable", f"the {name} server cannot be reached: {exc.message}", name
            ) from exc

    async def _states(
        self, old: AdminClient, new: AdminClient, game_id: str
    ) -> tuple[dict[str, Any] | None, dict[str, Any] | None]:
        """The game's state on the old and on the new server (each bounded: `_answering`)."""

        async def one(name: str, admin: AdminClient) -> dict[str, Any] | None:
            async with self._answering(name, f"GET_STATE of game {game_id}"):
                return await admin.get_state(game_id)

        # Both end (each within `stall_timeout`) before a failure is raised: one left
        # running would outlive its connection's close and resend on a new one.
        states = await asyncio.gather(one("old", old), one("new", new), return_exceptions=True)
        for result in states:
            if isinstance(result, BaseException):
                raise result
        old_state, new_state = states
        assert not isinstance(old_state, BaseException)
        assert not isinstance(new_state, BaseException)
        return old_state, new_state

    def _check_shadows(self) -> None:
        """Refuse (SwitchError) while a client's shadow is given up by the proxy (down,
        refused, crashed, stalled or overflowed, and not back yet: `shadow`), or owes an
        answer for longer than `stall_timeout` (`stalled`). Shadows still opening are the
        verification's business (`_shadows_open` waits for them, bounded)."""
        given_up = 0
        for session in list(self.proxy.sessions.values()):
            if not session.mirrored or session.closed:
                continue  # a client that left is owed nothing
            conn = self.proxy.order.conns.get(session.id)
            if conn is not None and conn.dead:
                given_up += 1
        if given_up:
            raise SwitchError(
                "shadow",
                f"{given_up} clients have no shadow connection (the proxy gave it up: see "
                "the shadow drops by reason); refused before pausing any client",
            )
        stalled = self._stalled()
        if stalled is not None:
            raise stalled

    def _stalled(self) -> SwitchError | None:
        """A refusal when some client's shadow owes an answer for longer than
        `stall_timeout` (connected, but not answering: the order would declare it stalled
        only after `answer_timeout`), else None."""
        now = time.monotonic()
        oldest: dict[str, float] = {}
        waiting: dict[str, int] = {}
        order = self.proxy.order
        for session in list(self.proxy.sessions.values()):
            if not session.mirrored:
                continue
            conn = order.conns.get(session.id)
            if conn is None or conn.dead or not conn.unanswered:
                continue
            if session.closed:
                # A client that left is owed nothing, but while `_end` waits for its
                # shadow, a change of its still in flight keeps its game's order busy: the
                # quiesce (`order.idle()`) waits for that answer like any other.
                game = order.games.get(conn.game_id) if conn.game_id is not None else None
                if game is None or game.busy_conn is not conn:
                    continue
            age = now - conn.unanswered[0][1]  # released in order: the first is the oldest
            if age > self.stall_timeout:
                name = session.shadow
                oldest[name] = max(age, oldest.get(name, 0.0))
                waiting[name] = waiting.get(name, 0) + 1
        if not oldest:
            return None
        name = max(oldest, key=oldest.__getitem__)
        return SwitchError(
            "stalled",
            f"the {name} server (shadow) has owed an answer for {oldest[name]:.1f} s "
            f"(clients waiting on it: {waiting[name]}; bound {self.stall_timeout:g} s): it "
            "is stalled or too slow to switch without holding the clients",
        )

    async def _quiesce(self) -> None:
        """Wait until the primary answered every forwarded frame and the shadow caught up;
        refuse as soon as the shadow stalls (`_stalled`) rather than at the bound."""
        proxy = self.proxy
        deadline = time.monotonic() + self.quiesce_timeout
        while True:
            proxy.settle()  # the bookkeeping of frames forwarded just before the pause
            proxy.write_shadows()  # copies waiting to share a write go now, not after a swap
            in_flight = sum(
                len(s.sent[s.primary]) + s.nameless[s.primary]
                for s in proxy.sessions.values()
                if s.mirrored and not s.closed  # a client that left is owed nothing
            )
            # (what its frames mean for the shadow's order is in `order.idle()`)
            if not in_flight and proxy.order.idle():
                return
            stalled = self._stalled()
            if stalled is not None:
                raise stalled
            if time.monotonic() > deadline:
                owed = sum(
                    len(conn.unanswered) for conn in proxy.order.conns.values() if not conn.dead
                )
                raise SwitchError(
                    "quiesce",
                    f"not quiet after {self.quiesce_timeout} s: {in_flight} answers in flight, "
                    f"{owed} answers owed by the shadow, "
                    f"{proxy.order.buffered()} frames waiting for the shadow",
                )
            await asyncio.sleep(0.005)

    async def _shadows_open(self) -> None:
        """Every client connected when it starts has its shadow open and in step, waiting up
        to `quiesce_timeout` for those still opening: a client that connected just before or
        during the pause may have its shadow's handshake still under way (what it sent
        before the pause kept the quiesce waiting; what it sends now is held). Clients that
        arrive meanwhile are not waited for (under steady churn there would always be one):
        the commit checks them (`_swappable`). A shadow the proxy gave up refuses at once."""
        proxy = self.proxy
        opening = [
            s.id
            for s in list(proxy.sessions.values())
            if s.mirrored and not s.closed and not proxy.shadow_ready(s)
        ]

        def missing() -> list[Session]:
            return [
                s
                for sid in opening
                if (s := proxy.sessions.get(sid)) is not None
                and not s.closed
                and not proxy.shadow_ready(s)
            ]

        # as `_check_shadows`: a shadow given up refuses the switch at once
        await self._until_open(missing, "have no shadow connection", True)

    async def _verify(self, target: Route, resync: bool = False) -> tuple[int, int]:
        """Every client has its shadow; every active game that `target` moves is equal on
        both servers (after a resync from the current primary when `resync`): the number of
        games compared, and of games not compared. No server is waited on for longer than
        `stall_timeout` at a time (`_answering`).

        Games leaving a server that cannot be reached (a new primary that crashed) are not
        compared: nothing can be read from it, its clients are refused until the switch,
        and the server they go to received every change it acknowledged, in its order (the
        comparator's findings say which games were not in step). Only the servers that
        `target` makes primary must answer: a rollback off a dead server goes through."""
        proxy = self.proxy
        await self._shadows_open()
        sessions = [s for s in proxy.sessions.values() if s.mirrored]
        # only the games that change primary must be equal on both servers: the others stay
        # where they are (a ramp step moves a share of them)
        route = proxy.route
        games = sorted(
            {
                game
                for s in sessions
                if (game := s.game_id) is not None
                and target.primary_for(game) != route.primary_for(game)
            }
        )
        if not games:
            # nothing to compare: only the servers the target makes primary are asked (a
            # dead one would refuse every client after the switch), not the other (a dead
            # new server, whose clients are gone, must not block the way back)
            await self._reach(primaries(target))
            return 0, 0
        rules = self.rules.for_type("STATE")
        resync_game = self.resync if resync else None
        count = min(
            MAX_CONNECTIONS,
            max(1, min(len(games), READERS), math.ceil(len(games) / GAMES_PER_CONNECTION)),
        )
        pool: list[tuple[AdminClient, AdminClient]] = []
        try:
            async with asyncio.timeout(self.verify_timeout):
                pool = await self._servers(count)
                turns = [asyncio.Lock() for _ in pool]

                async def check(index: int, game_id: str) -> None:
                    slot = index % len(pool)
                    async with turns[slot]:  # one read at a time per connection
                        old, new = pool[slot]
                        await self._check_game(old, new, game_id, rules, resync_game)

                await all_or_first_error(check(i, game_id) for i, game_id in enumerate(games))
        except BaseException as exc:
            self._release([admin for pair in pool for admin in pair], failed=True)
            leaving = {route.primary_for(game) for game in games}
            if (
                isinstance(exc, SwitchError)
                and exc.reason == "unreachable"
                and exc.server in leaving
                and exc.server not in primaries(target)
            ):
                await self._reach(primaries(target))
                log.warning(
                    "switch: %d games leave the %s server, which cannot be reached: moved "
                    "without comparing them",
                    len(games),
                    exc.server,
                )
                return 0, len(games)
            if isinstance(exc, TimeoutError):
                raise SwitchError(
                    "verify",
                    f"comparing {len(games)} games took longer than {self.verify_timeout:g} s",
                ) from exc
            raise
        self._release([admin for pair in pool for admin in pair], failed=False)
        return len(games), 0

    async def _check_game(
        self,
        old: AdminClient,
        new: AdminClient,
        game_id: str,
        rules: TypeRules,
        resync: Callable[[str], Awaitable[int]] | None,
    ) -> None:
        """The game's states on both servers are equal (after `resync` of it, when given
        and they were not), else SwitchError("unequal")."""
        states = await self._states(old, new, game_id)
        if states[0] is None and states[1] is None:
            return  # on neither: a client on its path has not joined it yet (equal)
        if states[0] is None or states[1] is None:
            side = "old" if states[0] is None else "new"
            raise SwitchError("unequal", f"game {game_id} is missing on the {side} server")
        verdict = compare_states(states[0], states[1], rules)
        if not verdict.equal and resync is not None:
            await resync(game_id)
            states = await self._states(old, new, game_id)
            verdict = compare_states(states[0], states[1], rules)
        if not verdict.equal:
            raise SwitchError("unequal", f"game {game_id} differs: {', '.join(verdict.paths)}")

    async def _remember(self, actor: str, kind: str, result: str, details: dict[str, Any]) -> int:
        """Record an event in the history (it survives restarts) and count it."""
        self.proxy.metrics.switch_event(kind, result)
        return await self.state.record(actor, kind, result, details)

    # ----------------------------------------------------------------- figures

    def _read(self) -> tuple[dict[str, float], dict[str, list[float]]]:
        registry = self.proxy.metrics.registry
        counters: dict[str, float] = {}
        #: by role, and by role and upstream ("primary old", …)
        buckets: dict[str, list[float]] = {"primary": [], "shadow": []}
        bucket_bounds: list[float] = []
        for family in registry.collect():
            for sample in family.samples:
                name, labels = sample.name, sample.labels
                if name == "stateshift_comparisons_total":
                    key = (
                        "mismatches"
                        if labels["result"] in ("mismatch", "unpaired")
                        else ("comparisons_ok" if labels["result"] == "match" else None)
                    )
                    if key:
                        counters[key] = counters.get(key, 0.0) + sample.value
                elif name == "stateshift_proxy_shadow_drops_total":
                    counters["shadow_drops"] = counters.get("shadow_drops", 0.0) + sample.value
                elif name == "stateshift_proxy_upstream_connect_failures_total":
                    # a client refused (502) or lost by its primary; `rejected` is the
                    # client's own request (a 4xx)
                    if labels["role"] == "primary" and labels["reason"] != "rejected":
                        key = f"primary_failures_{labels['upstream']}"
                        counters[key] = counters.get(key, 0.0) + sample.value
                elif name == "stateshift_upstream_latency_seconds_bucket":
                    role = labels["role"]
                    bound = float(labels["le"])
                    if bound not in bucket_bounds:
                        bucket_bounds.append(bound)
                    index = bucket_bounds.index(bound)
                    for key in (role, f"{role} {labels['upstream']}"):
                        series = buckets.setdefault(key, [])
                        while len(series) <= index:
                            series.append(0.0)
                        series[index] += sample.value
        buckets["bounds"] = bucket_bounds
        return counters, buckets

    async def _sample_loop(self) -> None:
        while True:
            counters, buckets = self._read()
            self._samples.append((time.monotonic(), counters, buckets))
            await asyncio.sleep(SAMPLE_EVERY)

    def figures(self, window: float, since_switch: bool = False) -> dict[str, Any]:
        """Readiness figures over the last `window` seconds; with `since_switch`, since the
        last switch on this proxy resumed its clients (when there was one), exactly: what
        happened before it neither counts nor hides what happened after."""
        now = time.monotonic()
        counters, buckets = self._read()
        base_counters: dict[str, float] = {}
        base_buckets: dict[str, list[float]] = {}
        switched = self._switched if since_switch else None
        if switched is not None:
            at, base_counters, base_buckets = switched
            window = now - at
        for at, sample_counters, sample_buckets in [] if switched else self._samples:
            # the first sample in the window; none there: the newest (never "since start")
            base_counters, base_buckets = sample_counters, sample_buckets
            if at >= now - window:
                break

        def delta(key: str) -> int:
            return int(counters.get(key, 0.0) - base_counters.get(key, 0.0))

        def p99(role: str) -> float | None:
            bounds = buckets["bounds"]
            now_series = buckets.get(role, [])
            then = base_buckets.get(role, [])
            series = [v - (then[i] if i < len(then) else 0.0) for i, v in enumerate(now_series)]
            if not series or series[-1] <= 0:
                return None
            total = series[-1]
            rank = 0.99 * total
            lower, below = 0.0, 0.0
            for bound, cumulative in zip(bounds, series, strict=False):
                if cumulative >= rank:
                    if not math.isfinite(bound):
                        # above the top bucket: its bound, a lower bound of the p99 (JSON has
                        # no infinity; null would read as "no samples")
                        return lower
                    # interpolated within the bucket, as Prometheus' histogram_quantile: a
                    # bucket's upper bound alone moves the figure by up to 2x at 5-15 ms
                    inside = cumulative - below
                    return lower + (bound - lower) * ((rank - below) / inside if inside else 1.0)
                lower, below = bound, cumulative
            return None

        status = self.control.status()
        compare_status = self.comparator.status() if self.comparator is not None else {}
        mismatches = delta("mismatches")
        diverged: list[str] = list(compare_status.get("diverged", []))
        if switched is not None and self.comparator is not None:
            # since the switch: diverged after it (again, for a game resynced meanwhile),
            # leaving out frames tapped before it and judged unpaired only after it
            comparator = self.comparator
            mismatches -= comparator.excluded_since_epoch
            before = self._diverged_at_switch
            diverged = sorted(
                game
                for game, finding in comparator.diverged.items()
                if before.get(game) != finding and finding not in comparator.excluded_findings
            )
        return {
            "window": window,
            "comparisons": delta("comparisons_ok") + mismatches,
            "mismatches": mismatches,
            "diverged": len(diverged),
            # every proxy of a fleet sweeps every game: the fleet counts distinct games
            "diverged_games": named(diverged),
            "not_comparable": len(compare_status.get("not_comparable", [])),
            "not_comparable_games": named(compare_status.get("not_comparable", [])),
            "mirrored_connections": status["mirrored_connections"],
            "shadow_connected": status["shadow_connected"],
            "shadow_drops": delta("shadow_drops"),
            # clients refused or lost by the new server as their primary
            "primary_failures_new": delta("primary_failures_new"),
            "primary_p99": p99("primary"),
            "shadow_p99": p99("shadow"),
            # by upstream: under a ramp each server is primary for some games
            **{
                f"{role}_{upstream}_p99": p99(f"{role} {upstream}")
                for role in ("primary", "shadow")
                for upstream in ("old", "new")
            },
            "complete": now - self._started >= window,
        }

    # ----------------------------------------------------------------- commands

    def _expected(self, msg: dict[str, Any]) -> Route | None:
        """The route the caller read before asking for a switch (`expect`), if it says."""
        expect = msg.get("expect")
        if expect is None:
            return None
        if not isinstance(expect, dict):
            raise CommandError("BAD_MESSAGE", "`expect` must be a route object")
        try:
            return Route.from_dict(expect)
        except (ValueError, TypeError, KeyError) as exc:
            raise CommandError("BAD_MESSAGE", f"`expect`: {exc}") from exc

    def _target(self, msg: dict[str, Any]) -> Route:
        target = msg.get("target")
        if not isinstance(target, dict):
            raise CommandError("BAD_MESSAGE", "`target` must be a route object")
        ramp = target.get("ramp")
        if ramp is not None and not number(ramp):
            raise CommandError("BAD_MESSAGE", "`target.ramp` must be a percentage or null")
        mirroring = target.get("mirroring", self.proxy.route.mirroring)
        if type(mirroring) is not bool:
            raise CommandError("BAD_MESSAGE", "`target.mirroring` must be true or false")
        try:
            return replace(
                self.proxy.route,
                primary=str(target.get("primary", self.proxy.route.primary)),
                ramp=None if ramp is None else float(ramp),
                mirroring=mirroring,
            )
        except (ValueError, TypeError) as exc:
            raise CommandError("BAD_MESSAGE", str(exc)) from exc

    async def _switch(
        self,
        actor: str,
        kind: str,
        target: Route,
        details: dict[str, Any],
        resync: bool = False,
    ) -> dict[str, Any]:
        """prepare + commit on this proxy, recorded in the history either way."""
        async with self._lock:
            before = self.proxy.route
            try:
                prepared = await self.prepare(target, resync=resync)
                route, paused = await self.commit(prepared.token)
            except SwitchError as exc:
                held = exc.pause()
                await self._remember(
                    actor,
                    kind,
                    "failed",
                    {
                        **details,
                        "reason": exc.reason,
                        "message": exc.message,
                        "route": before.to_dict(),
                        **held,
                    },
                )
                raise CommandError(
                    "FAILED",
                    exc.message,
                    reason=exc.reason,
                    route=self.proxy.route.to_dict(),
                    **held,
                ) from exc
            await self._remember(
                actor,
                kind,
                "ok",
                {**details, "from": before.to_dict(), "to": route.to_dict(), "paused_ms": paused},
            )
            return {"route": route.to_dict(), "paused_ms": paused}

    async def _figures(self, actor: str, msg: dict[str, Any]) -> dict[str, Any]:
        window = msg.get("window", 300)
        if not number(window) or window <= 0:
            raise CommandError("BAD_MESSAGE", "`window` must be a positive number of seconds")
        since = msg.get("since")
        if since not in (None, "switch"):
            raise CommandError("BAD_MESSAGE", '`since` must be "switch" or absent')
        return {"figures": self.figures(float(window), since_switch=since == "switch")}

    async def _prepare(self, actor: str, msg: dict[str, Any]) -> dict[str, Any]:
        target = self._target(msg)
        hold = msg.get("hold", 10.0)
        if not number(hold) or not 0 < hold <= MAX_HOLD:
            raise CommandError("BAD_MESSAGE", f"`hold` must be 0 < seconds <= {MAX_HOLD:g}")
        token = msg.get("token")
        if token is not None and (not isinstance(token, str) or not 8 <= len(token) <= 64):
            raise CommandError("BAD_MESSAGE", "`token` must be a string of 8 to 64 characters")
        expect = self._expected(msg)
        await self._lock.acquire()
        current = self.proxy.route
        if expect is not None and current not in (expect, target):
            # another switch went through since the caller read the route: its own would
            # undo that one without anyone deciding so (two operators, two scripts)
            self._lock.release()
            raise CommandError(
                "FAILED",
                f"the route changed since it was read: {current.describe()} (another switch?)",
                reason="changed",
                route=current.to_dict(),
            )
        try:
            prepared = await self.prepare(
                target, float(hold), token=token, resync=msg.get("resync") is True
            )
        except SwitchError as exc:
            self._lock.release()
            held = exc.pause()
            await self._remember(
                actor, "prepare", "failed", {"reason": exc.reason, "message": exc.message, **held}
            )
            raise CommandError(
                "FAILED",
                exc.message,
                reason=exc.reason,
                route=self.proxy.route.to_dict(),
                **held,
            ) from exc
        self._lock.release()
        paused = (time.monotonic() - prepared.paused_at) * 1000
        return {
            "prepared": {
                "token": prepared.token,
                "paused_ms": paused,
                "games_checked": prepared.games_checked,
                "games_unverified": prepared.games_unverified,
            }
        }

    async def _commit(self, actor: str, msg: dict[str, Any]) -> dict[str, Any]:
        # Under the switches' lock: a FINALIZE or a PREPARE arriving while this commit waits
        # (its switch is no longer `prepared`) would otherwise pass their checks.
        async with self._lock:
            before = self.proxy.route
            try:
                route, paused = await self.commit(str(msg.get("token")))
            except SwitchError as exc:
                raise CommandError("FAILED", exc.message, reason=exc.reason, **exc.pause()) from exc
        await self._remember(
            actor,
            "commit",
            "ok",
            {"from": before.to_dict(), "to": route.to_dict(), "paused_ms": paused},
        )
        return {"route": route.to_dict(), "paused_ms": paused}

    async def _abort(self, actor: str, msg: dict[str, Any]) -> dict[str, Any]:
        token = msg.get("token")
        if not isinstance(token, str):
            # a token-less abort could cancel another coordinator's switch
            raise CommandError("BAD_MESSAGE", "ABORT needs the `token` of the PREPARE")
        route = await self.abort(token)
        await self._remember(actor, "abort", "ok", {"reason": msg.get("reason", "")})
        return {"route": route.to_dict()}

    async def _flip(self, actor: str, msg: dict[str, Any]) -> dict[str, Any]:
        target = replace(self.proxy.route, primary="new", ramp=None)
        details = {"reason": msg.get("reason", ""), "force": bool(msg.get("force"))}
        return await self._switch(actor, "flip", target, details)

    async def _rollback(self, actor: str, msg: dict[str, Any]) -> dict[str, Any]:
        route = self.proxy.route
        target = replace(route, primary="old", ramp=None)
        details = {"reason": msg.get("reason", "")}
        return await self._switch(actor, "rollback", target, details, resync=True)

    async def _ramp(self, actor: str, msg: dict[str, Any]) -> dict[str, Any]:
        percent = msg.get("percent")
        if not number(percent) or not 0 <= percent <= 100:
            raise CommandError("BAD_MESSAGE", "`percent` must be 0..100")
        route = self.proxy.route
        target = replace(route, ramp=float(percent))
        # lowering the share moves games back to the old server: a rollback for them, with
        # its resync (as `stateshift switchover ramp` does)
        return await self._switch(
            actor, "ramp", target, {"percent": percent}, resync=percent < route.share()
        )

    async def _finalize(self, actor: str, msg: dict[str, Any]) -> dict[str, Any]:
        if msg.get("confirm") is not True:
            raise CommandError("BAD_MESSAGE", "finalize needs `confirm: true`")
        # Under the switches' lock, and never inside a prepared switch: a rollback that
        # committed after it would route new clients to the server no longer mirrored.
        async with self._lock:
            if self.prepared is not None:
                raise CommandError(
                    "FAILED", "a switch is prepared on this proxy: commit or abort it first"
                )
            route = self.proxy.route
            if route.primary != "new" or route.ramp not in (None, 100.0):
                raise CommandError("FAILED", "finalize only after a full flip to the new server")
            target = replace(route, mirroring=False)
            await self.state.save_route(target)
            self.proxy.finalize(target)
            await self._remember(actor, "finalize", "ok", {"route": target.to_dict()})
        return {"route": target.to_dict()}

    async def _record(self, actor: str, msg: dict[str, Any]) -> dict[str, Any]:
        kind, result, details = msg.get("kind"), msg.get("result"), msg.get("details", {})
        if (
            not isinstance(kind, str)
            or not isinstance(result, str)
            or not isinstance(details, dict)
        ):
            raise CommandError("BAD_MESSAGE", "RECORD needs `kind`, `result` and `details`")
        return {"event_id": await self._remember(actor, kind, result, details)}


__all__ = ["SwitchError", "Switchboard"]
