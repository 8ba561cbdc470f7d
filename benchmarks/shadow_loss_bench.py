"""What the clients feel when the shadow dies under many connections.

A `stateshift proxy` subprocess (mirroring, with its live comparator) in front of
`stateshift legacy` (primary) and `stateshift serve` (shadow), subprocesses on loopback.
N clients on N games (one each) send a HEARTBEAT every `--every` seconds; a few probe
clients send one HEARTBEAT after another and time each round trip. After a quiet period the
shadow is killed (SIGKILL): every client's shadow connection is lost at once. The probes'
round trips before and after the kill are the figure: a shadow fault must not slow the
clients (DESIGN.md, isolation).

    .venv/bin/python benchmarks/shadow_loss_bench.py                    # 1,000 clients
    .venv/bin/python benchmarks/shadow_loss_bench.py --clients 3000 --rounds 2

Figures are in BENCHMARKS.md ("Shadow loss under many clients").
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import resource
import signal
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from websockets.asyncio.client import ClientConnection

from benchmarks.common import git_commit, hot_modules, run_loop, stop_process
from benchmarks.switch_bench import ADMIN_LINE, LISTENING, join, line, spawn


async def heartbeats(ws: ClientConnection, every: float, stop: asyncio.Event) -> None:
    """One HEARTBEAT every `every` seconds, answers read and dropped."""
    n = 0
    with contextlib.suppress(Exception):
        while not stop.is_set():
            n += 1
            await ws.send(f'{{"type":"HEARTBEAT","id":"h{n}"}}')
            await ws.recv()
            await asyncio.sleep(every)


async def probe(ws: ClientConnection, stop: asyncio.Event, out: list[tuple[float, float]]) -> None:
    """HEARTBEAT after HEARTBEAT: (when sent, round trip in s) of each."""
    n = 0
    while not stop.is_set():
        n += 1
        sent = time.monotonic()
        await ws.send(f'{{"type":"HEARTBEAT","id":"p{n}"}}')
        await ws.recv()
        out.append((sent, time.monotonic() - sent))
        await asyncio.sleep(0.01)


async def measure(clients: int, every: float, quiet: float, after: float) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="shadow-loss-bench-") as name:
        tmp = Path(name)
        procs = []
        conns: list[ClientConnection] = []
        try:
            old_log, new_log, proxy_log = tmp / "old.log", tmp / "new.log", tmp / "proxy.log"
            rate = ["--rate", "100000", "--burst", "100000"]
            procs.append(
                old := spawn(["legacy", "--port", "0", *rate, "--data", str(tmp / "o")], old_log)
            )
            procs.append(
                new := spawn(["serve", "--port", "0", *rate, "--db", str(tmp / "n.db")], new_log)
            )
            old_url = await line(old_log, LISTENING, old)
            new_url = await line(new_log, LISTENING, new)
            args = ["proxy", "--old", old_url, "--new", new_url, "--state", str(tmp / "p.db")]
            args += ["--listen", "127.0.0.1:0", "--admin", "127.0.0.1:0", "--sweep-interval", "0"]
            procs.append(proxy := spawn(args, proxy_log))
            url = await line(proxy_log, LISTENING, proxy)
            await line(proxy_log, ADMIN_LINE, proxy)
            for start in range(0, clients, 100):  # 100 handshakes at a time
                conns += await asyncio.gather(
                    *(join(url, f"g{n}", f"p{n}") for n in range(start, min(clients, start + 100)))
                )
            probes = [await join(url, f"probe{n}", f"probe{n}") for n in range(4)]
            conns += probes
            stop = asyncio.Event()
            rtts: list[tuple[float, float]] = []
            tasks = [asyncio.create_task(heartbeats(ws, every, stop)) for ws in conns[:clients]]
            tasks += [asyncio.create_task(probe(ws, stop, rtts)) for ws in probes]
            await asyncio.sleep(quiet)
            killed = time.monotonic()
            os.kill(new.pid, signal.SIGKILL)
            print(f"shadow killed; proxy pid {proxy.pid}", file=sys.stderr, flush=True)
            await asyncio.sleep(after)
            stop.set()
            await asyncio.wait(tasks, timeout=30)
            before = [rtt for at, rtt in rtts if at < killed and at > killed - quiet / 2]
            later = [rtt for at, rtt in rtts if at >= killed]
            return {
                "clients": clients,
                "before_p50_ms": 1000 * statistics.median(before),
                "before_max_ms": 1000 * max(before),
                "after_p50_ms": 1000 * statistics.median(later),
                "after_max_ms": 1000 * max(later),
                "probes_after": len(later),
            }
        finally:
            await asyncio.gather(*(ws.close() for ws in conns), return_exceptions=True)
            for proc in reversed(procs):
                stop_process(proc)


async def main(clients: list[int], rounds: int, every: float) -> None:
    print(f"commit {git_commit()}, hot modules: {hot_modules()}")
    print("| clients | before: p50 / max (ms) | after the kill: p50 / max (ms) | probes after |")
    print("| ---: | ---: | ---: | ---: |")
    for n in clients:
        for _ in range(rounds):
            f = await measure(n, every, quiet=5.0, after=10.0)
            print(
                f"| {n} | {f['before_p50_ms']:.1f} / {f['before_max_ms']:.1f} "
                f"| {f['after_p50_ms']:.1f} / {f['after_max_ms']:.1f} | {f['probes_after']} |",
                flush=True,
            )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", type=int, action="append", help="repeatable")
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--every", type=float, default=1.0, help="seconds between heartbeats")
    options = parser.parse_args()
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    run_loop(main(options.clients or [1000], options.rounds, options.every))
