"""Where the mirroring proxy's CPU goes: the same load against the proxy in four set-ups,
interleaved, each measured as the proxy's CPU time (user and system) per client message.

- `passthrough`: mirroring off (sessions spliced);
- `relay`: mirroring, no tap (the relay, the shadow's order and answer latency only);
- `tap`: mirroring with the tap poured, once per event-loop turn, into a sink that discards
  what it gets;
- `compare`: mirroring with the live comparator, as shipped.

The proxy runs in this process (so that `--profile` can run it under cProfile); everything
else is `proxy_bench.py`'s: the reference old server and the new server as subprocesses
(rate limits raised), and its closed-loop load (10 clients in 2 processes, each on its own
game, 9 `HEARTBEAT` in 10, 1 `STATE_UPDATE`) measured over its window, so the figures are
its relay CPU per message for this process. Everything on 127.0.0.1.

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
if str(REPO) not in sys.path:  # run as a script: make `stateshift` and the sibling importable
    sys.path.insert(0, str(REPO))

from benchmarks.proxy_bench import fast_peer, measure_relay, new_server, old_server  # noqa: E402
from compare.live import LiveComparison  # noqa: E402
from compare.rules import defaults  # noqa: E402
from compare.store import FindingStore  # noqa: E402
from proxy.admin import ControlPlane  # noqa: E402
from proxy.relay import MirrorProxy, ProxySettings  # noqa: E402
from proxy.route import Route  # noqa: E402
from proxy.state import ProxyState  # noqa: E402
from proxy.tap import Tap  # noqa: E402

MODES = ("passthrough", "relay", "tap", "compare")
#: proxy_bench.py's load: clients, client processes, warm-up seconds
CLIENTS, CLIENT_PROCESSES, WARMUP = 10, 2, 2.0


async def measure(
    mode: str,
    urls: tuple[str, str],
    secret: str,
    tmp: Path,
    seconds: float,
    profile: bool,
    coalesce_ms: float | None = None,
) -> dict[str, Any]:
    """One window of the load against a fresh proxy in `mode`."""
    settings = ProxySettings(
        old_url=urls[0],
        new_url=urls[1],
        secret=secret,
        state_path=tmp / f"{mode}-proxy.db",
        port=0,
        admin_port=0,
    )
    if coalesce_ms is not None:
        settings.shadow_coalesce = coalesce_ms / 1000
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
    profiler = cProfile.Profile() if profile else None
    if profiler is not None:
        profiler.enable()
    # proxy_bench's measurement blocks while it waits for the window: not on this loop
    result = await asyncio.to_thread(
        measure_relay,
        mode,
        proxy.url,
        [os.getpid()],
        secret,
        CLIENTS,
        CLIENT_PROCESSES,
        WARMUP,
        seconds,
    )
    if profiler is not None:
        profiler.disable()
    if live is not None:
        await live.stop()
    await proxy.stop()
    if profiler is not None:
        print(f"--- {mode}: cProfile (wall-clock timer)")
        # BREAKDOWN_SORT=ncalls BREAKDOWN_TOP=60: how many calls per message, and of what
        stats = pstats.Stats(profiler).sort_stats(os.environ.get("BREAKDOWN_SORT", "tottime"))
        stats.print_stats(int(os.environ.get("BREAKDOWN_TOP", "25")))
    messages = result["messages"]
    return {
        "messages": messages,
        "user_us": result["relay_cpu_per_message_us"] - result["relay_sys_cpu_per_message_us"],
        "sys_us": result["relay_sys_cpu_per_message_us"],
        "syscalls": result["relay_syscalls_per_message"],
    }


def label(mode: str, coalesce_ms: float | None) -> str:
    return mode if coalesce_ms is None else f"{mode}@{coalesce_ms:g}ms"


async def main(args: argparse.Namespace) -> None:
    secret = secrets.token_hex(32)
    variants: list[tuple[str, float | None]] = [
        (mode, coalesce)
        for mode in args.mode or list(MODES)
        for coalesce in (args.shadow_coalesce_ms or [None] if mode != "passthrough" else [None])
    ]
    results: dict[str, list[dict[str, Any]]] = {label(*v): [] for v in variants}
    with tempfile.TemporaryDirectory(prefix="stateshift-breakdown-") as name:
        if args.peers == "fast":
            old_cm = fast_peer(Path(name), secret, "old")
            new_cm = fast_peer(Path(name), secret, "new")
        else:
            old_cm, new_cm = old_server(Path(name), secret), new_server(Path(name), secret)
        with old_cm as old, new_cm as new:
            await run_rounds(args, variants, results, secret, Path(name), (old.url(), new.url()))
    print("\nmedian over rounds, proxy CPU per client message:")
    for mode, runs in results.items():
        totals = sorted(r["user_us"] + r["sys_us"] for r in runs)
        print(f"  {mode:>11}: {totals[len(totals) // 2]:6.1f} µs  (runs: "
              + ", ".join(f"{t:.1f}" for t in totals) + ")")  # fmt: skip


async def run_rounds(
    args: argparse.Namespace,
    variants: list[tuple[str, float | None]],
    results: dict[str, list[dict[str, Any]]],
    secret: str,
    tmp: Path,
    urls: tuple[str, str],
) -> None:
    """The interleaved rounds of every variant, against the same upstreams."""
    for round_no in range(args.rounds):
        for mode, coalesce in variants:
            run = await measure(mode, urls, secret, tmp, args.seconds, args.profile, coalesce)
            results[label(mode, coalesce)].append(run)
            print(
                f"round {round_no + 1} {label(mode, coalesce):>11}: "
                f"{run['messages']:>7,} messages, "
                f"{run['user_us'] + run['sys_us']:6.1f} µs per message "
                f"(user {run['user_us']:.1f}, sys {run['sys_us']:.1f}), "
                f"{run['syscalls']:.2f} read/write calls",
                flush=True,
            )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n", 1)[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=8.0)
    parser.add_argument("--mode", action="append", choices=MODES)
    parser.add_argument("--profile", action="store_true", help="run the proxy under cProfile")
    parser.add_argument(
        "--peers",
        choices=("servers", "fast"),
        default="servers",
        help="upstreams: the real servers (default) or fast protocol peers (proxy_bench's)",
    )
    parser.add_argument(
        "--shadow-coalesce-ms",
        type=float,
        action="append",
        help="measure the mirroring set-ups at each of these shadow write windows "
        "(default: the proxy's default)",
    )
    uvloop.run(main(parser.parse_args()))
