"""Where the mirroring proxy's CPU goes: the same load against the proxy in four set-ups,
interleaved, each measured as the proxy's CPU time (user and system) per client message.

- `passthrough`: mirroring off (sessions spliced);
- `relay`: mirroring, no tap (the relay, the shadow's order and answer latency only);
- `tap`: mirroring with the tap poured, once per event-loop turn, into a sink that discards
  what it gets;
- `compare`: mirroring with the live comparator, as shipped.

The proxy runs in this process (so that `--profile` can run it under cProfile); the reference
old server and the new server run as subprocesses (`stateshift legacy`, `stateshift serve`,
rate limits raised), and 10 clients in one subprocess run a closed loop on their own games:
9 `HEARTBEAT` in 10, 1 `STATE_UPDATE`. Everything on 127.0.0.1. The figures are CPU per
message (`os.times()` of this process over the client run, divided by the messages the clients
got answers to), comparable with `proxy_bench.py`'s relay CPU per message for the proxy.

Run: .venv/bin/python benchmarks/proxy_breakdown.py [--rounds 3] [--seconds 8]
                                                   [--mode compare --mode relay …] [--profile]
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import os
import pstats
import secrets
import sys
import tempfile
from pathlib import Path
from typing import Any

import uvloop

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from compare.live import LiveComparison  # noqa: E402
from compare.rules import defaults  # noqa: E402
from compare.store import FindingStore  # noqa: E402
from proxy.admin import ControlPlane  # noqa: E402
from proxy.relay import MirrorProxy, ProxySettings  # noqa: E402
from proxy.route import Route  # noqa: E402
from proxy.state import ProxyState  # noqa: E402
from proxy.tap import Tap  # noqa: E402

MODES = ("passthrough", "relay", "tap", "compare")
RATE = ["--rate", "100000", "--burst", "100000"]

CLIENT = r"""
import asyncio, sys, time
import orjson, uvloop
from websockets.asyncio.client import connect
from stateshift.tokens import mint_token

async def one(url, secret, n, stop):
    async with connect(f"{url}/v1/games/g{n}", compression=None, proxy=None) as ws:
        token = mint_token(secret, f"p{n}", "player")
        await ws.send(orjson.dumps({"type": "CONNECT", "id": "c", "token": token}).decode())
        await ws.recv()
        sent = 0
        while time.monotonic() < stop:
            sent += 1
            if sent % 10 == 0:
                update = {"score_deltas": {f"p{n}": 1}}
                frame = {"type": "STATE_UPDATE", "id": str(sent), "updates": update}
                await ws.send(orjson.dumps(frame).decode())
                while orjson.loads(await ws.recv()).get("re") != str(sent):
                    pass
            else:
                await ws.send(orjson.dumps({"type": "HEARTBEAT", "id": str(sent)}).decode())
                await ws.recv()
        return sent

async def main(url, secret, seconds):
    stop = time.monotonic() + seconds
    counts = await asyncio.gather(*(one(url, secret, n, stop) for n in range(10)))
    print(sum(counts))

uvloop.run(main(sys.argv[1], sys.argv[2], float(sys.argv[3])))
"""


async def start_server(args: list[str], secret: str, log: Path) -> tuple[Any, str]:
    """A `stateshift` subprocess; its URL from its "listening on" line."""
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "stateshift",
        *args,
        cwd=REPO,
        env={**os.environ, "STATESHIFT_SECRET": secret},
        stdout=asyncio.subprocess.PIPE,
        stderr=log.open("w"),
    )
    assert process.stdout is not None
    async with asyncio.timeout(30):
        while True:
            line = (await process.stdout.readline()).decode()
            if not line:
                raise RuntimeError(f"{args[0]} exited: see {log}")
            if "listening on" in line:
                return process, line.split("listening on", 1)[1].strip().split()[0]


async def measure(
    mode: str, urls: tuple[str, str], secret: str, tmp: Path, seconds: float, profile: bool
) -> dict[str, float]:
    """One run of the clients against a fresh proxy in `mode`."""
    settings = ProxySettings(
        old_url=urls[0],
        new_url=urls[1],
        secret=secret,
        state_path=tmp / f"{mode}-proxy.db",
        port=0,
        admin_port=0,
    )
    tap = None if mode in ("passthrough", "relay") else Tap()
    proxy = MirrorProxy(settings, Route(mirroring=mode != "passthrough"), tap=tap)
    await proxy.start()
    control = ControlPlane(proxy, ProxyState(settings.state_path), secret, port=0)
    live: LiveComparison | None = None
    if mode == "compare":
        store = FindingStore(tmp / f"{mode}-findings.db")
        live = LiveComparison(proxy, control, defaults(), store, sweep_interval=None)
        live.start()
    elif tap is not None:
        tap.sink = lambda items: None  # poured once per turn, as to the comparator
    script = tmp / "client.py"
    script.write_text(CLIENT)
    profiler = cProfile.Profile() if profile else None
    before = os.times()
    if profiler is not None:
        profiler.enable()
    clients = await asyncio.create_subprocess_exec(
        sys.executable, str(script), proxy.url, secret, str(seconds),
        cwd=REPO, stdout=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, _ = await clients.communicate()
    if profiler is not None:
        profiler.disable()
    after = os.times()
    messages = int(out.decode().strip())
    if live is not None:
        await live.stop()
    await proxy.stop()
    if profiler is not None:
        print(f"--- {mode}: cProfile (wall-clock timer), top 25 by own time")
        pstats.Stats(profiler).sort_stats("tottime").print_stats(25)
    return {
        "messages": messages,
        "user_us": 1e6 * (after.user - before.user) / messages,
        "sys_us": 1e6 * (after.system - before.system) / messages,
    }


async def main(args: argparse.Namespace) -> None:
    secret = secrets.token_hex(32)
    modes = args.mode or list(MODES)
    results: dict[str, list[dict[str, float]]] = {mode: [] for mode in modes}
    with tempfile.TemporaryDirectory(prefix="stateshift-breakdown-") as name:
        tmp = Path(name)
        old, old_url = await start_server(
            ["legacy", "--port", "0", "--data", str(tmp / "old.jsonl"), *RATE],
            secret,
            tmp / "old.log",
        )
        new, new_url = await start_server(
            ["serve", "--port", "0", "--db", str(tmp / "new.db"), *RATE], secret, tmp / "new.log"
        )
        try:
            for round_no in range(args.rounds):
                for mode in modes:
                    run = await measure(
                        mode, (old_url, new_url), secret, tmp, args.seconds, args.profile
                    )
                    results[mode].append(run)
                    print(
                        f"round {round_no + 1} {mode:>11}: {run['messages']:>7,} messages, "
                        f"{run['user_us'] + run['sys_us']:6.1f} µs per message "
                        f"(user {run['user_us']:.1f}, sys {run['sys_us']:.1f})",
                        flush=True,
                    )
        finally:
            for process in (old, new):
                process.terminate()
                await process.wait()
    print("\nmedian over rounds, proxy CPU per client message:")
    for mode, runs in results.items():
        totals = sorted(r["user_us"] + r["sys_us"] for r in runs)
        print(f"  {mode:>11}: {totals[len(totals) // 2]:6.1f} µs  (runs: "
              + ", ".join(f"{t:.1f}" for t in totals) + ")")  # fmt: skip


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n", 1)[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=8.0)
    parser.add_argument("--mode", action="append", choices=MODES)
    parser.add_argument("--profile", action="store_true", help="run the proxy under cProfile")
    uvloop.run(main(parser.parse_args()))
