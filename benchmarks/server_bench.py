"""Load benchmark of the new state server (`stateshift serve`). Not a test; never run in CI.

    .venv/bin/python benchmarks/server_bench.py            # full run, 3 rounds (about 4 minutes)
    .venv/bin/python benchmarks/server_bench.py --quick --rounds 1   # smoke run (about 40 s)

Scenarios, each against a fresh server subprocess with a fresh SQLite file in a temporary
directory, on 127.0.0.1 only:

1. `durable`: 100 clients over 50 games (2 players per game), each in a closed loop
   (STATE_UPDATE with `score_deltas` on itself, wait for its ACK, broadcasts drained).
   Reports acks/s, ACK latency percentiles and the server's CPU time per acknowledged update.
2. `batch1`: the same load against `--max-batch 1` (one transaction per change); the report
   compares it with scenario 1 (throughput and CPU per ack, as ratios).
3. `fanout`: 100 connections on one game (1 player sending at a fixed rate, 99 observers);
   latency from the sender's send to each receiver's receipt of the STATE broadcast of that
   version, and the server's CPU per broadcast frame.

The scenarios run `--rounds` times (3 by default), interleaved. Figures of the same code move
by ±15-25 % between runs on this 2-core machine, so a target is judged on the median of its
figure over the rounds; the report shows each scenario's median round and every round's figure.

The clients run in separate processes (multiprocessing, on uvloop when importable) because
they compete with the server for the machine's cores; they are the lean clients of
`benchmarks/rawclient.py` (the fan-out's sender excepted: websockets' client), so that they
leave the server as much of the machine as they can. The server's CPU time per operation
(read from /proc/PID/stat) is the fair figure; the throughput depends on how much CPU the
clients leave to the server.

Environment: `STATESHIFT_BENCH_PROFILE=DIR` runs each server under cProfile and writes
`DIR/<scenario>.prof` (then prints its top entries); the figures of a profiled run are not
representative (profiling costs CPU).

Writes `benchmarks/results/server.json` (`--json PATH` to change it).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import pstats
import queue
import re
import secrets
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
from websockets.asyncio.client import ClientConnection, connect

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:  # run as a script: make `stateshift` importable
    sys.path.insert(0, str(REPO))

from benchmarks.common import (  # noqa: E402
    RATE_ARGS,
    Worker,
    client_processes,
    collect,
    command_line,
    fetch_metrics,
    git_commit,
    hot_modules,
    latency_summary_ms,
    log_problems,
    machine_cpu,
    machine_info,
    mark_cpu,
    merge_counts,
    metric_sum,
    now_ns,
    print_problems,
    print_targets,
    proc_cpu_seconds,
    proc_user_sys,
    run_loop,
    run_worker,
    send_plan,
    sleep_until,
    stop_process,
    target,
    thread_cpu_seconds,
    times_cpu,
    wait_plan,
    write_json,
)
from benchmarks.rawclient import (  # noqa: E402
    STATE_PREFIX,
    RawClient,
    open_raw,
    raw_closed_loop,
    raw_closed_loop_one,
)
from stateshift.tokens import mint_token  # noqa: E402

PYTHON = sys.executable
PROFILE_ENV = "STATESHIFT_BENCH_PROFILE"
DEFAULT_JSON = REPO / "benchmarks" / "results" / "server.json"
TARGET_CPU_PER_ACK_US = 50.0
TARGET_FANOUT_P99_MS = 5.0


# --------------------------------------------------------------------------- server


@dataclass
class ServerProcess:
    """A `stateshift serve` subprocess on a fresh database; stopped by `stop()`."""

    proc: subprocess.Popen[str]
    port: int
    log_path: Path
    command: list[str]

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}"

    def cpu(self) -> float:
        return proc_cpu_seconds(self.proc.pid)

    def metrics(self) -> dict[str, float]:
        """The server's Prometheus metrics, `name{labels}` → value (labels as printed)."""
        return fetch_metrics(f"http://127.0.0.1:{self.port}/metrics", timeout=5)

    def stop(self, timeout: float = 15.0) -> int | None:
        """SIGTERM (graceful), then SIGKILL after `timeout` s; the exit code."""
        return stop_process(self.proc, timeout)

    def log_problems(self) -> list[str]:
        """Lines of the server's log at WARNING or above, and traceback headers."""
        return log_problems(self.log_path)


@contextlib.contextmanager
def server(
    workdir: Path,
    name: str,
    secret: str,
    extra: Sequence[str] = (),
    startup: float = 30.0,
    code: Path = REPO,
) -> Iterator[ServerProcess]:
    """Start a server on a fresh SQLite file in `workdir`; always stop it. `code`: the
    checkout whose `server/` runs (`python -m stateshift` from there: another worktree runs
    its own version, for an A/B)."""
    db = workdir / f"{name}.db"
    log_path = workdir / f"{name}.log"
    command = [PYTHON]
    profile_dir = os.environ.get(PROFILE_ENV)
    if profile_dir:
        Path(profile_dir).mkdir(parents=True, exist_ok=True)
        command += ["-m", "cProfile", "-o", str(Path(profile_dir) / f"{name}.prof")]
    command += ["-m", "stateshift", "serve", "--host", "127.0.0.1", "--port", "0"]
    command += ["--db", str(db), *extra]
    env = {**os.environ, "STATESHIFT_SECRET": secret, "PYTHONUNBUFFERED": "1"}
    with open(log_path, "w") as log_file:
        proc = subprocess.Popen(
            command,
            cwd=code,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=log_file,
            text=True,
        )
    handle: ServerProcess | None = None
    try:
        port = _wait_listening(proc, startup, log_path)
        handle = ServerProcess(proc, port, log_path, command)
        yield handle
    finally:
        if handle is None:
            handle = ServerProcess(proc, 0, log_path, command)
        handle.stop()


def _wait_listening(proc: subprocess.Popen[str], timeout: float, log_path: Path) -> int:
    """The port of `listening on ws://HOST:PORT`, read from the server's stdout."""
    assert proc.stdout is not None
    result: queue.Queue[str] = queue.Queue()

    def read() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            if line.startswith("listening on"):
                result.put(line)
                return
        result.put("")

    import threading

    threading.Thread(target=read, daemon=True).start()
    try:
        line = result.get(timeout=timeout)
    except queue.Empty:
        line = ""
    match = re.search(r"ws://[^:]+:(\d+)", line)
    if not match:
        raise RuntimeError(
            f"server did not start (exit {proc.poll()}): {log_path.read_text()[-2000:]}"
        )
    return int(match.group(1))


# --------------------------------------------------------------------------- workers


async def open_client(url: str, game: str, token: str) -> tuple[ClientConnection, dict[str, Any]]:
    """Connect to a game and authenticate; the CONNECTED frame."""
    ws = await connect(
        f"{url}/v1/games/{game}",
        compression=None,
        max_size=2**20,
        ping_interval=None,
        open_timeout=30,
        close_timeout=2,
    )
    await ws.send(orjson.dumps({"type": "CONNECT", "id": "c", "token": token}).decode())
    while True:
        frame = orjson.loads(await asyncio.wait_for(ws.recv(), 30))
        if frame.get("re") == "c":
            if frame["type"] != "CONNECTED":
                raise RuntimeError(f"CONNECT refused: {frame}")
            return ws, frame


async def _closed_loop_worker(
    url: str, secret: str, clients: list[tuple[str, str]], *, ready: Any, go: Any
) -> dict[str, Any]:
    result = await _closed_loop_multi([url], secret, clients, ready=ready, go=go)
    per_server: dict[str, Any] = result["per_server"][0]
    return {**per_server, "cpu_s": result["cpu_s"]}


async def _closed_loop_multi(
    urls: list[str], secret: str, clients: list[tuple[str, str]], *, ready: Any, go: Any
) -> dict[str, Any]:
    """The closed-loop clients `clients` against each server of `urls` (the same clients
    against each, in one process and one event loop: the concurrent A/B uses it)."""
    opened = [
        await asyncio.gather(
            *(
                open_client(url, game, mint_token(secret, player, "player", [game]))
                for game, player in clients
            )
        )
        for url in urls
    ]
    ready.put(("ready", sum(len(o) for o in opened)))
    warm, start, end = await wait_plan(go)
    tallies: list[dict[str, Any]] = [{"acks": 0, "latencies_ns": [], "errors": {}} for _ in urls]
    cpu_marks: list[float] = []

    async def client(ws: ClientConnection, player: str, tally: dict[str, Any]) -> None:
        prefix = '{"type":"STATE_UPDATE","id":"'
        suffix = '","updates":{"score_deltas":{"' + player + '":1}}}'
        latencies: list[int] = tally["latencies_ns"]
        errors: dict[str, int] = tally["errors"]
        seq = 0
        await asyncio.sleep(max(0.0, (warm - now_ns()) / 1e9))
        while True:
            sent = now_ns()
            if sent >= end:
                break
            seq += 1
            mid = str(seq)
            await ws.send(prefix + mid + suffix)
            while True:
                frame = orjson.loads(await ws.recv(decode=False))
                if frame.get("re") == mid:
                    break
            got = now_ns()
            if frame["type"] != "ACK":
                code = frame.get("code", frame["type"])
                errors[code] = errors.get(code, 0) + 1
                continue
            if start <= got < end:
                tally["acks"] += 1
            if sent >= start and got < end:
                latencies.append(got - sent)

    marker = asyncio.create_task(mark_cpu((start, end), cpu_marks))
    await asyncio.gather(
        *(
            client(ws, frame["player_id"], tally)
            for conns, tally in zip(opened, tallies, strict=True)
            for ws, frame in conns
        ),
    )
    await marker
    await asyncio.gather(
        *(ws.close() for conns in opened for ws, _ in conns), return_exceptions=True
    )
    return {"per_server": tallies, "cpu_s": cpu_marks[1] - cpu_marks[0]}


async def _sender_worker(
    url: str, secret: str, game: str, rate: float, *, ready: Any, go: Any
) -> dict[str, Any]:
    ws, _ = await open_client(url, game, mint_token(secret, "sender", "player", [game]))
    ready.put(("ready", 1))
    warm, start, end = await wait_plan(go)
    sent_at: dict[str, int] = {}
    version_of: dict[str, int] = {}
    acked_at: dict[str, int] = {}
    errors: dict[str, int] = {}
    cpu_marks: list[float] = []
    done = asyncio.Event()

    async def reader() -> None:
        while True:
            try:
                frame = orjson.loads(await ws.recv(decode=False))
            except Exception:
                return
            if frame["type"] == "ACK":
                acked_at[frame["re"]] = now_ns()
                version_of[frame["re"]] = frame["version"]
                if done.is_set() and len(version_of) >= len(sent_at):
                    return
            elif frame["type"] == "ERROR":
                errors[frame["code"]] = errors.get(frame["code"], 0) + 1

    task = asyncio.create_task(reader())
    period = int(1e9 / rate)
    tick = warm
    seq = 0
    marks = [start, end]
    while tick < end:
        while marks and tick >= marks[0]:
            marks.pop(0)
            cpu_marks.append(times_cpu())
        await asyncio.sleep(max(0.0, (tick - now_ns()) / 1e9))
        seq += 1
        mid = f"u{seq}"
        sent_at[mid] = now_ns()
        await ws.send(
            '{"type":"STATE_UPDATE","id":"' + mid + '","updates":{"score_deltas":{"sender":1}}}'
        )
        tick += period
    cpu_marks.append(times_cpu())
    done.set()
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(task, 5)
    await ws.close()
    sends = [
        (sent_at[mid], version_of[mid], acked_at[mid])
        for mid in sent_at
        if mid in version_of and start <= sent_at[mid] < end
    ]
    return {
        "sends": sends,
        "unacked": len(sent_at) - len(version_of),
        "errors": errors,
        "cpu_s": cpu_marks[-1] - cpu_marks[0] if len(cpu_marks) >= 2 else 0.0,
    }


async def _receiver_worker(
    url: str, secret: str, game: str, names: list[str], *, ready: Any, go: Any
) -> dict[str, Any]:
    opened = await asyncio.gather(
        *(open_client(url, game, mint_token(secret, name, "observer", [game])) for name in names)
    )
    ready.put(("ready", len(opened)))
    _warm, start, end = await wait_plan(go)
    # per receiver: version -> receipt time (kept for every broadcast; filtered by the parent)
    receipts: list[dict[int, int]] = [{} for _ in opened]
    cpu_marks: list[float] = []
    stop_at = end + int(2e9)  # the last broadcasts of the window still arrive

    async def receiver(ws: ClientConnection, seen: dict[int, int]) -> None:
        while True:
            timeout = (stop_at - now_ns()) / 1e9
            if timeout <= 0:
                return
            try:
                raw = await asyncio.wait_for(ws.recv(decode=False), timeout)
            except TimeoutError:
                return
            got = now_ns()
            frame = orjson.loads(raw)
            if frame["type"] == "STATE":
                seen[frame["version"]] = got

    marker = asyncio.create_task(mark_cpu((start, end), cpu_marks))
    await asyncio.gather(
        *(receiver(ws, seen) for (ws, _), seen in zip(opened, receipts, strict=True))
    )
    await marker
    await asyncio.gather(*(ws.close() for ws, _ in opened), return_exceptions=True)
    return {"receipts": receipts, "cpu_s": cpu_marks[1] - cpu_marks[0]}


class RawReceiver(RawClient):
    """An observer for the fan-out: a `STATE` frame records its receipt time under its
    version, read from the frame's text (which starts `{"type":"STATE",`: the top-level
    `version` comes before `state`) without a full JSON parse."""

    def __init__(self, token: str, seen: dict[int, int]) -> None:
        super().__init__(token)
        self.seen = seen

    def _message(self, buf: bytes, start: int, end: int, got: int) -> None:
        if buf.startswith(STATE_PREFIX, start):
            # The server writes the top-level `version` before `state` (which has its own).
            at = buf.index(b'"version":', start, end) + 10
            self.seen[int(buf[at : buf.index(b",", at, end)])] = got
            return
        super()._message(buf, start, end, got)


async def _raw_receiver_worker(
    url: str, secret: str, game: str, names: list[str], *, ready: Any, go: Any
) -> dict[str, Any]:
    receipts: list[dict[int, int]] = [{} for _ in names]

    def receiver(name: str, seen: dict[int, int]) -> Callable[[], RawClient]:
        token = mint_token(secret, name, "observer", [game])
        return lambda: RawReceiver(token, seen)

    opened = await asyncio.gather(
        *(open_raw(url, game, receiver(n, seen)) for n, seen in zip(names, receipts, strict=True))
    )
    ready.put(("ready", len(opened)))
    _warm, start, end = await wait_plan(go)
    cpu_marks: list[float] = []
    await mark_cpu((start, end), cpu_marks)
    await asyncio.sleep(max(0.0, (end + int(2e9) - now_ns()) / 1e9))  # the last broadcasts
    for proto in opened:
        if proto.transport is not None:
            proto.transport.close()
    return {"receipts": receipts, "cpu_s": cpu_marks[1] - cpu_marks[0]}


async def _raw_closed_loop_worker(
    url: str, secret: str, clients: list[tuple[str, str]], *, ready: Any, go: Any
) -> dict[str, Any]:
    """`_closed_loop_worker`'s load with `RawPlayer`s (every message a `STATE_UPDATE`)."""
    result = await raw_closed_loop_one(url, secret, clients, 1, ready=ready, go=go)
    return {**result, "acks": result["answered"]}


async def _raw_closed_loop_multi(
    urls: list[str], secret: str, clients: list[tuple[str, str]], *, ready: Any, go: Any
) -> dict[str, Any]:
    """`_closed_loop_multi`'s load with `RawPlayer`s."""
    return await raw_closed_loop(urls, secret, clients, 1, ready=ready, go=go)


def worker_main(kind: str, args: tuple[Any, ...], ready: Any, go: Any, results: Any) -> None:
    """Entry point of a client process: run one worker coroutine, put its result."""
    workers: dict[str, Worker] = {
        "closed_loop": _closed_loop_worker,
        "raw_closed_loop": _raw_closed_loop_worker,
        "raw_closed_loop_multi": _raw_closed_loop_multi,
        "closed_loop_multi": _closed_loop_multi,
        "sender": _sender_worker,
        "receiver": _receiver_worker,
        "raw_receiver": _raw_receiver_worker,
    }
    run_worker(lambda: workers[kind](*args, ready=ready, go=go), ready, results)


# --------------------------------------------------------------------------- orchestration


@dataclass
class Window:
    """What the parent measured around the window."""

    seconds: float
    server_cpu_s: float
    #: CPU of the server's main thread (the event loop) in the window; the rest of
    #: `server_cpu_s` is other threads (aiosqlite's connection threads: SQLite and fsync)
    server_main_thread_cpu_s: float
    #: the kernel's share of `server_cpu_s` (socket writes on loopback, fsync, ...)
    server_sys_cpu_s: float
    machine_busy: float
    metrics_before: dict[str, float] = field(default_factory=dict)
    metrics_after: dict[str, float] = field(default_factory=dict)

    def delta(self, name: str, **labels: str) -> float:
        return metric_sum(self.metrics_after, name, **labels) - metric_sum(
            self.metrics_before, name, **labels
        )


def run_clients(
    srv: ServerProcess,
    jobs: list[tuple[str, tuple[Any, ...]]],
    warmup: float,
    duration: float,
) -> tuple[Window, list[dict[str, Any]]]:
    """Start one process per job, wait until all are connected, run the plan, collect."""
    with client_processes(worker_main, jobs, join_timeout=10) as (ready, gos, results):
        collect(ready, len(jobs), 90, "connect")
        _warm, start, end = send_plan(gos, warmup, duration)
        pid = srv.proc.pid
        sleep_until(start)
        metrics_before = srv.metrics()
        threads0 = thread_cpu_seconds(srv.proc.pid)
        sys0 = proc_user_sys(Path(f"/proc/{pid}/stat"))[1]
        cpu0, (busy0, total0) = srv.cpu(), machine_cpu()
        began = now_ns()
        sleep_until(end)
        cpu1, (busy1, total1) = srv.cpu(), machine_cpu()
        threads1 = thread_cpu_seconds(srv.proc.pid)
        sys1 = proc_user_sys(Path(f"/proc/{pid}/stat"))[1]
        finished = now_ns()
        metrics_after = srv.metrics()
        outputs: list[dict[str, Any]] = collect(results, len(jobs), 60, "load")
        window = Window(
            seconds=(finished - began) / 1e9,
            server_cpu_s=cpu1 - cpu0,
            server_main_thread_cpu_s=threads1.get(pid, 0.0) - threads0.get(pid, 0.0),
            server_sys_cpu_s=sys1 - sys0,
            machine_busy=(busy1 - busy0) / max(1.0, total1 - total0),
            metrics_before=metrics_before,
            metrics_after=metrics_after,
        )
        return window, outputs


def scenario_durable(
    workdir: Path,
    name: str,
    secret: str,
    extra: Sequence[str],
    clients: int,
    games: int,
    procs: int,
    warmup: float,
    duration: float,
    client_kind: str = "raw",
) -> dict[str, Any]:
    """Closed-loop durable updates: acks/s, ACK latency, server CPU per ack (`client_kind`:
    `raw` for `RawPlayer`s, `websockets` for websockets' asyncio client)."""
    per_game = clients // games
    pairs = [(f"g{i // per_game:03d}", f"p{i:03d}") for i in range(clients)]
    worker = "raw_closed_loop" if client_kind == "raw" else "closed_loop"
    with server(workdir, name, secret, [*RATE_ARGS, *extra]) as srv:
        jobs = [(worker, (srv.url, secret, pairs[k::procs])) for k in range(procs)]
        window, outputs = run_clients(srv, jobs, warmup, duration)
        problems = srv.log_problems()
        command = srv.command
    acks = sum(o["acks"] for o in outputs)
    latencies = [x for o in outputs for x in o["latencies_ns"]]
    errors = merge_counts(outputs, "errors")
    server_acks = window.delta("stateshift_server_messages_total", type="STATE_UPDATE", result="ok")
    batches = window.delta("stateshift_server_commit_batch_size_count")
    batched = window.delta("stateshift_server_commit_batch_size_sum")
    commit_s = window.delta("stateshift_server_commit_seconds_sum")
    return {
        "scenario": name,
        "server_args": [*RATE_ARGS, *extra],
        "server_command": " ".join(shlex.quote(c) for c in command),
        "clients": clients,
        "client_kind": client_kind,
        "games": games,
        "client_processes": procs,
        "warmup_s": warmup,
        "window_s": window.seconds,
        "acks": acks,
        "acks_per_s": acks / window.seconds,
        "server_acks": server_acks,
        "ack_latency": latency_summary_ms(latencies),
        "server_cpu_s": window.server_cpu_s,
        "server_cpu_pct_of_one_core": 100 * window.server_cpu_s / window.seconds,
        "server_main_thread_cpu_pct_of_one_core": 100
        * window.server_main_thread_cpu_s
        / window.seconds,
        "server_cpu_per_ack_us": 1e6 * window.server_cpu_s / max(1.0, server_acks),
        "server_sys_cpu_per_ack_us": 1e6 * window.server_sys_cpu_s / max(1.0, server_acks),
        "server_main_thread_cpu_per_ack_us": 1e6
        * window.server_main_thread_cpu_s
        / max(1.0, server_acks),
        "client_cpu_s": sum(o["cpu_s"] for o in outputs),
        "client_cpu_pct_of_one_core": 100 * sum(o["cpu_s"] for o in outputs) / window.seconds,
        "machine_busy_pct": 100 * window.machine_busy,
        "commits": batches,
        "mean_batch": batched / batches if batches else float("nan"),
        "mean_commit_ms": 1e3 * commit_s / batches if batches else float("nan"),
        "client_errors": errors,
        "server_log_problems": problems[:50],
    }


def scenario_fanout(
    workdir: Path,
    secret: str,
    receivers: int,
    rate: float,
    procs: int,
    warmup: float,
    duration: float,
    code: Path = REPO,
    name: str = "fanout",
    receiver_client: str = "raw",
) -> dict[str, Any]:
    """One sender at a fixed rate, `receivers` observers on the same game (`receiver_client`:
    `raw` for `RawReceiver`s, `websockets` for websockets' asyncio client)."""
    game = "fanout"
    names = [f"o{i:03d}" for i in range(receivers)]
    with server(workdir, name, secret, RATE_ARGS, code=code) as srv:
        ctx_jobs: list[tuple[str, tuple[Any, ...]]] = [
            ("sender", (srv.url, secret, game, rate)),
        ]
        kind = "raw_receiver" if receiver_client == "raw" else "receiver"
        ctx_jobs += [(kind, (srv.url, secret, game, names[k::procs])) for k in range(procs)]
        run_loop(create_game(srv.url, secret, game, "sender"))
        window, outputs = run_clients(srv, ctx_jobs, warmup, duration)
        problems = srv.log_problems()
        command = srv.command
    sender, recv_outputs = outputs[0], outputs[1:]
    sends: list[tuple[int, int, int]] = sender["sends"]
    latencies: list[int] = []
    missing = 0
    per_update_worst: list[int] = []
    per_update_first: list[int] = []
    for sent, version, _ in sends:
        worst, first = 0, 2**62
        for out in recv_outputs:
            for seen in out["receipts"]:
                got = seen.get(version)
                if got is None:
                    missing += 1
                    continue
                latencies.append(got - sent)
                worst = max(worst, got - sent)
                first = min(first, got - sent)
        per_update_worst.append(worst)
        per_update_first.append(first)
    frames = window.delta("stateshift_server_broadcast_frames_total")
    updates = window.delta("stateshift_server_messages_total", type="STATE_UPDATE", result="ok")
    return {
        "scenario": "fanout",
        "server_args": list(RATE_ARGS),
        "server_command": " ".join(shlex.quote(c) for c in command),
        "connections": receivers + 1,
        "receivers": receivers,
        "sender_rate_per_s": rate,
        "receiver_processes": procs,
        "receiver_client": receiver_client,
        "warmup_s": warmup,
        "window_s": window.seconds,
        "updates": len(sends),
        "pairs": len(latencies),
        "missing_pairs": missing,
        "unacked": sender["unacked"],
        "client_errors": sender["errors"],
        "fanout_latency": latency_summary_ms(latencies),
        "sender_ack_latency": latency_summary_ms([acked - sent for sent, _, acked in sends]),
        "first_receiver_latency": latency_summary_ms(per_update_first),
        "last_receiver_latency": latency_summary_ms(per_update_worst),
        "server_updates": updates,
        "broadcast_frames": frames,
        "server_cpu_s": window.server_cpu_s,
        "server_cpu_pct_of_one_core": 100 * window.server_cpu_s / window.seconds,
        "server_cpu_per_broadcast_frame_us": 1e6 * window.server_cpu_s / max(1.0, frames),
        "server_sys_cpu_pct": 100 * window.server_sys_cpu_s / max(1e-9, window.server_cpu_s),
        "mean_commit_ms": 1e3
        * window.delta("stateshift_server_commit_seconds_sum")
        / max(1.0, window.delta("stateshift_server_commit_batch_size_count")),
        "commits_over_ms": {
            limit: 1.0
            - window.delta("stateshift_server_commit_seconds_bucket", le=le)
            / max(1.0, window.delta("stateshift_server_commit_seconds_count"))
            for limit, le in (("1", "0.001"), ("2.5", "0.0025"), ("5", "0.005"))
        },
        "server_main_thread_cpu_pct_of_one_core": 100
        * window.server_main_thread_cpu_s
        / window.seconds,
        "server_cpu_per_update_us": 1e6 * window.server_cpu_s / max(1.0, updates),
        "client_cpu_s": sum(o["cpu_s"] for o in outputs),
        "machine_busy_pct": 100 * window.machine_busy,
        "server_log_problems": problems[:50],
    }


async def create_game(url: str, secret: str, game: str, player: str) -> None:
    """Create a game (its first player joins), then leave it: observers can open it."""
    ws, _ = await open_client(url, game, mint_token(secret, player, "player", [game]))
    await ws.close()


# --------------------------------------------------------------------------- report


def key_figure(name: str, result: dict[str, Any]) -> float:
    """The figure a scenario's target is about: rounds are ranked by it."""
    if name == "fanout":
        return float(result["fanout_latency"].get("p99_ms", float("nan")))
    return float(result["server_cpu_per_ack_us"])


def median_round(name: str, runs: list[dict[str, Any]]) -> dict[str, Any]:
    """The round of median key figure (the lower middle one for an even count), with
    every round's key figure (`round_figures`, in the order they ran)."""
    figures = [key_figure(name, r) for r in runs]
    chosen = dict(sorted(runs, key=lambda r: key_figure(name, r))[(len(runs) - 1) // 2])
    chosen["rounds"] = len(runs)
    chosen["round_figures"] = figures
    return chosen


def print_table(results: dict[str, Any]) -> None:
    """The figures as a readable table on stdout."""
    rows: list[tuple[str, str, str]] = []
    durable = results["scenarios"].get("durable")
    batch1 = results["scenarios"].get("batch1")
    fanout = results["scenarios"].get("fanout")

    def fmt(x: float, digits: int = 1) -> str:
        return f"{x:,.{digits}f}"

    for key, label in (("durable", "default batch"), ("batch1", "--max-batch 1")):
        r = results["scenarios"].get(key)
        if not r:
            continue
        lat = r["ack_latency"]
        rows += [
            (f"durable [{label}]", "acks/s", fmt(r["acks_per_s"], 0)),
            (
                f"durable [{label}]",
                "ACK latency p50 / p95 / p99 (ms)",
                f"{fmt(lat['p50_ms'], 2)} / {fmt(lat['p95_ms'], 2)} / {fmt(lat['p99_ms'], 2)}",
            ),
            (f"durable [{label}]", "server CPU per ack (µs)", fmt(r["server_cpu_per_ack_us"])),
            (
                f"durable [{label}]",
                "  of which event-loop thread (µs)",
                fmt(r["server_main_thread_cpu_per_ack_us"]),
            ),
            (
                f"durable [{label}]",
                "  of which kernel/sys time (µs)",
                fmt(r["server_sys_cpu_per_ack_us"]),
            ),
            (
                f"durable [{label}]",
                "server CPU (% of one core)",
                fmt(r["server_cpu_pct_of_one_core"], 0),
            ),
            (
                f"durable [{label}]",
                "client processes CPU (% of one core)",
                fmt(r["client_cpu_pct_of_one_core"], 0),
            ),
            (f"durable [{label}]", "machine busy (% of all cores)", fmt(r["machine_busy_pct"], 0)),
            (f"durable [{label}]", "mean changes per commit", fmt(r["mean_batch"], 1)),
            (f"durable [{label}]", "mean commit time (ms)", fmt(r["mean_commit_ms"], 2)),
        ]
    if durable and batch1:
        cmp = results["group_commit"]
        rows += [
            ("group commit", "throughput default / batch-1", f"{cmp['throughput_ratio']:.2f}x"),
            ("group commit", "CPU per ack batch-1 / default", f"{cmp['cpu_per_ack_ratio']:.2f}x"),
        ]
    if fanout:
        lat = fanout["fanout_latency"]
        worst = fanout["last_receiver_latency"]
        first = fanout["first_receiver_latency"]
        ack = fanout["sender_ack_latency"]
        rows += [
            (
                "fan-out",
                "connections / updates/s",
                f"{fanout['connections']} / {fanout['sender_rate_per_s']:.0f}",
            ),
            (
                "fan-out",
                "send→receipt p50 / p99 (ms), all pairs",
                f"{fmt(lat['p50_ms'], 2)} / {fmt(lat['p99_ms'], 2)}",
            ),
            (
                "fan-out",
                "send→sender's ACK p50 / p99 (ms)",
                f"{fmt(ack['p50_ms'], 2)} / {fmt(ack['p99_ms'], 2)}",
            ),
            (
                "fan-out",
                "send→first receiver p50 / p99 (ms)",
                f"{fmt(first['p50_ms'], 2)} / {fmt(first['p99_ms'], 2)}",
            ),
            (
                "fan-out",
                "send→last receiver p50 / p99 (ms)",
                f"{fmt(worst['p50_ms'], 2)} / {fmt(worst['p99_ms'], 2)}",
            ),
            (
                "fan-out",
                "pairs measured / missing",
                f"{fanout['pairs']} / {fanout['missing_pairs']}",
            ),
            (
                "fan-out",
                "server CPU per broadcast frame (µs)",
                fmt(fanout["server_cpu_per_broadcast_frame_us"], 2),
            ),
            ("fan-out", "server CPU per update (µs)", fmt(fanout["server_cpu_per_update_us"], 0)),
            (
                "fan-out",
                "  kernel/sys share of server CPU (%)",
                fmt(fanout["server_sys_cpu_pct"], 0),
            ),
            ("fan-out", "mean commit time (ms)", fmt(fanout["mean_commit_ms"], 2)),
            (
                "fan-out",
                "commits over 1 / 2.5 / 5 ms (%)",
                " / ".join(fmt(100 * v, 1) for v in fanout["commits_over_ms"].values()),
            ),
            ("fan-out", "client processes CPU (s)", fmt(fanout["client_cpu_s"], 2)),
        ]
    widths = [max(len(r[i]) for r in rows) for i in range(3)]
    print()
    rounds = max(r.get("rounds", 1) for r in results["scenarios"].values())
    if rounds > 1:
        print(f"each scenario's median round of {rounds} (by its target's figure):")
    print(
        " | ".join(h.ljust(w) for h, w in zip(("scenario", "figure", "value"), widths, strict=True))
    )
    print("-+-".join("-" * w for w in widths))
    for row in rows:
        print(f"{row[0].ljust(widths[0])} | {row[1].ljust(widths[1])} | {row[2].rjust(widths[2])}")
    print()
    print_targets(results["targets"])
    print_problems(results["scenarios"], "server_log_problems", "server log")


def print_profiles() -> None:
    """Top entries of each profile written under STATESHIFT_BENCH_PROFILE."""
    profile_dir = os.environ.get(PROFILE_ENV)
    if not profile_dir:
        return
    for path in sorted(Path(profile_dir).glob("*.prof")):
        print(f"\n== cProfile of the server, {path.name} (top 25 by own time)")
        stats = pstats.Stats(str(path))
        stats.sort_stats("tottime").print_stats(25)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n", 1)[0])
    parser.add_argument("--quick", action="store_true", help="short windows (smoke run)")
    parser.add_argument(
        "--scenario",
        action="append",
        choices=("durable", "batch1", "fanout"),
        help="run only these (repeat); default: all",
    )
    parser.add_argument("--client-processes", type=int, default=2)
    parser.add_argument(
        "--fanout-receivers",
        choices=("raw", "websockets"),
        default="raw",
        help="fan-out observers: raw sockets timestamped on read (default) or websockets' client",
    )
    parser.add_argument(
        "--durable-clients",
        choices=("raw", "websockets"),
        default="raw",
        help="durable players: raw sockets driven from data_received (default) or websockets' "
        "client (one task per player: the client processes then use about a core)",
    )
    parser.add_argument(
        "--rounds",
        type=int,
        default=3,
        help="runs of each scenario, interleaved; the report is each scenario's median round "
        "(by its target's figure), with every round's figure (default 3)",
    )
    parser.add_argument("--json", type=Path, default=DEFAULT_JSON, help="where to write results")
    parser.add_argument("--no-json", action="store_true", help="do not write the JSON file")
    args = parser.parse_args(argv)
    if args.rounds < 1:
        parser.error("--rounds must be at least 1")
    warmup, duration = (1.0, 3.0) if args.quick else (3.0, 10.0)
    chosen = args.scenario or ["durable", "batch1", "fanout"]
    secret = secrets.token_hex(32)
    results: dict[str, Any] = {
        "benchmark": "new state server",
        "command": command_line("server_bench.py", argv),
        "quick": args.quick,
        "profiled": bool(os.environ.get(PROFILE_ENV)),
        "started_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "git_commit": git_commit(),
        "hot_modules": hot_modules(),
        "machine": machine_info(),
        "scenarios": {},
        "targets": [],
    }
    procs = args.client_processes
    done: dict[str, list[dict[str, Any]]] = {name: [] for name in chosen}
    with tempfile.TemporaryDirectory(prefix="stateshift-bench-") as tmp:
        workdir = Path(tmp)
        for round_no, name in [(k, n) for k in range(args.rounds) for n in chosen]:
            print(
                f"== {name} (round {round_no + 1}/{args.rounds}): warm-up {warmup:g} s, "
                f"window {duration:g} s …",
                flush=True,
            )
            if name in ("durable", "batch1"):
                extra = ["--max-batch", "1"] if name == "batch1" else []
                done[name].append(
                    scenario_durable(
                        workdir,
                        name,
                        secret,
                        extra,
                        100,
                        50,
                        procs,
                        warmup,
                        duration,
                        client_kind=args.durable_clients,
                    )
                )
            else:
                done[name].append(
                    scenario_fanout(
                        workdir,
                        secret,
                        99,
                        50.0,
                        procs,
                        warmup,
                        duration,
                        receiver_client=args.fanout_receivers,
                    )
                )
    for name, runs in done.items():
        results["scenarios"][name] = median_round(name, runs)
    sc = results["scenarios"]
    if "durable" in sc and "batch1" in sc:
        results["group_commit"] = {
            "throughput_ratio": sc["durable"]["acks_per_s"] / max(1e-9, sc["batch1"]["acks_per_s"]),
            "cpu_per_ack_ratio": sc["batch1"]["server_cpu_per_ack_us"]
            / max(1e-9, sc["durable"]["server_cpu_per_ack_us"]),
        }
    if "durable" in sc:
        runs = sc["durable"]["round_figures"]
        results["targets"].append(
            target(
                "server CPU per acked durable update (µs)",
                statistics.median(runs),
                TARGET_CPU_PER_ACK_US,
                runs=runs,
            )
        )
    if "fanout" in sc:
        runs = sc["fanout"]["round_figures"]
        results["targets"].append(
            target(
                "broadcast fan-out p99 (ms)",
                statistics.median(runs),
                TARGET_FANOUT_P99_MS,
                strict=True,
                runs=runs,
            )
        )
    print_table(results)
    print_profiles()
    if not args.no_json:
        write_json(args.json, results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
