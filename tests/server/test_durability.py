"""Acknowledged changes survive SIGKILL: the server process is killed under load and
restarted on the same SQLite file."""

from __future__ import annotations

import asyncio
from pathlib import Path

import orjson
import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from stateshift.tokens import mint_token
from tests.support import TEST_SECRET, ServerProcess, timeout


async def hammer(url: str, game: str, player: str, acked: dict[str, list[int]]) -> None:
    """Send updates one after another until the connection dies; record ACKed versions."""
    async with connect(f"{url}/v1/games/{game}") as ws:
        token = mint_token(TEST_SECRET, player, "player", [game])
        await ws.send(orjson.dumps({"type": "CONNECT", "id": "c", "token": token}).decode())
        n = 0
        try:
            while True:
                n += 1
                update = {"score_deltas": {player: 1}}
                await ws.send(
                    orjson.dumps({"type": "STATE_UPDATE", "id": str(n), "updates": update}).decode()
                )
                while True:
                    frame = orjson.loads(await ws.recv())
                    if frame["type"] == "ACK":
                        acked[player].append(frame["version"])
                        break
                    if frame["type"] == "ERROR":
                        raise AssertionError(frame)
        except ConnectionClosed:
            return


async def read_state(url: str, game: str) -> dict:
    async with connect(f"{url}/v1/admin") as ws:
        token = mint_token(TEST_SECRET, "ops", "admin")
        await ws.send(orjson.dumps({"type": "CONNECT", "id": "c", "token": token}).decode())
        await ws.recv()
        await ws.send(orjson.dumps({"type": "GET_STATE", "id": "s", "game_id": game}).decode())
        return orjson.loads(await ws.recv())


@pytest.mark.slow
async def test_acknowledged_updates_survive_sigkill_and_versions_continue(tmp_path: Path):
    db = tmp_path / "state.db"
    server = ServerProcess(
        ["serve", "--port", "0", "--db", str(db), "--rate", "10000", "--burst", "10000"],
        tmp_path / "server.log",
    )
    players = ["a", "b", "c", "d"]
    expected_scores = dict.fromkeys(players, 0)
    last_version = 0
    try:
        for _cycle in range(5):
            url = server.start()
            acked: dict[str, list[int]] = {p: [] for p in players}
            tasks = [asyncio.create_task(hammer(url, "g1", p, acked)) for p in players]

            async def enough(acked: dict[str, list[int]] = acked, tasks=tasks) -> None:
                while sum(map(len, acked.values())) < 200:
                    for task in tasks:
                        if task.done():
                            task.result()  # a client that failed fails the test now
                    await asyncio.sleep(0.01)

            await asyncio.wait_for(enough(), timeout(30))
            server.kill()  # SIGKILL while updates are in flight
            await asyncio.wait_for(asyncio.gather(*tasks), timeout(30))

            url = server.start()
            state = await read_state(url, "g1")
            server.kill()
            for player in players:
                expected_scores[player] += len(acked[player])
            every_ack = sorted(v for versions in acked.values() for v in versions)
            assert len(every_ack) == len(set(every_ack))
            # every acknowledged change is there (the latest may have more: committed,
            # then killed before its ACK left) and no version was skipped
            assert state["version"] >= every_ack[-1] > last_version
            scores = state["state"]["scores"]
            for player in players:
                assert scores[player] >= expected_scores[player]
            assert sum(scores.values()) + len(players) == state["version"]
            expected_scores = dict(scores)
            last_version = state["version"]
    finally:
        server.stop()
