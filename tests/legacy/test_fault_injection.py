"""Each `--fault` does what it says, over real connections (crash-after: see test_cli)."""

from __future__ import annotations

import asyncio
import json
import time
from datetime import UTC, datetime

import pytest

from legacy.service import LegacyServer
from tests.legacy.conftest import Open, Start, token
from tests.support import wait_until


def injected(server: LegacyServer, fault: str) -> float:
    value = server.metrics.registry.get_sample_value(
        "stateshift_legacy_faults_injected_total", {"fault": fault}
    )
    return value or 0.0


async def test_score_delta_off_by_one_is_persisted(start: Start, open_client: Open) -> None:
    server = await start("score-delta-off-by-one")
    alice = await open_client(server)
    await alice.ask("STATE_UPDATE", updates={"score_deltas": {"alice": 5}})
    broadcast = await alice.recv()
    assert broadcast["state"]["scores"] == {"alice": 6}
    assert injected(server, "score-delta-off-by-one") == 1
    await server.stop()
    healthy = await start()
    again = await open_client(healthy)
    assert again.connected["state"]["scores"] == {"alice": 6}, "replay needs no fault"


async def test_drop_broadcast_drops_the_seeded_fraction(start: Start, open_client: Open) -> None:
    server = await start("drop-broadcast:1")
    alice = await open_client(server)
    assert (await alice.ask("STATE_UPDATE", updates={"status": "active"}))["type"] == "ACK"
    assert (await alice.ask("HEARTBEAT"))["type"] == "HEARTBEAT_ACK", "no STATE in between"
    assert injected(server, "drop-broadcast") == 1


async def dropped_pattern(start: Start, open_client: Open, game: str) -> list[int]:
    """The scores carried by the broadcasts that were not dropped, for 30 updates."""
    server = await start("drop-broadcast:0.5", seed=7)
    alice = await open_client(server, f"/v1/games/{game}")
    for i in range(30):
        await alice.send("STATE_UPDATE", updates={"scores": {"alice": i}})
    heartbeat = await alice.send("HEARTBEAT")
    received = []
    while (message := await alice.recv()).get("re") != heartbeat:
        if message["type"] == "STATE":
            received.append(message["state"]["scores"]["alice"])
    await server.stop()
    return received


async def test_drop_broadcast_is_deterministic_per_seed(start: Start, open_client: Open) -> None:
    first = await dropped_pattern(start, open_client, "first")
    second = await dropped_pattern(start, open_client, "second")
    assert first == second
    assert 0 < len(first) < 30


async def test_slow_delays_every_answer(start: Start, open_client: Open) -> None:
    server = await start("slow:150")
    alice = await open_client(server)
    started = time.monotonic()
    await alice.ask("HEARTBEAT")
    assert time.monotonic() - started >= 0.15
    assert injected(server, "slow") == 2


async def test_stall_after_answers_nothing_but_keeps_connections_open(
    start: Start, open_client: Open
) -> None:
    server = await start("stall-after:2")
    alice = await open_client(server)
    assert (await alice.ask("HEARTBEAT"))["type"] == "HEARTBEAT_ACK"
    await alice.send("HEARTBEAT")
    await wait_until(lambda: server._received == 3, what="third message read")
    assert injected(server, "stall-after") == 1
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(alice.ws.recv(), 0.1)
    pong = await alice.ws.ping()
    await asyncio.wait_for(pong, 5)
    assert alice.ws.close_code is None


async def test_garbage_replaces_answers_with_non_json(start: Start, open_client: Open) -> None:
    server = await start("garbage:1")
    alice = await open_client(server, sub=None)
    await alice.send("CONNECT", token=token())
    frame = await asyncio.wait_for(alice.ws.recv(), 5)
    assert isinstance(frame, str)
    with pytest.raises(json.JSONDecodeError):
        json.loads(frame)
    assert injected(server, "garbage") == 1


async def test_close_early_closes_1011_after_the_nth_message(
    start: Start, open_client: Open
) -> None:
    server = await start("close-early:2")
    alice = await open_client(server)
    assert (await alice.ask("HEARTBEAT"))["type"] == "HEARTBEAT_ACK", "the 2nd is answered"
    assert await alice.close_code() == 1011


async def test_clock_skew_shifts_every_timestamp(start: Start, open_client: Open) -> None:
    day = 86_400_000
    server = await start(f"clock-skew:{day}")
    alice = await open_client(server)

    def ahead(stamp: str) -> float:
        moment = datetime.strptime(stamp, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=UTC)
        return moment.timestamp() - time.time()

    assert 86_000 < ahead(alice.connected["state"]["updated_at"]) < 86_800
    assert 86_000 < ahead((await alice.ask("HEARTBEAT"))["server_time"]) < 86_800


async def test_reorder_settings_only_changes_key_order(start: Start, open_client: Open) -> None:
    server = await start("reorder-settings")
    alice = await open_client(server)
    await alice.ask("STATE_UPDATE", updates={"settings": {"a": "1", "b": "2"}})
    raw = await alice.ws.recv()
    assert isinstance(raw, str)
    assert raw.index('"b"') < raw.index('"a"')
    assert json.loads(raw)["state"]["settings"] == {"a": "1", "b": "2"}


async def test_refuse_auth_refuses_every_connect(start: Start, open_client: Open) -> None:
    server = await start("refuse-auth")
    alice = await open_client(server, sub=None)
    answer = await alice.ask("CONNECT", token=token())
    assert answer["code"] == "UNAUTHENTICATED"
    assert await alice.close_code() == 4401
    assert injected(server, "refuse-auth") == 1
