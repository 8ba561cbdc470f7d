"""Concurrent A/B of two versions of the new state server. Not a test; never run in CI.

    git worktree add /tmp/server-before <commit>          # the version to compare against
    .venv/bin/python benchmarks/server_ab.py --before /tmp/server-before
    .venv/bin/python benchmarks/server_ab.py --before /tmp/server-before --scenario fanout

Figures of the same code drift by ±15-25 % between runs on this shared 2-core machine, so two
versions are compared under the same conditions:

- `durable` (default): both servers run **at the same time**, each on a fresh SQLite file,
  each with the durable scenario's load of `server_bench.py` (100 clients over 50 games,
  closed loop of `STATE_UPDATE`s), driven by the **same** client processes (each process runs
  its share of the clients against both servers in one event loop; `RawPlayer`s unless
  `--durable-clients websockets`). Each server's CPU time
  (user + system, all threads, from /proc) over the same window is divided by its own
  acknowledged updates (its `/metrics`). Rounds alternate which server starts first. The
  host's drift hits both alike: the after ÷ before ratio is the comparable figure.
- `fanout`: the fan-out scenario of `server_bench.py` (1 sender at 50/s, 99 observers on one
  game) run **in turns**, before / after / after / before …, one server at a time (two at
  once would double the receivers' load, which dominates this latency); the medians of the
  rounds are compared.

Both versions run with `python -m stateshift serve` from their own checkout (`--before`,
`--after`: directories holding `server/` and `stateshift/`), with the same interpreter.
"""

from __future__ import annotations

import argparse
import contextlib
import secrets
import shlex
import statistics
import sys
import tempfile
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:  # run as a script: make `benchmarks` importable
    sys.path.insert(0, str(REPO))

from benchmarks.common import (  # noqa: E402
    RATE_ARGS,
    client_processes,
    collect,
    machine_cpu,
    metric_sum,
    now_ns,
    proc_user_sys,
    send_plan,
    sleep_until,
    thread_cpu_seconds,
)
from benchmarks.server_bench import (  # noqa: E402
    ServerProcess,
    scenario_fanout,
    server,
    worker_main,
)


def _cpu(srv: ServerProcess) -> tuple[float, float, float]:
    """(all threads user+sys, event-loop thread, sys) CPU seconds of a server process."""
    pid = srv.proc.pid
    user, system = proc_user_sys(Path(f"/proc/{pid}/stat"))
    main = thread_cpu_seconds(pid).get(pid, 0.0)
    return user + system, main, system


def durable_round(
    versions: list[tuple[str, Path, list[str]]],
    secret: str,
    workdir: Path,
    procs: int,
    warmup: float,
    duration: float,
    client_kind: str = "raw",
) -> dict[str, dict[str, float]]:
    """Both servers under the same closed-loop load at the same time; figures per version
    (`client_kind`: `raw` players or websockets' client, as in `server_bench`)."""
    clients, games = 100, 50
    per_game = clients // games
    pairs = [(f"g{i // per_game:03d}", f"p{i:03d}") for i in range(clients)]
    with contextlib.ExitStack() as stack:
        servers = [
            stack.enter_context(
                server(workdir, f"{label}-{now_ns()}", secret, [*RATE_ARGS, *extra], code=code)
            )
            for label, code, extra in versions
        ]
        urls = [srv.url for srv in servers]
        worker = "raw_closed_loop_multi" if client_kind == "raw" else "closed_loop_multi"
        jobs = [(worker, (urls, secret, pairs[k::procs])) for k in range(procs)]
        with client_processes(worker_main, jobs, join_timeout=10) as (ready, gos, results):
            collect(ready, len(jobs), 90, "connect")
            _warm, start, end = send_plan(gos, warmup, duration)
            sleep_until(start)
            before = [(srv.metrics(), _cpu(srv)) for srv in servers]
            busy0, total0 = machine_cpu()
            began = now_ns()
            sleep_until(end)
            cpu_after = [_cpu(srv) for srv in servers]
            busy1, total1 = machine_cpu()
            seconds = (now_ns() - began) / 1e9
            metrics_after = [srv.metrics() for srv in servers]
            outputs = collect(results, len(jobs), 60, "load")
        problems = [srv.log_problems() for srv in servers]
    figures: dict[str, dict[str, float]] = {}
    for i, (label, _code, _extra) in enumerate(versions):
        (m0, c0), m1, c1 = before[i], metrics_after[i], cpu_after[i]

        def delta(name: str, m0: Any = m0, m1: Any = m1, **labels: str) -> float:
            return metric_sum(m1, name, **labels) - metric_sum(m0, name, **labels)

        acks = delta("stateshift_server_messages_total", type="STATE_UPDATE", result="ok")
        batches = delta("stateshift_server_commit_batch_size_count")
        errors: dict[str, int] = {}
        for out in outputs:
            for code, n in out["per_server"][i]["errors"].items():
                errors[code] = errors.get(code, 0) + n
        figures[label] = {
            "acks_per_s": acks / seconds,
            "cpu_per_ack_us": 1e6 * (c1[0] - c0[0]) / max(1.0, acks),
            "main_thread_per_ack_us": 1e6 * (c1[1] - c0[1]) / max(1.0, acks),
            "sys_per_ack_us": 1e6 * (c1[2] - c0[2]) / max(1.0, acks),
            "mean_batch": delta("stateshift_server_commit_batch_size_sum") / max(1.0, batches),
            "client_errors": sum(errors.values()),
            "log_problems": len(problems[i]),
        }
        for line in problems[i][:5]:
            print(f"   {label} server log: {line}")
    figures["machine"] = {"busy_pct": 100 * (busy1 - busy0) / max(1.0, total1 - total0)}
    return figures


def run_durable(args: argparse.Namespace, secret: str, workdir: Path) -> None:
    versions = [
        ("before", args.before, shlex.split(args.before_args)),
        ("after", args.after, shlex.split(args.after_args)),
    ]
    ratios: list[float] = []
    for r in range(args.rounds):
        order = versions if r % 2 == 0 else versions[::-1]
        figs = durable_round(
            order,
            secret,
            workdir,
            args.client_processes,
            args.warmup,
            args.duration,
            client_kind=args.durable_clients,
        )
        b, a = figs["before"], figs["after"]
        ratio = a["cpu_per_ack_us"] / b["cpu_per_ack_us"]
        ratios.append(ratio)
        print(
            f"round {r + 1} (first started: {order[0][0]}), machine busy "
            f"{figs['machine']['busy_pct']:.0f} %"
        )
        for label in ("before", "after"):
            f = figs[label]
            print(
                f"  {label:6} acks/s {f['acks_per_s']:8,.0f}  CPU/ack {f['cpu_per_ack_us']:6.1f} µs"
                f"  (event loop {f['main_thread_per_ack_us']:5.1f}, sys {f['sys_per_ack_us']:5.1f})"
                f"  batch {f['mean_batch']:5.1f}  client errors {f['client_errors']:.0f}"
                f"  log problems {f['log_problems']:.0f}"
            )
        print(f"  after ÷ before, CPU per ack: {ratio:.3f}")
    print(f"\nCPU per ack, after ÷ before, by round: {', '.join(f'{x:.3f}' for x in ratios)}")
    print(f"geometric mean: {statistics.geometric_mean(ratios):.3f}")


def run_fanout(args: argparse.Namespace, secret: str, workdir: Path) -> None:
    versions = {"before": args.before, "after": args.after}
    p99: dict[str, list[float]] = {"before": [], "after": []}
    cpu: dict[str, list[float]] = {"before": [], "after": []}
    order: list[str] = []
    for r in range(args.rounds):
        order += ["before", "after"] if r % 2 == 0 else ["after", "before"]
    for label in order:
        res = scenario_fanout(
            workdir,
            secret,
            99,
            50.0,
            args.client_processes,
            args.warmup,
            args.duration,
            code=versions[label],
            name=f"fanout-{label}-{now_ns()}",
            receiver_client=args.fanout_receivers,
        )
        lat = res["fanout_latency"]
        p99[label].append(lat["p99_ms"])
        cpu[label].append(res["server_cpu_per_broadcast_frame_us"])
        print(
            f"  {label:6} send→receipt p50 {lat['p50_ms']:5.2f} p99 {lat['p99_ms']:6.2f} ms"
            f"  (first receiver p99 {res['first_receiver_latency']['p99_ms']:5.2f},"
            f" last {res['last_receiver_latency']['p99_ms']:5.2f}, sender ACK p99"
            f" {res['sender_ack_latency']['p99_ms']:5.2f})  missing {res['missing_pairs']}"
            f"  server CPU/frame {res['server_cpu_per_broadcast_frame_us']:5.2f} µs"
            f"  machine busy {res['machine_busy_pct']:.0f} %",
            flush=True,
        )
    for label in ("before", "after"):
        print(
            f"{label:6} median p99 {statistics.median(p99[label]):6.2f} ms, median CPU/frame "
            f"{statistics.median(cpu[label]):5.2f} µs"
        )
    print(
        "after ÷ before: p99 "
        f"{statistics.median(p99['after']) / statistics.median(p99['before']):.3f}, CPU/frame "
        f"{statistics.median(cpu['after']) / statistics.median(cpu['before']):.3f}"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n", 1)[0])
    parser.add_argument("--before", type=Path, default=Path("/tmp/server-before"))
    parser.add_argument("--after", type=Path, default=REPO)
    parser.add_argument("--before-args", default="", help="more `serve` options (durable)")
    parser.add_argument("--after-args", default="", help="more `serve` options (durable)")
    parser.add_argument("--scenario", choices=("durable", "fanout"), default="durable")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--warmup", type=float, default=4.0)
    parser.add_argument("--duration", type=float, default=10.0)
    parser.add_argument("--client-processes", type=int, default=2)
    parser.add_argument("--durable-clients", choices=("raw", "websockets"), default="raw")
    parser.add_argument("--fanout-receivers", choices=("raw", "websockets"), default="raw")
    args = parser.parse_args(argv)
    for path in (args.before, args.after):
        if not (path / "server" / "app.py").is_file():
            parser.error(f"{path} holds no server/app.py")
    secret = secrets.token_hex(32)
    with tempfile.TemporaryDirectory(prefix="stateshift-ab-") as tmp:
        if args.scenario == "durable":
            run_durable(args, secret, Path(tmp))
        else:
            run_fanout(args, secret, Path(tmp))
    return 0


if __name__ == "__main__":
    sys.exit(main())
