"""What the benchmarks share: CPU time from /proc, percentiles, the machine's description,
Prometheus scrapes, subprocess stop and log checks, client processes and their plan, targets
and the report's tail, the JSON file. Imported by `server_bench.py` and `proxy_bench.py`."""

from __future__ import annotations

import asyncio
import contextlib
import importlib.metadata
import json
import multiprocessing as mp
import os
import platform
import re
import signal
import subprocess
import sys
import time
import traceback
import urllib.request
from collections.abc import Callable, Coroutine, Iterator, Sequence
from multiprocessing.context import SpawnProcess
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
CLK_TCK = os.sysconf("SC_CLK_TCK")
#: the per-connection rate limit is raised for every scenario (PROTOCOL.md's 50/s would cap
#: a closed-loop client); the limiter still runs for every message
RATE_ARGS = ("--rate", "100000", "--burst", "100000")
#: log lines worth reporting: WARNING or above, and traceback headers
LOG_PROBLEMS = ("WARNING", "ERROR", "CRITICAL", "Traceback")

#: (warm-up start, measured window start, measured window end), CLOCK_MONOTONIC ns
Plan = tuple[int, int, int]
#: a client process's worker coroutine function: (*args, ready=, go=) → its result
Worker = Callable[..., Coroutine[Any, Any, dict[str, Any]]]


# --------------------------------------------------------------------------- clocks and CPU


def now_ns() -> int:
    """CLOCK_MONOTONIC in ns: the same clock in every process of the machine."""
    return time.monotonic_ns()


def run_loop(coro: Coroutine[Any, Any, Any]) -> Any:
    """Run a coroutine on uvloop when importable, else on asyncio's default loop."""
    try:
        import uvloop
    except ImportError:
        return asyncio.run(coro)
    return uvloop.run(coro)


def proc_cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process (all its threads), from /proc/PID/stat."""
    return proc_cpu_seconds_path(Path(f"/proc/{pid}/stat"))


def thread_cpu_seconds(pid: int) -> dict[int, float]:
    """User + system CPU time of each live thread of a process, by thread id."""
    found: dict[int, float] = {}
    for task in Path(f"/proc/{pid}/task").iterdir():
        with contextlib.suppress(OSError, ValueError):
            found[int(task.name)] = proc_cpu_seconds_path(task / "stat")
    return found


def proc_cpu_seconds_path(path: Path) -> float:
    """User + system CPU time from a proc(5) `stat` file."""
    user, system = proc_user_sys(path)
    return user + system


def proc_user_sys(path: Path) -> tuple[float, float]:
    """(user, system) CPU seconds from a proc(5) `stat` file."""
    # after "(comm) ", fields[0] is the state (field 3 of proc(5)); utime and stime are 14, 15
    raw = path.read_text()
    fields = raw[raw.rindex(")") + 2 :].split()
    return int(fields[11]) / CLK_TCK, int(fields[12]) / CLK_TCK


def machine_cpu() -> tuple[float, float]:
    """(busy, total) jiffies of the whole machine, from /proc/stat."""
    values = [float(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = values[3] + (values[4] if len(values) > 4 else 0.0)  # idle + iowait
    total = sum(values[:8])  # guest time is already counted in user
    return total - idle, total


def times_cpu() -> float:
    """This process's user + system CPU time."""
    t = os.times()
    return t.user + t.system


async def mark_cpu(at: Sequence[int], into: list[float]) -> None:
    """Append this process's CPU time to `into` at each of the instants `at` (ns)."""
    for mark in at:
        await asyncio.sleep(max(0.0, (mark - now_ns()) / 1e9))
        into.append(times_cpu())


# --------------------------------------------------------------------------- figures


def percentile(ordered: Sequence[float], p: float) -> float:
    """Nearest-rank percentile of an already sorted sequence (nan when empty)."""
    if not ordered:
        return float("nan")
    rank = max(1, min(len(ordered), round(p / 100.0 * len(ordered) + 0.5)))
    return ordered[rank - 1]


def latency_summary_ms(samples_ns: list[int]) -> dict[str, float]:
    """p50/p95/p99/max/mean in milliseconds."""
    ordered = sorted(samples_ns)
    if not ordered:
        return {"count": 0}
    ms = 1e6
    return {
        "count": len(ordered),
        "p50_ms": percentile(ordered, 50) / ms,
        "p95_ms": percentile(ordered, 95) / ms,
        "p99_ms": percentile(ordered, 99) / ms,
        "max_ms": ordered[-1] / ms,
        "mean_ms": sum(ordered) / len(ordered) / ms,
    }


def merge_counts(outputs: Sequence[dict[str, Any]], key: str) -> dict[str, int]:
    """The `key` counters (name → count) of several outputs, summed."""
    total: dict[str, int] = {}
    for output in outputs:
        for name, n in output[key].items():
            total[name] = total.get(name, 0) + n
    return total


def target(
    name: str,
    measured: float,
    limit: float,
    *,
    strict: bool = False,
    runs: Sequence[float] = (),
) -> dict[str, Any]:
    """A target of the report: `measured` at most `limit` (below it when `strict`).
    `runs`: the figure of each round when `measured` is their median."""

    def meets(value: float) -> bool:
        return value < limit if strict else value <= limit

    item: dict[str, Any] = {
        "name": name,
        "measured": measured,
        "limit": f"{'<' if strict else '<='} {limit:g}",
        "met": meets(measured),
    }
    if runs:
        item["runs"] = list(runs)
        item["met_in_runs"] = sum(1 for value in runs if meets(value))
    return item


# --------------------------------------------------------------------------- the machine


def cpu_model() -> str:
    """The CPU model name from /proc/cpuinfo."""
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


def machine_info() -> dict[str, Any]:
    """What the figures were measured on."""

    def version(package: str) -> str | None:
        try:
            return importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            return None

    return {
        "nproc": os.cpu_count(),
        "cpu_model": cpu_model(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "websockets": version("websockets"),
        "uvloop": version("uvloop"),
        "aiosqlite": version("aiosqlite"),
    }


def git_commit() -> str | None:
    """The checked-out commit (None outside git)."""
    with contextlib.suppress(OSError):
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True, timeout=10
        )
        return out.stdout.strip() or None
    return None


def hot_modules() -> str:
    """Whether the servers and the proxy this benchmark starts (same files, same environment)
    run the compiled hot modules: `stateshift native`'s answer."""
    from stateshift import native

    return native.status()


# --------------------------------------------------------------------------- metrics


METRIC_LINE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{[^}]*\})?\s+(\S+)$")


def fetch_metrics(url: str, timeout: float = 10.0) -> dict[str, float]:
    """Prometheus metrics at `url`, `name{labels}` → value (labels as printed)."""
    with urllib.request.urlopen(url, timeout=timeout) as response:  # loopback only
        text = response.read().decode()
    found: dict[str, float] = {}
    for line in text.splitlines():
        match = METRIC_LINE.match(line)
        if match:
            found[match.group(1) + (match.group(2) or "")] = float(match.group(3))
    return found


def metric_sum(metrics: dict[str, float], name: str, **labels: str) -> float:
    """Sum of the series of `name` whose labels include `labels`."""
    total = 0.0
    for key, value in metrics.items():
        base, _, rest = key.partition("{")
        if base == name and all(f'{k}="{v}"' in rest for k, v in labels.items()):
            total += value
    return total


# --------------------------------------------------------------------------- subprocesses


def stop_process(proc: subprocess.Popen[str], timeout: float = 15.0) -> int | None:
    """SIGTERM (graceful), then SIGKILL after `timeout` s; the exit code."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)
    if proc.stdout is not None:
        proc.stdout.close()
    return proc.returncode


def log_problems(path: Path, keep: Sequence[str] = LOG_PROBLEMS) -> list[str]:
    """The lines of a log that contain any of `keep`."""
    lines = path.read_text(errors="replace").splitlines()
    return [line for line in lines if any(word in line for word in keep)]


# --------------------------------------------------------------------------- client processes


def run_worker(start: Callable[[], Coroutine[Any, Any, Any]], ready: Any, results: Any) -> None:
    """The body of a client process: run the worker coroutine `start()`, put its result (or
    the traceback, on both queues)."""
    try:
        results.put(("ok", run_loop(start())))
    except BaseException:
        message = traceback.format_exc()
        ready.put(("error", message))
        results.put(("error", message))


@contextlib.contextmanager
def client_processes(
    worker_main: Callable[..., None],
    jobs: list[tuple[str, tuple[Any, ...]]],
    join_timeout: float = 15.0,
) -> Iterator[Any]:
    """One spawned process per job, running `worker_main(kind, args, ready, go, results)`;
    yield (ready, gos, results); always reap them (after `join_timeout` s, terminate)."""
    ctx = mp.get_context("spawn")
    ready = ctx.Queue()
    results = ctx.Queue()
    gos = [ctx.Queue() for _ in jobs]
    procs: list[SpawnProcess] = []
    try:
        for (kind, args), go in zip(jobs, gos, strict=True):
            proc = ctx.Process(
                target=worker_main, args=(kind, args, ready, go, results), daemon=True
            )
            proc.start()
            procs.append(proc)
        yield ready, gos, results
    finally:
        for proc in procs:
            proc.join(timeout=join_timeout)
            if proc.is_alive():
                proc.terminate()
                proc.join(timeout=5)
            if proc.is_alive():
                proc.kill()
                proc.join(timeout=5)
        for q in (ready, results, *gos):
            q.close()
            q.cancel_join_thread()


def collect(queue_: Any, n: int, timeout: float, what: str) -> list[Any]:
    """`n` answers of the client processes (each within `timeout` s); fail on an error."""
    out = []
    for _ in range(n):
        status, detail = queue_.get(timeout=timeout)
        if status not in ("ok", "ready"):
            raise RuntimeError(f"a client process failed ({what}):\n{detail}")
        out.append(detail)
    return out


def send_plan(gos: Sequence[Any], warmup: float, duration: float) -> Plan:
    """Tell every client process the plan: warm-up from 0.3 s on, then the window."""
    t0 = now_ns() + int(0.3e9)
    start = t0 + int(warmup * 1e9)
    end = start + int(duration * 1e9)
    for go in gos:
        go.put((t0, start, end))
    return t0, start, end


async def wait_plan(go: Any) -> Plan:
    """Block (in a thread) until the parent sends the plan."""
    plan: Plan = await asyncio.get_running_loop().run_in_executor(None, go.get, True, 120)
    return plan


def sleep_until(instant_ns: int) -> None:
    """Sleep (this thread) until CLOCK_MONOTONIC reaches `instant_ns`."""
    time.sleep(max(0.0, (instant_ns - now_ns()) / 1e9))


# --------------------------------------------------------------------------- report


def print_targets(targets: Sequence[dict[str, Any]]) -> None:
    for item in targets:
        status = "MET" if item["met"] else "MISSED"
        line = f"target {item['name']}: {item['measured']:.2f} vs {item['limit']} → {status}"
        runs = item.get("runs")
        if runs and len(runs) > 1:
            each = ", ".join(f"{value:.2f}" for value in sorted(runs))
            line += (
                f" (median of {len(runs)} rounds: {each}; met in {item['met_in_runs']} of"
                f" {len(runs)})"
            )
        print(line)


def print_problems(scenarios: dict[str, Any], key: str, what: str) -> None:
    """Each scenario's log problems (`key`, a few of them) and its client-side errors."""
    for name, r in scenarios.items():
        if r.get(key):
            print(f"{what} of {name}: {len(r[key])} warning/error lines, e.g.")
            for line in r[key][:5]:
                print("   ", line)
        if r.get("client_errors"):
            print(f"client-side errors in {name}: {r['client_errors']}")


def command_line(script: str, argv: list[str] | None) -> str:
    """How the benchmark was run, for its results."""
    return " ".join([f"benchmarks/{script}", *(argv if argv is not None else sys.argv[1:])])


def write_json(path: Path, results: dict[str, Any]) -> None:
    """Write the results (atomically) and say where."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp_path = path.with_suffix(".json.tmp")
    tmp_path.write_text(json.dumps(results, indent=2, sort_keys=False) + "\n")
    tmp_path.replace(path)
    shown = path.relative_to(REPO) if path.is_relative_to(REPO) else path
    print(f"\nwrote {shown}")
