"""Edges of the switch's verification and of the proxy's drain, found by reviewing them;
each test failed before its fix:

- a server that answers every read, slowly, was called `stalled` (the reads' own queue on
  one connection counted as the server's stall);
- a server that froze during the verification held the clients for every pooled admin
  connection's closing handshake, and the refusal said `verify`, not `stalled`;
- a drain ended while a client was still connecting (its upgrade waiting for the primary);
- a second signal read in the same loop turn as the first was lost (the drain ran on);
- a switch was prepared (and could be committed) on a proxy whose client port had closed.

Timing never decides a test: a failure rests on lower bounds (a server's `slow` fault, a
close timeout) or on conditions waited for with `wait_until`.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest

from proxy.route import Route
from proxy.switch import GAMES_PER_CONNECTION, SwitchError
from stateshift.runtime import serve_until_signalled
from tests.proxy.conftest import Client, one_per_game, start_legacy, start_new, start_stack, token
from tests.support import ServerProcess, admin_url, proxy_args, timeout, wait_until

# --------------------------------------------------------------------------------------
# 1. The switch's verification counts its own queue as the server's stall.


async def test_a_slow_but_answering_old_server_is_not_called_stalled_by_the_verification(
    tmp_path: Path,
):
    """The old server answers each admin read in 100 ms (well within `stall_timeout`, 1 s).
    Read one at a time (before b7274b8) 20 games take 2 s, within `verify_timeout` (10 s).
    Sent all at once over one admin connection, the server answered them in order, and each
    read's `stall_timeout` ran while it waited behind the others: the 11th was "stalled".
    Now each connection carries one read at a time."""
    games = 20
    async with start_stack(tmp_path, "slow:100", tap=False, switchboard=True) as stack:
        board = stack.board
        assert board.stall_timeout == 1.0
        assert board.verify_timeout == 10.0
        async with one_per_game(stack.proxy.url, games):
            prepared = await board.prepare(Route(primary="new"))
            assert prepared.games_checked == games
            await board.commit(prepared.token)


# --------------------------------------------------------------------------------------
# 2. A server that freezes during the verification: the pool's closes hold the clients.


async def test_a_server_frozen_while_verifying_does_not_hold_the_clients_per_pooled_connection(
    tmp_path: Path,
):
    """The old server stops reading (a frozen process: its kernel still takes the bytes)
    once the pool is open. The GET_STATE is not answered within `stall_timeout` (0.5 s): the
    switch must be refused as `stalled`, and the clients resumed about then. Instead every
    pooled connection is closed with a closing handshake, one after the other, each waiting
    for the frozen server's close frame (10 s); the verification's bound (2 s) cuts the
    first one only, so the refusal says `verify` and the clients stay paused for 10 s per
    further pooled connection (1,000 games: 21 connections, over 3 minutes)."""
    games = GAMES_PER_CONNECTION + 12  # several pooled connections per server
    async with start_stack(tmp_path, tap=False, switchboard=True) as stack:
        board = stack.board
        board.stall_timeout = 0.5
        board.verify_timeout = 2.0
        async with one_per_game(stack.proxy.url, games):
            frozen: list[Any] = []
            original = board._states

            async def freezing(*args: Any) -> Any:
                # the first read of a game: the pool is open by now
                if not frozen:
                    assert stack.old._server is not None
                    for conn in stack.old._server.connections:
                        conn.transport.pause_reading()
                        frozen.append(conn.transport)
                return await original(*args)

            board._states = freezing  # type: ignore[method-assign,assignment]
            try:
                with pytest.raises(SwitchError) as refused:
                    await board.prepare(Route(primary="new"))
                assert frozen
                assert refused.value.paused_ms is not None
                # the clients were held for the stall bound, not for the pool's closes (each
                # close waits for a close frame 10 s: with two pooled connections to the frozen
                # server, at least 10 s past the verification's bound)
                assert refused.value.paused_ms < (board.verify_timeout + 5) * 1000, (
                    refused.value.paused_ms,
                    refused.value.reason,
                )
                # and the operator is told why: the server stalled (not "comparing took long")
                assert refused.value.reason == "stalled", refused.value.message
            finally:
                for transport in frozen:
                    with contextlib.suppress(Exception):
                        transport.resume_reading()


# --------------------------------------------------------------------------------------
# 3. A drain ends while a client is still connecting.


class HeldForwarder:
    """A TCP forwarder to `target` that holds every connection until `release` is set."""

    def __init__(self, target: str) -> None:
        where = urlsplit(target)
        self.host, self.port_to = where.hostname or "127.0.0.1", where.port or 80
        self.release = asyncio.Event()
        self.accepted = 0
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self.port = 0

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}"

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        self.accepted += 1
        try:
            await self.release.wait()
            up_reader, up_writer = await asyncio.open_connection(self.host, self.port_to)

            async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
                with contextlib.suppress(Exception):
                    while data := await src.read(65536):
                        dst.write(data)
                        await dst.drain()
                with contextlib.suppress(Exception):
                    dst.close()

            await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))
        finally:
            writer.close()
            self._tasks.discard(task)


async def healthz(admin: str) -> tuple[int, str] | None:
    where = urlsplit(admin)
    try:
        reader, writer = await asyncio.open_connection(where.hostname, where.port)
    except OSError:
        return None
    try:
        writer.write(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
        answer = await asyncio.wait_for(reader.read(), timeout())
    except (OSError, TimeoutError):
        return None
    finally:
        writer.close()
    if not answer:
        return None
    head, _, body = answer.decode().partition("\r\n\r\n")
    return int(head.split()[1]), body


async def test_a_drain_waits_for_a_client_whose_handshake_is_under_way(tmp_path: Path):
    """A client's handshake reached the proxy (which is opening its primary connection)
    when the SIGTERM comes: it is a new client, and "every connection (a new one too) is
    still served" while the proxy drains. But the drain waits for `vacated`, which only
    counts clients once their handshake is done: with none counted yet, the proxy stops at
    once (/healthz: `shutting down`) and the client's handshake fails."""
    old = await start_legacy(tmp_path)
    new = await start_new(tmp_path)
    held = HeldForwarder(old.url)
    await held.start()
    process = ServerProcess(
        proxy_args(
            held.url,
            new.url,
            tmp_path / "proxy.db",
            *("--drain-timeout", "600", "--sweep-interval", "0"),
        ),
        tmp_path / "proxy.log",
    )
    connecting: asyncio.Task[Client] | None = None
    try:
        url = await asyncio.to_thread(process.start)
        admin = await asyncio.to_thread(admin_url, process)
        started = held.accepted  # the proxy's start-up check of its secret opened one
        connecting = asyncio.create_task(Client.open(f"{url}/v1/games/handshaking"))
        await wait_until(lambda: held.accepted > started, what="the proxy to open its primary")
        assert process.proc is not None
        process.proc.send_signal(signal.SIGTERM)
        verdicts: list[str] = []

        async def told() -> bool:
            answer = await healthz(admin)
            verdicts.append("refused" if answer is None else answer[1].split("\n", 1)[0])
            return verdicts[-1] in ("draining", "shutting down", "refused")

        await wait_until(told, every=0.05, what="/healthz to say draining or shutting down")
        assert verdicts[-1] == "draining", verdicts[-1]
        held.release.set()
        client = await connecting
        joined = await client.request(type="CONNECT", id="c", token=token("ann"))
        assert joined["type"] == "CONNECTED", joined
        await client.request(type="DISCONNECT", id="bye")
        assert await client.closed() == 1000
    finally:
        held.release.set()
        if connecting is not None and not connecting.done():
            connecting.cancel()
        with contextlib.suppress(BaseException):
            if connecting is not None:
                (await connecting).ws.transport.abort()
        await asyncio.to_thread(process.stop)
        await held.stop()
        await new.stop()
        await old.stop()


# --------------------------------------------------------------------------------------
# 4. A second signal that arrives with the first is lost.


async def test_a_second_signal_arriving_with_the_first_still_ends_the_drain():
    """`stateshift proxy --drain-timeout`: "A second signal stops at once." Two signals
    read by the loop in one turn (a `kill -TERM` then `kill -INT`, or a supervisor's TERM
    and an operator's INT): both set `stopping` before the waiting task runs, which then
    clears it, and the drain runs to its bound."""
    loop = asyncio.get_running_loop()
    stopped = asyncio.Event()
    drained: list[str] = []

    async def start() -> None:
        pass

    async def stop() -> None:
        stopped.set()

    async def drain() -> None:
        drained.append("started")
        await asyncio.Event().wait()  # clients that never leave (a bound of 600 s, say)

    def on_ready() -> None:
        os.kill(os.getpid(), signal.SIGTERM)
        os.kill(os.getpid(), signal.SIGINT)

    serving = asyncio.create_task(serve_until_signalled(start, stop, on_ready, drain))
    try:
        await wait_until(lambda: bool(drained) or serving.done(), what="the drain to start")
        # the second signal must end the drain: `stop` runs and the service returns 0
        await wait_until(serving.done, what="the second signal to stop the service")
        assert serving.result() == 0
        assert stopped.is_set()
    finally:
        serving.cancel()
        with contextlib.suppress(BaseException):
            await serving
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(sig)
        signal.signal(signal.SIGINT, signal.default_int_handler)
        signal.signal(signal.SIGTERM, signal.SIG_DFL)


# --------------------------------------------------------------------------------------
# 5. A switch prepared on a proxy that is stopping.


async def test_a_stopping_proxy_refuses_a_switch(tmp_path: Path):
    """The client port closes first when a proxy stops; its control plane still answers
    until the clients are closed. A PREPARE taken then paused nobody, verified, and its
    COMMIT saved a route that no client of this process would ever use, while the fleet
    counted it as switched. It is refused (`stopping`): the fleet's switch is all or
    nothing, so it waits until the proxy is back."""
    async with start_stack(tmp_path, tap=False, switchboard=True) as stack:
        before = stack.proxy.route
        await stack.proxy.stop()  # what SIGTERM does first; the control plane is still up
        assert not stack.proxy.serving
        with pytest.raises(SwitchError) as refused:
            await stack.board.prepare(Route(primary="new"))
        assert refused.value.reason == "stopping"
        assert stack.board.prepared is None
        assert stack.proxy.route == before
        assert stack.state.load_route(before) == before  # no switch saved
