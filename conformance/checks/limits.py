"""Rate limiting and abuse (PROTOCOL.md "Limits and liveness", note 25).

Counts are chosen so that timing cannot flip a result: floods are sent as fast as the client
can write them, and each count has a wide margin over what the refill during the flood could
absorb (a flood would have to take seconds for a verdict to change).
"""

from __future__ import annotations

import asyncio
import json
import time
from collections import Counter
from typing import Any

from conformance.client import Conn
from conformance.context import CheckContext, get_state
from conformance.registry import ConformanceFailure, check, expect, expect_equal
from conformance.shapes import is_int

ABUSE_REFUSALS = 200  # PROTOCOL.md: more than 200 refused messages within 10 s closes 4429
ABUSE_WINDOW = 10.0


async def _flood(conn: Conn, frames: list[str | bytes]) -> int:
    """Send `frames` back to back; stop early if the server closes. Return how many were sent."""
    for n, frame in enumerate(frames):
        if conn.closed.is_set():
            return n
        try:
            await conn.send_raw(frame)
        except ConformanceFailure:
            return n
    return len(frames)


async def _answers(conn: Conn, count: int) -> list[dict[str, Any]]:
    """The next `count` direct answers (STATE broadcasts are skipped)."""
    got: list[dict[str, Any]] = []
    while len(got) < count:
        msg = await conn.recv(what=f"answer {len(got) + 1} of {count} to the flood")
        if msg.get("type") == "STATE" and "re" not in msg:
            continue
        got.append(msg)
    return got


def _check_rate_limited(msg: dict[str, Any], re: Any) -> None:
    expect_equal("RATE_LIMITED.re", re, msg.get("re"))
    retry = msg.get("retry_after_ms")
    expect(is_int(retry) and retry >= 1, f"retry_after_ms should be an integer >= 1: {msg!r}")
    expect(isinstance(msg.get("message"), str), f"ERROR lacks a string message: {msg!r}")


def _over_rate(ctx: CheckContext) -> int:
    # burst + 150 leaves fewer than 200 refusals (no 4429) yet needs ~3 s of refill to pass
    return ctx.config.burst + 150


@check("limits.messages_over_the_rate_are_rate_limited_with_retry_after_ms")
async def over_rate(ctx: CheckContext) -> None:
    """PROTOCOL.md Limits: token bucket (50/s, burst 100); over it: RATE_LIMITED with
    retry_after_ms; note 25."""
    conn, _ = await ctx.game(ctx.game_id())
    ids = [f"r{i}" for i in range(_over_rate(ctx))]
    await _flood(conn, [json.dumps({"type": "HEARTBEAT", "id": i}) for i in ids])
    answers = await _answers(conn, len(ids))
    expect_equal("re of the answers, in order (note 6)", ids, [a.get("re") for a in answers])
    refused = [a for a in answers if a.get("type") == "ERROR"]
    expect(refused != [], f"no RATE_LIMITED among {len(ids)} messages sent at once")
    for msg in refused:
        expect_equal("error code over the rate", "RATE_LIMITED", msg.get("code"))
        _check_rate_limited(msg, msg.get("re"))
    accepted = len(answers) - len(refused)
    # the bucket holds at most `burst` tokens and CONNECT took one of them (note 25)
    expect(accepted <= ctx.config.burst + ctx.config.rate * 3, f"{accepted} accepted at once")
    # the connection stays open and is served again once tokens come back
    wait = max(int(m["retry_after_ms"]) for m in refused) / 1000 + 2 / ctx.config.rate
    await asyncio.sleep(wait)
    await conn.expect_open()


@check("limits.rate_limited_updates_are_not_processed")
async def refused_not_processed(ctx: CheckContext) -> None:
    """PROTOCOL.md Limits: a message over the rate is answered RATE_LIMITED and not processed."""
    game, (alice,), _ = await ctx.new_game("alice")
    n = _over_rate(ctx)
    frames: list[str | bytes] = [
        json.dumps(
            {"type": "STATE_UPDATE", "id": f"u{i}", "updates": {"score_deltas": {"alice": 1}}}
        )
        for i in range(n)
    ]
    await _flood(alice, frames)
    answers = await _answers(alice, n)
    kinds = Counter(a.get("code", a.get("type")) for a in answers)
    acked = kinds["ACK"]
    expect(set(kinds) <= {"ACK", "RATE_LIMITED"}, f"answers to the flood: {dict(kinds)}")
    expect(kinds["RATE_LIMITED"] > 0, f"no RATE_LIMITED among {n} updates at once: {dict(kinds)}")
    other, state = await ctx.game(game, "alice")
    expect_equal("score (one per ACK)", acked, state["scores"]["alice"])
    expect_equal("version (one per ACK)", 1 + acked, state["version"])
    await other.expect_open()


@check("limits.binary_and_malformed_frames_count_against_the_rate")
async def malformed_frames_count(ctx: CheckContext) -> None:
    """Note 25: rate limiting counts every frame, binary and malformed ones included (re null)."""
    conn, _ = await ctx.game(ctx.game_id())
    n = _over_rate(ctx)
    frames: list[str | bytes] = [b"\x00binary" if i % 2 else "{not json" for i in range(n)]
    await _flood(conn, frames)
    answers = await _answers(conn, n)
    codes = Counter(a.get("code") for a in answers)
    expect(set(codes) <= {"BAD_MESSAGE", "RATE_LIMITED"}, f"answer codes: {dict(codes)}")
    expect(codes["RATE_LIMITED"] > 0, f"no RATE_LIMITED among {n} malformed frames: {dict(codes)}")
    for msg in answers:
        if msg.get("code") == "RATE_LIMITED":
            _check_rate_limited(msg, None)
        else:
            expect_equal("BAD_MESSAGE.re", None, msg.get("re"))


@check("limits.rate_limit_applies_before_connect_too")
async def before_connect(ctx: CheckContext) -> None:
    """Note 25: every frame counts, before CONNECT too (refused ones answered RATE_LIMITED)."""
    conn = await ctx.open(ctx.game_url(ctx.game_id()))
    n = _over_rate(ctx)
    await _flood(conn, [json.dumps({"type": "HEARTBEAT", "id": f"h{i}"}) for i in range(n)])
    codes = Counter(a.get("code") for a in await _answers(conn, n))
    expect(set(codes) == {"UNAUTHENTICATED", "RATE_LIMITED"}, f"answer codes: {dict(codes)}")


@check("limits.more_than_200_refusals_within_10s_close_4429")
async def abuse_closes_4429(ctx: CheckContext) -> None:
    """PROTOCOL.md Limits: more than 200 refused messages within 10 s closes 4429; note 25: no
    answer to it."""
    game, (alice,), _ = await ctx.new_game("alice")
    # far more than needed: even a flood spread over the whole 10 s window exceeds 200 refusals
    n = int(ctx.config.burst + ABUSE_REFUSALS + ctx.config.rate * ABUSE_WINDOW + 200)
    started = time.monotonic()
    frames: list[str | bytes] = [json.dumps({"type": "HEARTBEAT", "id": f"a{i}"}) for i in range(n)]
    sent = await _flood(alice, frames)
    received = await alice.expect_close(
        4429, within=ctx.config.answer_timeout * 4, allow_frames=True
    )
    elapsed = time.monotonic() - started
    messages = [json.loads(f) for f in received if isinstance(f, str)]
    refused = [m for m in messages if m.get("code") == "RATE_LIMITED"]
    if elapsed < ABUSE_WINDOW:
        # all refusals fell in one window: the 201st closes, unanswered
        expect_equal(
            f"RATE_LIMITED answers before 4429 ({sent} sent)", ABUSE_REFUSALS, len(refused)
        )
    else:
        expect(len(refused) >= ABUSE_REFUSALS, f"only {len(refused)} refusals before 4429")
    acked = sum(1 for m in messages if m.get("type") == "HEARTBEAT_ACK")
    expect(acked >= 1, "no message was accepted before the flood was refused")
    # the game itself is unaffected
    await get_state((await ctx.game(game, "alice"))[0], game)
