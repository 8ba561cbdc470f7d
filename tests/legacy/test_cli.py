"""`stateshift legacy` as a process: flags, start-up refusals, signals, SIGKILL durability."""

from __future__ import annotations

import asyncio
import signal
import subprocess
import sys
from pathlib import Path

from typer.testing import CliRunner
from websockets.asyncio.client import connect

from stateshift.cli import app
from tests.legacy.conftest import Client, token
from tests.support import ROOT, ServerProcess, cli_env, running, timeout


def legacy_args(data: Path, *extra: str) -> list[str]:
    return ["legacy", "--port", "0", "--data", str(data), *extra]


async def client(url: str, game: str = "g1", sub: str = "alice") -> Client:
    ws = await connect(f"{url}/v1/games/{game}", ping_interval=None, max_queue=None)
    player = Client(ws)
    player.connected = await player.ask("CONNECT", token=token(sub))
    return player


def test_missing_secret_exits_2(tmp_path: Path) -> None:
    result = CliRunner().invoke(app, legacy_args(tmp_path / "log"), env={"STATESHIFT_SECRET": ""})
    assert result.exit_code == 2
    assert "STATESHIFT_SECRET is not set" in result.output


def test_a_bad_fault_is_a_usage_error(tmp_path: Path) -> None:
    result = CliRunner().invoke(
        app, [*legacy_args(tmp_path / "log"), "--fault", "slow:soon"], env=cli_env()
    )
    assert result.exit_code == 2
    assert "MS must be an integer" in result.output


def test_help_lists_every_fault() -> None:
    result = CliRunner().invoke(app, ["legacy", "--help"], env={"COLUMNS": "200"})
    assert result.exit_code == 0
    for name in ("score-delta-off-by-one", "drop-broadcast:P", "crash-after:N", "refuse-auth"):
        assert name in result.output


def test_a_corrupt_log_refuses_to_start(tmp_path: Path) -> None:
    data = tmp_path / "log.jsonl"
    data.write_text("{oops}\n")
    done = subprocess.run(
        [sys.executable, "-m", "stateshift", *legacy_args(data)],
        env=cli_env(),
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout(20),
        check=False,
    )
    assert done.returncode == 1
    assert "unreadable record" in done.stderr


async def test_acked_updates_survive_sigkill_and_versions_continue(tmp_path: Path) -> None:
    data = tmp_path / "log.jsonl"
    server = ServerProcess(legacy_args(data), tmp_path / "server.log")
    try:
        url = await asyncio.to_thread(server.start)
        alice = await client(url)
        bob = await client(url, sub="bob")
        acked = []
        for i in range(20):
            player = (alice, bob)[i % 2]
            mid = await player.send("STATE_UPDATE", updates={"score_deltas": {player_id(i): 1}})
            while (answer := await player.recv()).get("re") != mid:
                pass
            acked.append(answer["version"])
        assert acked == list(range(3, 23))
        await asyncio.to_thread(server.kill)
        # A crash in the middle of a write leaves a torn last line: it was never acknowledged.
        with data.open("ab") as log:
            log.write(b'{"op":"update","game_id":"g1","versi')
        url = await asyncio.to_thread(server.start)
        again = await client(url)
        state = again.connected["state"]
        assert state["version"] == 22
        assert state["scores"] == {"alice": 10, "bob": 10}
        ack = await again.ask("STATE_UPDATE", updates={"status": "active"})
        assert ack["version"] == 23
        assert "dropped a torn last line" in server.output()
    finally:
        await asyncio.to_thread(server.stop)


def player_id(i: int) -> str:
    return ("alice", "bob")[i % 2]


async def test_sigterm_closes_clients_1012_and_exits_0(tmp_path: Path) -> None:
    with running(legacy_args(tmp_path / "log"), tmp_path / "server.log") as server:
        alice = await client(server.url)
        code = await asyncio.to_thread(server.terminate, signal.SIGTERM)
        assert code == 0
        assert await alice.close_code() == 1012


async def test_crash_after_exits_abruptly(tmp_path: Path) -> None:
    with running(
        legacy_args(tmp_path / "log", "--fault", "crash-after:2"), tmp_path / "server.log"
    ) as server:
        alice = await client(server.url)
        assert (await alice.ask("HEARTBEAT"))["type"] == "HEARTBEAT_ACK"
        await alice.send("HEARTBEAT")
        assert await alice.close_code() == 1006
        assert server.proc is not None
        assert await asyncio.to_thread(server.proc.wait, timeout(10)) == 1


def test_sigint_also_exits_0(tmp_path: Path) -> None:
    with running(legacy_args(tmp_path / "log"), tmp_path / "server.log") as server:
        assert server.terminate(signal.SIGINT) == 0
