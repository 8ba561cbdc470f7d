"""Idle connections (PROTOCOL.md "Limits and liveness", note 26).

The websockets client always answers pings, so the silent client here is `RawConn`, which
speaks the framing by hand and never pongs.
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
