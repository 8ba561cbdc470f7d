"""Idle connections and pings (PROTOCOL.md "Limits and liveness", notes 26 and 38).

The websockets client always answers pings, so the silent client here is `RawConn`, which
speaks the framing by hand and pongs only when a check says so (and then sees every ping).
"""

from __future__ import annotations

import asyncio
import json
import time

from conformance import wire
from conformance.client import RawConn
from conformance.context import CheckContext
from conformance.registry import ConformanceFailure, check, expect, expect_equal


async def _raw_connected(ctx: CheckContext, url: str, token: str) -> RawConn:
    raw = await ctx.open_raw(url)
    await raw.send_text(json.dumps({"type": "CONNECT", "id": "c", "token": token}))
    while True:
        frame = await raw.next_frame(ctx.config.answer_timeout)
        if frame is None:
            raise ConformanceFailure("the server closed the raw connection after CONNECT")
        if frame.opcode == wire.OP_TEXT:
            msg = json.loads(frame.payload)
            expect_equal("answer to CONNECT", ("CONNECTED", "c"), (msg.get("type"), msg.get("re")))
            return raw


async def _silent_until_4408(ctx: CheckContext, raw: RawConn, where: str) -> None:
    limit = ctx.config.idle_timeout
    started = time.monotonic()
    code, frames, _ = await raw.wait_close(limit + max(10.0, limit))
    waited = time.monotonic() - started
    data = [f for f in frames if f.opcode not in (wire.OP_PING, wire.OP_PONG)]
    expect(data == [], f"{where}: frames other than pings before the idle close: {data!r}")
    expect_equal(f"{where}: close code of a silent connection", 4408, code)
    if waited < 0.8 * limit:
        raise ConformanceFailure(f"{where}: closed 4408 after {waited:.2f}s, before {limit:g}s")


@check("idle.silent_connection_that_never_pongs_closes_4408", slow=True)
async def silent_closes_4408(ctx: CheckContext) -> None:
    """PROTOCOL.md Limits: nothing sent (no message, no pong) for 60 s closes 4408; note 26: no
    ERROR."""
    game, _, _ = await ctx.new_game("alice")
    player = await _raw_connected(ctx, ctx.game_url(game), ctx.token("alice"))
    admin = await _raw_connected(ctx, ctx.admin_url, ctx.token("ops", "admin"))
    await asyncio.gather(
        _silent_until_4408(ctx, player, "game path"), _silent_until_4408(ctx, admin, "admin path")
    )


@check("idle.messages_reset_the_idle_clock", slow=True)
async def messages_reset_idle(ctx: CheckContext) -> None:
    """Note 26: any frame resets the idle clock: a client that never pongs but sends messages stays
    open."""
    raw = await _raw_connected(ctx, ctx.game_url(ctx.game_id()), ctx.token("alice"))
    step = ctx.config.idle_timeout / 4
    for i in range(7):  # 1.75 idle periods in all
        await asyncio.sleep(step)
        await raw.send_text(json.dumps({"type": "HEARTBEAT", "id": f"h{i}"}))
        while True:
            frame = await raw.next_frame(ctx.config.answer_timeout)
            if frame is None or frame.opcode == wire.OP_CLOSE:
                code = frame.close_code() if frame else 1006
                raise ConformanceFailure(
                    f"closed ({code}) after {i} heartbeats at {step:g}s intervals"
                )
            if frame.opcode == wire.OP_TEXT:
                expect_equal("answer", "HEARTBEAT_ACK", json.loads(frame.payload).get("type"))
                break


@check("idle.pongs_keep_a_connection_open", slow=True)
async def pongs_keep_open(ctx: CheckContext) -> None:
    """Note 26: a pong resets the idle clock (servers ping every 20 s); a ponging client stays
    open."""
    conn, _ = await ctx.game(ctx.game_id())
    await asyncio.sleep(ctx.config.idle_timeout * 1.5)
    expect(not conn.closed.is_set(), f"closed with {conn.close_code} though it answered pings")
    await conn.expect_open()


PERIODS = 3  # note 38: idle periods a ponging client must outlive


async def _pong_through(ctx: CheckContext, raw: RawConn, where: str) -> list[float]:
    """Answer every ping for PERIODS idle periods; return when each came (s after the start)."""
    limit = ctx.config.idle_timeout
    loop = asyncio.get_running_loop()
    start = loop.time()
    pings: list[float] = []
    while (remaining := start + PERIODS * limit - loop.time()) > 0:
        try:
            frame = await raw.next_frame(remaining)
        except TimeoutError:
            break
        now = loop.time() - start
        if frame is None or frame.opcode == wire.OP_CLOSE:
            code = frame.close_code() if frame is not None else 1006
            raise ConformanceFailure(
                f"{where}: closed ({code}) after {now:.2f}s though every ping was answered "
                f"(idle timeout {limit:g}s; pings at {[round(p, 2) for p in pings]})"
            )
        if frame.opcode == wire.OP_PING:
            pings.append(now)
            await raw.send_pong(frame.payload)
        elif frame.opcode != wire.OP_PONG:
            raise ConformanceFailure(f"{where}: unexpected frame on an idle connection: {frame!r}")
    return pings


async def _ponging_stays_open(ctx: CheckContext, raw: RawConn, where: str) -> None:
    limit = ctx.config.idle_timeout
    pings = await _pong_through(ctx, raw, where)
    # every min(20 s, idle / 3) (note 38); half as often again is allowed for the server's
    # timer granularity, which still leaves a third of an idle period for the pong
    gaps = [b - a for a, b in zip([0.0, *pings], [*pings, PERIODS * limit], strict=True)]
    expect(
        max(gaps) <= 2 * limit / 3,
        f"{where}: {max(gaps):.2f}s without a ping (idle timeout {limit:g}s, so at most "
        f"{limit / 3:g}s is expected); pings at {[round(p, 2) for p in pings]}",
    )
    await raw.send_text(json.dumps({"type": "HEARTBEAT", "id": "after"}))
    while True:
        frame = await raw.next_frame(ctx.config.answer_timeout)
        if frame is None or frame.opcode == wire.OP_CLOSE:
            raise ConformanceFailure(f"{where}: closed instead of answering a HEARTBEAT")
        if frame.opcode == wire.OP_PING:
            await raw.send_pong(frame.payload)
        elif frame.opcode == wire.OP_TEXT:
            msg = json.loads(frame.payload)
            got = (msg.get("type"), msg.get("re"))
            expect_equal(f"{where}: answer", ("HEARTBEAT_ACK", "after"), got)
            return


@check("idle.server_pings_three_times_per_idle_period_so_a_ponging_client_stays_open", slow=True)
async def ping_cadence(ctx: CheckContext) -> None:
    """Note 38: a server pings at least three times per idle period (every min(20 s, idle
    timeout / 3)), so a client that only answers pings outlives several idle periods, on the
    game and admin paths, even with a shortened idle timeout."""
    game, _, _ = await ctx.new_game("alice")
    player = await _raw_connected(ctx, ctx.game_url(game), ctx.token("alice"))
    admin = await _raw_connected(ctx, ctx.admin_url, ctx.token("ops", "admin"))
    await asyncio.gather(
        _ponging_stays_open(ctx, player, "game path"), _ponging_stays_open(ctx, admin, "admin path")
    )
