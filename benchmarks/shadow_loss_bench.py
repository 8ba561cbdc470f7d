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

from benchmarks.common import git_commit, hot_modules, run_loop
from benchmarks.switch_bench import join, processes


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
    rate = ["--rate", "100000", "--burst", "100000"]
    with tempfile.TemporaryDirectory(prefix="shadow-loss-bench-") as name:
        async with processes(Path(name), rate) as started:
            conns: list[ClientConnection] = []
            try:
                for start in range(0, clients, 100):  # 100 handshakes at a time
                    conns += await asyncio.gather(
                        *(
                            join(started.url, f"g{n}", f"p{n}")
                            for n in range(start, min(clients, start + 100))
                        )
                    )
                probes = [await join(started.url, f"probe{n}", f"probe{n}") for n in range(4)]
                conns += probes
                stop = asyncio.Event()
                rtts: list[tuple[float, float]] = []
                tasks = [asyncio.create_task(heartbeats(ws, every, stop)) for ws in conns[:clients]]
                tasks += [asyncio.create_task(probe(ws, stop, rtts)) for ws in probes]
                await asyncio.sleep(quiet)
                killed = time.monotonic()
                os.kill(started.new.pid, signal.SIGKILL)
                print(f"shadow killed; proxy pid {started.proxy.pid}", file=sys.stderr, flush=True)
                await asyncio.sleep(after)
                stop.set()
                await asyncio.wait(tasks, timeout=30)
            finally:
                await asyncio.gather(*(ws.close() for ws in conns), return_exceptions=True)
    before = [rtt for at, rtt in rtts if killed - quiet / 2 < at < killed]
    later = [rtt for at, rtt in rtts if at >= killed]
    return {
        "clients": clients,
        "before_p50_ms": 1000 * statistics.median(before),
        "before_max_ms": 1000 * max(before),
        "after_p50_ms": 1000 * statistics.median(later),
        "after_max_ms": 1000 * max(later),
        "probes_after": len(later),
    }


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
