"""How long a switch holds the clients, by the number of games it verifies.

A `stateshift proxy` subprocess in front of `stateshift legacy` and `stateshift serve`
(subprocesses, with the protocol's default rate limits: the switch's own admin reads are
subject to them), N idle clients on N games (one each), then FLIP to the new server and
ROLLBACK to the old one over the control plane, each `--rounds` times: the proxy's
`paused_ms` (from pausing the clients to resuming them) of each. Loopback only.

    .venv/bin/python benchmarks/switch_bench.py                        # 100, 300, 1000 games
    .venv/bin/python benchmarks/switch_bench.py --games 2000 --rounds 3

Figures are in BENCHMARKS.md ("Switchover pause").
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import re
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from websockets.asyncio.client import ClientConnection, connect

from benchmarks.common import REPO, git_commit, hot_modules, run_loop, stop_process
from stateshift.control import ControlClient
from stateshift.tokens import SECRET_ENV, mint_token

SECRET = "switch-bench-secret-0123456789abcdef"
LISTENING = re.compile(r"listening on (ws://\S+)")
ADMIN_LINE = re.compile(r"admin on http://(\S+)")


def spawn(args: Sequence[str], log: Path) -> subprocess.Popen[str]:
    env = {"PATH": "/usr/bin:/bin", SECRET_ENV: SECRET, "PYTHONUNBUFFERED": "1"}
    with log.open("w") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "stateshift", *args],
            stdout=out,
            stderr=subprocess.STDOUT,
            text=True,
            cwd=REPO,
            env=env,
        )


async def line(log: Path, pattern: re.Pattern[str], proc: subprocess.Popen[str]) -> str:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        found = pattern.search(await asyncio.to_thread(log.read_text, errors="replace"))
        if found:
            return found.group(1)
        if proc.poll() is not None:
            raise RuntimeError(f"{proc.args!r} exited (log: {log})")
        await asyncio.sleep(0.05)
    raise RuntimeError(f"{proc.args!r} did not print {pattern.pattern}")


@dataclass
class Processes:
    """The servers and the proxy, as subprocesses, with the proxy's addresses."""

    old: subprocess.Popen[str]
    new: subprocess.Popen[str]
    proxy: subprocess.Popen[str]
    url: str
    control_url: str


@contextlib.asynccontextmanager
async def processes(tmp: Path, server_args: Sequence[str] = ()) -> AsyncIterator[Processes]:
    """Both servers (with `server_args`) and the proxy, stopped on exit."""
    procs: list[subprocess.Popen[str]] = []
    try:
        old_log, new_log, proxy_log = tmp / "old.log", tmp / "new.log", tmp / "proxy.log"
        old_args = ["legacy", "--port", "0", *server_args, "--data", str(tmp / "old.jsonl")]
        procs.append(old := spawn(old_args, old_log))
        new_args = ["serve", "--port", "0", *server_args, "--db", str(tmp / "new.db")]
        procs.append(new := spawn(new_args, new_log))
        old_url = await line(old_log, LISTENING, old)
        new_url = await line(new_log, LISTENING, new)
        args = ["proxy", "--old", old_url, "--new", new_url, "--state", str(tmp / "proxy.db")]
        args += ["--listen", "127.0.0.1:0", "--admin", "127.0.0.1:0", "--sweep-interval", "0"]
        procs.append(proxy := spawn(args, proxy_log))
        url = await line(proxy_log, LISTENING, proxy)
        admin = await line(proxy_log, ADMIN_LINE, proxy)
        yield Processes(old, new, proxy, url, f"ws://{admin}/v1/control")
    finally:
        for proc in reversed(procs):
            stop_process(proc)


@contextlib.asynccontextmanager
async def stack(tmp: Path) -> AsyncIterator[tuple[str, str]]:
    """Both servers and the proxy: (client URL, control URL)."""
    async with processes(tmp) as started:
        yield started.url, started.control_url


async def join(url: str, game: str, player: str) -> ClientConnection:
    ws = await connect(f"{url}/v1/games/{game}", open_timeout=60, compression=None)
    token = mint_token(SECRET, player, "player")
    await ws.send(f'{{"type":"CONNECT","id":"c","token":"{token}"}}')
    answer = await ws.recv()
    assert '"CONNECTED"' in str(answer), answer
    return ws


async def measure(games: int, rounds: int) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="switch-bench-") as tmp:
        async with stack(Path(tmp)) as (url, control_url):
            clients: list[ClientConnection] = []
            try:
                for start in range(0, games, 100):  # 100 handshakes at a time
                    clients += await asyncio.gather(
                        *(
                            join(url, f"g{n}", f"p{n}")
                            for n in range(start, min(games, start + 100))
                        )
                    )
                admin = mint_token(SECRET, "switch-bench", "admin")
                paused: dict[str, list[float]] = {"flip": [], "rollback": []}
                refused: list[str] = []
                async with ControlClient(control_url, admin, timeout=120) as control:
                    for _ in range(rounds):
                        for kind, command in (("flip", "FLIP"), ("rollback", "ROLLBACK")):
                            try:
                                answer = await control.request(command)
                            except Exception as exc:  # a refusal: reported, not hidden
                                refused.append(f"{kind}: {exc}")
                                continue
                            paused[kind].append(float(answer["paused_ms"]))
            finally:
                await asyncio.gather(*(ws.close() for ws in clients), return_exceptions=True)
    every = paused["flip"] + paused["rollback"]
    return {
        "games": games,
        "paused_ms": paused,
        "median_ms": statistics.median(every) if every else None,
        "max_ms": max(every) if every else None,
        "refused": refused,
    }


async def main(games: list[int], rounds: int) -> None:
    print(f"commit {git_commit()}, hot modules: {hot_modules()}")
    print("| games | median pause (ms) | max (ms) | each (ms) | refused |")
    print("| ---: | ---: | ---: | --- | --- |")
    for n in games:
        found = await measure(n, rounds)
        each = "; ".join(
            f"{kind} " + ", ".join(f"{v:.0f}" for v in values)
            for kind, values in found["paused_ms"].items()
        )
        median = "-" if found["median_ms"] is None else f"{found['median_ms']:.0f}"
        top = "-" if found["max_ms"] is None else f"{found['max_ms']:.0f}"
        print(f"| {n} | {median} | {top} | {each} | {'; '.join(found['refused']) or 'none'} |")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--games", type=int, action="append", help="repeatable")
    parser.add_argument("--rounds", type=int, default=2, help="flips and rollbacks per size")
    options = parser.parse_args()
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    run_loop(main(options.games or [100, 300, 1000], options.rounds))
