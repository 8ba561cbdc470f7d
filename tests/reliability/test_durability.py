"""Durability under SIGKILL, many times over, for both servers: every acknowledged update is
there after a restart on the same storage, and versions continue without gaps or repeats.

`STATESHIFT_KILL_CYCLES` sets the number of cycles (default 50)."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import orjson
import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from stateshift.tokens import mint_token
from tests.support import TEST_SECRET, ServerProcess, timeout

CYCLES = int(os.environ.get("STATESHIFT_KILL_CYCLES", "50"))
PLAYERS = ("a", "b", "c")
FAST = ("--rate", "100000", "--burst", "100000")


async def hammer(url: str, player: str, acked: list[int]) -> None:
    """Updates one after another until the connection dies; record each ACKed version."""
    try:
        async with connect(f"{url}/v1/games/kill", proxy=None) as ws:
            token = mint_token(TEST_SECRET, player, "player", ["kill"])
            await ws.send(orjson.dumps({"type": "CONNECT", "id": "c", "token": token}).decode())
            n = 0
            while True:
                n += 1
                update = {"score_deltas": {player: 1}}
                frame = {"type": "STATE_UPDATE", "id": str(n), "updates": update}
                await ws.send(orjson.dumps(frame).decode())
                while True:
                    answer = orjson.loads(await ws.recv())
                    if answer["type"] == "ACK":
                        acked.append(answer["version"])
                        break
                    assert answer["type"] != "ERROR", answer
    except (ConnectionClosed, OSError):
        return


async def final_state(url: str) -> dict:
    async with connect(f"{url}/v1/admin", proxy=None) as ws:
        token = mint_token(TEST_SECRET, "ops", "admin")
        await ws.send(orjson.dumps({"type": "CONNECT", "id": "c", "token": token}).decode())
        await ws.recv()
        await ws.send(orjson.dumps({"type": "GET_STATE", "id": "s", "game_id": "kill"}).decode())
        return orjson.loads(await ws.recv())


@pytest.mark.slow
@pytest.mark.parametrize("server", ["serve", "legacy"])
async def test_acknowledged_updates_survive_repeated_sigkill(tmp_path: Path, server: str):
    storage = ["--db", str(tmp_path / "s.db")] if server == "serve" else ["--data", str(tmp_path)]
    process = ServerProcess([server, "--port", "0", *storage, *FAST], tmp_path / "server.log")
    acked_total = dict.fromkeys(PLAYERS, 0)
    every_version: list[int] = []
    try:
        for cycle in range(CYCLES):
            url = process.start()
            acked: dict[str, list[int]] = {p: [] for p in PLAYERS}
            tasks = [asyncio.create_task(hammer(url, p, acked[p])) for p in PLAYERS]
            async with asyncio.timeout(timeout(30)):
                while sum(map(len, acked.values())) < 30:
                    for task in tasks:
                        if task.done():
                            task.result()
                    await asyncio.sleep(0.005)
            process.kill()  # SIGKILL with updates in flight
            async with asyncio.timeout(timeout(30)):
                await asyncio.gather(*tasks)
            for player in PLAYERS:
                acked_total[player] += len(acked[player])
                every_version.extend(acked[player])
            url = process.start()
            state = await final_state(url)
            process.kill()
            scores = state["state"]["scores"]
            for player in PLAYERS:
                # every ACK is there; one more may have committed just before the kill
                assert scores[player] >= acked_total[player], (cycle, player)
                acked_total[player] = scores[player]
            # versions: one per change (the game's creation and joins included), no gaps
            assert state["version"] == sum(scores.values()) + len(PLAYERS), cycle
    finally:
        process.stop()
    assert len(every_version) == len(set(every_version))  # no version acknowledged twice
    assert sorted(every_version)[-1] <= state["version"]
