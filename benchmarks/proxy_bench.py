"""Benchmark of the mirroring proxy (`stateshift proxy`) against nginx. Not a test; never in CI.

    .venv/bin/python benchmarks/proxy_bench.py            # full run (about 3 minutes)
    .venv/bin/python benchmarks/proxy_bench.py --quick    # smoke run (about 1.5 minutes)

One run on 127.0.0.1 only, against the same two upstream subprocesses (the reference old
server, `stateshift legacy`, and the new server, `stateshift serve`, both with the rate limit
raised), started once for the whole run:

1. Relay cost. For each of
   `direct` (clients connect to the old server itself),
   `nginx` (Debian's nginx, 1 worker process, as a WebSocket pass-through to the old server),
   `passthrough` (`stateshift proxy --no-mirror`, old primary) and
   `mirror` (`stateshift proxy`, old primary, new shadow),
   10 clients in separate client processes run a closed loop of small frames (9 in 10 a
   HEARTBEAT, 1 in 10 a STATE_UPDATE: wait for the answer with the same id, send the next);
   the clients are `benchmarks/rawclient.py`'s `RawPlayer`s (`--load-clients websockets`:
   websockets' asyncio client, which costs the shared cores about twice as much).
   Reports client messages/s, round-trip p50/p99, and the relay's CPU time per client
   message: user + system time of the relay process(es) (nginx master + worker, or the proxy)
   over the measured window, divided by the client messages answered in the window. Ratios
   are against nginx.
2. Memory per idle client. 10,000 clients (fewer when the file-descriptor limit cannot hold
   them: see `fd_capacity`) connect through the proxy in pass-through and then in mirror mode,
   each sends CONNECT and gets CONNECTED, then idles; the proxy's RSS after (all clients and,
   in mirror mode, all shadow connections open) minus before, divided by the clients.

Every subprocess (servers, nginx, proxies, client processes) is stopped when its part ends
(SIGTERM, then SIGKILL); the whole run is bounded by deadlines on every wait.

Writes `benchmarks/results/proxy.json` (`--json PATH` to change it).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import resource
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
from websockets.asyncio.client import ClientConnection, connect

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:  # run as a script: make `stateshift` and the sibling importable
    sys.path.insert(0, str(REPO))

from benchmarks.common import (  # noqa: E402
    LOG_PROBLEMS,
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
    proc_user_sys,
    run_worker,
    send_plan,
    sleep_until,
    stop_process,
    target,
    wait_plan,
    write_json,
)
from benchmarks.rawclient import raw_closed_loop_one  # noqa: E402
from stateshift.tokens import mint_token  # noqa: E402

PYTHON = sys.executable
DEFAULT_JSON = REPO / "benchmarks" / "results" / "proxy.json"
SCENARIOS = ("direct", "nginx", "passthrough", "mirror")
#: targets, as ratios against nginx
TARGET_MIRROR_CPU_RATIO = 2.0
TARGET_PASSTHROUGH_CPU_RATIO = 1.2
TARGET_MIRROR_ADDED_P50_RATIO = 1.5
TARGET_MEMORY_KIB_PER_CLIENT = 100.0
#: one message in this many is a STATE_UPDATE, the rest HEARTBEATs
UPDATE_EVERY = 10
#: file descriptors a process keeps for itself (listeners, SQLite, epoll, pipes, ...)
FD_RESERVE = 200


# --------------------------------------------------------------------------- helpers


def raise_nofile() -> int:
    """Raise this process's RLIMIT_NOFILE soft limit to its hard limit; the new limit.

    Children inherit it (and `preexec_fn=raise_nofile` raises it again in each). The hard
    limit itself can only be raised with CAP_SYS_RESOURCE; we try, and keep what we get."""
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    for wanted in (200_000, hard):
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, max(wanted, hard)))
            break
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now (for nginx, which cannot listen on port 0)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def rss_kib(pid: int) -> int:
    """Resident set size of a process in KiB (VmRSS of /proc/PID/status)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for {pid}")


def children_of(pid: int) -> list[int]:
    """Direct children of a process (from /proc/*/stat)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError, ValueError, IndexError):
            raw = (entry / "stat").read_text()
            if int(raw[raw.rindex(")") + 2 :].split()[1]) == pid:
                found.append(int(entry.name))
    return found


def cpu_of(pids: Sequence[int]) -> tuple[float, float]:
    """(user, system) CPU seconds summed over processes."""
    user = system = 0.0
    for pid in pids:
        u, s = proc_user_sys(Path(f"/proc/{pid}/stat"))
        user += u
        system += s
    return user, system


def syscalls_of(pids: Sequence[int]) -> int:
    """Read and write system calls (`syscr` + `syscw` of /proc/PID/io) summed over processes:
    counted exactly, unlike CPU time on a busy machine (epoll waits are not included)."""
    total = 0
    for pid in pids:
        with contextlib.suppress(OSError):
            for line in Path(f"/proc/{pid}/io").read_text().splitlines():
                if line.startswith(("syscr:", "syscw:")):
                    total += int(line.split()[1])
    return total


# --------------------------------------------------------------------------- processes


@dataclass
class Proc:
    """A subprocess whose stdout announced its URLs; stopped by `stop()`."""

    name: str
    proc: subprocess.Popen[str]
    log_path: Path
    lines: dict[str, str] = field(default_factory=dict)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def url(self, prefix: str = "listening on") -> str:
        return self.lines[prefix].split()[-1]

    def port(self, prefix: str = "listening on") -> int:
        return int(self.url(prefix).rstrip("/").rsplit(":", 1)[1])

    def stop(self, timeout: float = 15.0) -> int | None:
        """SIGTERM (graceful), then SIGKILL after `timeout` s; the exit code."""
        return stop_process(self.proc, timeout)

    def log_problems(self) -> list[str]:
        """Lines of the log at WARNING or above (nginx's too), and traceback headers."""
        return log_problems(self.log_path, (*LOG_PROBLEMS, "[error]", "[crit]", "[alert]"))


def _preexec() -> None:
    raise_nofile()


@contextlib.contextmanager
def launched(
    name: str,
    command: Sequence[str],
    workdir: Path,
    secret: str,
    expect: Sequence[str] = ("listening on",),
    startup: float = 30.0,
) -> Iterator[Proc]:
    """Start a subprocess, wait for a stdout line starting with each of `expect`; always stop
    it. Its stderr goes to `workdir/<name>.log`."""
    log_path = workdir / f"{name}.log"
    env = {**os.environ, "STATESHIFT_SECRET": secret, "PYTHONUNBUFFERED": "1"}
    with open(log_path, "w") as log_file:
        proc = subprocess.Popen(
            list(command),
            cwd=REPO,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=log_file,
            text=True,
            preexec_fn=_preexec,
        )
    handle = Proc(name, proc, log_path)
    try:
        if expect:
            _wait_lines(handle, expect, startup)
        yield handle
    finally:
        handle.stop()


def _wait_lines(handle: Proc, expect: Sequence[str], timeout: float) -> None:
    """Read stdout (in a thread) until a line starting with each prefix was seen."""
    done = threading.Event()
    wanted = set(expect)

    def read() -> None:
        assert handle.proc.stdout is not None
        for line in handle.proc.stdout:
            for prefix in list(wanted):
                if line.startswith(prefix):
                    handle.lines[prefix] = line.strip()
                    wanted.discard(prefix)
            if not wanted:
                break
        done.set()
        # keep draining so that the process never blocks on a full pipe
        for _ in handle.proc.stdout:
            pass

    threading.Thread(target=read, daemon=True).start()
    done.wait(timeout)
    if wanted:
        raise RuntimeError(
            f"{handle.name} did not start (exit {handle.proc.poll()}): "
            f"{handle.log_path.read_text(errors='replace')[-2000:]}"
        )


def old_server(workdir: Path, secret: str) -> contextlib.AbstractContextManager[Proc]:
    command = [PYTHON, "-m", "stateshift", "legacy", "--host", "127.0.0.1", "--port", "0"]
    command += ["--data", str(workdir / "old.jsonl"), *RATE_ARGS]
    return launched("old", command, workdir, secret)


def new_server(workdir: Path, secret: str) -> contextlib.AbstractContextManager[Proc]:
    command = [PYTHON, "-m", "stateshift", "serve", "--host", "127.0.0.1", "--port", "0"]
    command += ["--db", str(workdir / "new.db"), *RATE_ARGS]
    return launched("new", command, workdir, secret)


def fast_peer(workdir: Path, secret: str, name: str) -> contextlib.AbstractContextManager[Proc]:
    """A fast protocol peer (`benchmarks/fastpeer.py`) standing in for a server."""
    command = [PYTHON, str(REPO / "benchmarks" / "fastpeer.py"), "--port", "0"]
    return launched(name, command, workdir, secret)


def proxy(
    workdir: Path,
    secret: str,
    name: str,
    old_url: str,
    new_url: str,
    mirror: bool,
    extra: Sequence[str] = (),
) -> contextlib.AbstractContextManager[Proc]:
    command = [PYTHON, "-m", "stateshift", "proxy", "--old", old_url, "--new", new_url, *extra]
    command += ["--state", str(workdir / f"{name}-state.db"), "--primary", "old"]
    command += ["--listen", "127.0.0.1:0", "--admin", "127.0.0.1:0"]
    command += ["--mirror" if mirror else "--no-mirror", "--log-level", "WARNING"]
    return launched(name, command, workdir, secret, expect=("listening on", "admin on"))


NGINX_CONF = """\
worker_processes 1;
pid {dir}/nginx.pid;
error_log {dir}/nginx-error.log warn;
worker_rlimit_nofile {nofile};
events {{ worker_connections {connections}; }}
http {{
    access_log off;
    client_body_temp_path {dir}/body;
    proxy_temp_path {dir}/proxy;
    map $http_upgrade $connection_upgrade {{ default upgrade; "" close; }}
    server {{
        listen 127.0.0.1:{port};
        location / {{
            proxy_pass http://{upstream};
            proxy_http_version 1.1;
            proxy_set_header Upgrade $http_upgrade;
            proxy_set_header Connection $connection_upgrade;
            proxy_set_header Host $host;
            proxy_buffering off;
            proxy_read_timeout 3600s;
            proxy_send_timeout 3600s;
        }}
    }}
}}
"""


@contextlib.contextmanager
def nginx(workdir: Path, upstream: str) -> Iterator[tuple[Proc, str]]:
    """nginx (1 worker) as a WebSocket pass-through to `upstream` (`host:port`); its URL."""
    binary = shutil.which("nginx") or "/usr/sbin/nginx"
    if not Path(binary).exists():
        raise RuntimeError("nginx not found: apt-get update && apt-get install -y nginx")
    conf_dir = workdir / "nginx"
    conf_dir.mkdir(exist_ok=True)
    port = free_port()
    nofile = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    conf = conf_dir / "nginx.conf"
    conf.write_text(
        NGINX_CONF.format(
            dir=conf_dir, port=port, upstream=upstream, nofile=nofile, connections=nofile // 2
        )
    )
    command = [binary, "-c", str(conf), "-p", str(conf_dir), "-g", "daemon off; user root;"]
    with launched("nginx", command, workdir, "", expect=()) as handle:
        deadline = time.monotonic() + 20
        while True:
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 1):
                break
            if handle.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(
                    f"nginx did not start: {(conf_dir / 'nginx-error.log').read_text()[-2000:]}"
                )
            time.sleep(0.05)
        handle.log_path = conf_dir / "nginx-error.log"
        yield handle, f"ws://127.0.0.1:{port}"


# --------------------------------------------------------------------------- client workers


async def open_client(url: str, game: str, token: str) -> ClientConnection:
    """Connect to a game and authenticate (CONNECT → CONNECTED)."""
    ws = await connect(
        f"{url}/v1/games/{game}",
        compression=None,
        max_size=2**20,
        ping_interval=None,
        open_timeout=60,
        close_timeout=2,
        proxy=None,
    )
    await ws.send(orjson.dumps({"type": "CONNECT", "id": "c", "token": token}).decode())
    while True:
        frame = orjson.loads(await asyncio.wait_for(ws.recv(), 60))
        if frame.get("re") == "c":
            if frame["type"] != "CONNECTED":
                raise RuntimeError(f"CONNECT refused: {frame}")
            return ws


async def _closed_loop_worker(
    url: str, secret: str, players: list[str], *, ready: Any, go: Any
) -> dict[str, Any]:
    """Each client on its own game: HEARTBEATs with a STATE_UPDATE every UPDATE_EVERY."""
    opened = await asyncio.gather(
        *(open_client(url, f"g-{p}", mint_token(secret, p, "player", [f"g-{p}"])) for p in players)
    )
    ready.put(("ready", len(opened)))
    warm, start, end = await wait_plan(go)
    latencies: list[int] = []
    answered = 0
    errors: dict[str, int] = {}
    cpu_marks: list[float] = []

    async def client(ws: ClientConnection, player: str) -> None:
        nonlocal answered
        update = '","updates":{"score_deltas":{"' + player + '":1}}}'
        seq = 0
        await asyncio.sleep(max(0.0, (warm - now_ns()) / 1e9))
        while True:
            sent = now_ns()
            if sent >= end:
                break
            seq += 1
            mid = str(seq)
            if seq % UPDATE_EVERY == 0:
                await ws.send('{"type":"STATE_UPDATE","id":"' + mid + update)
            else:
                await ws.send('{"type":"HEARTBEAT","id":"' + mid + '"}')
            while True:
                frame = orjson.loads(await ws.recv(decode=False))
                if frame.get("re") == mid:
                    break
            got = now_ns()
            if frame["type"] == "ERROR":
                code = str(frame.get("code"))
                errors[code] = errors.get(code, 0) + 1
            if start <= got < end:
                answered += 1
            if sent >= start and got < end:
                latencies.append(got - sent)

    marker = asyncio.create_task(mark_cpu((start, end), cpu_marks))
    await asyncio.gather(*(client(ws, p) for ws, p in zip(opened, players, strict=True)))
    await marker
    await asyncio.gather(*(ws.close() for ws in opened), return_exceptions=True)
    return {
        "answered": answered,
        "latencies_ns": latencies,
        "errors": errors,
        "cpu_s": cpu_marks[1] - cpu_marks[0],
    }


async def _idle_worker(
    url: str, secret: str, players: list[str], *, ready: Any, go: Any
) -> dict[str, Any]:
    """Open clients (CONNECTed, then idle) in batches; hold them until told to close."""
    raise_nofile()
    opened: list[ClientConnection] = []
    failures = 0
    for i in range(0, len(players), 100):
        batch = players[i : i + 100]
        results = await asyncio.gather(
            *(
                open_client(url, f"idle-{p}", mint_token(secret, p, "player", [f"idle-{p}"]))
                for p in batch
            ),
            return_exceptions=True,
        )
        for result in results:
            if isinstance(result, BaseException):
                failures += 1
            else:
                opened.append(result)
    ready.put(("ready", len(opened)))
    await asyncio.get_running_loop().run_in_executor(None, go.get, True, 600)
    lost = sum(1 for ws in opened if ws.close_code is not None)
    # Abort rather than close: 10,000 closing handshakes would only slow the cleanup.
    for ws in opened:
        ws.transport.abort()
    return {"opened": len(opened), "failures": failures, "lost_while_idle": lost}


async def _raw_closed_loop_worker(
    url: str, secret: str, players: list[str], interval_ns: int = 0, *, ready: Any, go: Any
) -> dict[str, Any]:
    """`_closed_loop_worker`'s load with `RawPlayer`s (benchmarks/rawclient.py), paced at
    one message per `interval_ns` per player when it is not 0."""
    clients = [(f"g-{p}", p) for p in players]
    return await raw_closed_loop_one(
        url, secret, clients, UPDATE_EVERY, ready=ready, go=go, interval_ns=interval_ns
    )


def worker_main(kind: str, args: tuple[Any, ...], ready: Any, go: Any, results: Any) -> None:
    """Entry point of a client process: run one worker coroutine, put its result."""
    workers: dict[str, Worker] = {
        "closed_loop": _closed_loop_worker,
        "raw_closed_loop": _raw_closed_loop_worker,
        "idle": _idle_worker,
    }
    run_worker(lambda: workers[kind](*args, ready=ready, go=go), ready, results)


# --------------------------------------------------------------------------- scenarios


def measure_relay(
    name: str,
    url: str,
    relay_pids: Sequence[int],
    secret: str,
    clients: int,
    procs: int,
    warmup: float,
    duration: float,
    servers: dict[str, int] | None = None,
    client_kind: str = "raw",
    rate: float = 0.0,
) -> dict[str, Any]:
    """Closed-loop load through `url`; the relay's CPU over the window per client message
    (and each upstream server's, `servers`: name -> pid). `client_kind`: `raw` for
    `RawPlayer`s (benchmarks/rawclient.py), `websockets` for websockets' asyncio client.
    `rate` > 0 (raw players only): paced at that many messages per second in all."""
    servers = servers or {}
    players = [f"{name}-p{i:02d}" for i in range(clients)]
    worker = "raw_closed_loop" if client_kind == "raw" else "closed_loop"
    if rate and client_kind != "raw":
        raise ValueError("a paced load needs the raw players")
    paced = (int(1e9 * clients / rate),) if rate else ()
    jobs = [(worker, (url, secret, players[k::procs], *paced)) for k in range(procs)]
    with client_processes(worker_main, jobs) as (ready, gos, results):
        collect(ready, len(jobs), 90, "connect")
        _warm, start, end = send_plan(gos, warmup, duration)
        sleep_until(start)
        (u0, s0), (busy0, total0), began = cpu_of(relay_pids), machine_cpu(), now_ns()
        calls0 = syscalls_of(relay_pids)
        servers0 = {name: sum(cpu_of([pid])) for name, pid in servers.items()}
        sleep_until(end)
        (u1, s1), (busy1, total1), finished = cpu_of(relay_pids), machine_cpu(), now_ns()
        calls1 = syscalls_of(relay_pids)
        servers1 = {name: sum(cpu_of([pid])) for name, pid in servers.items()}
        outputs = collect(results, len(jobs), 60, "load")
    seconds = (finished - began) / 1e9
    answered = sum(o["answered"] for o in outputs)
    latencies = [x for o in outputs for x in o["latencies_ns"]]
    errors = merge_counts(outputs, "errors")
    relay_cpu = (u1 - u0) + (s1 - s0)
    result: dict[str, Any] = {
        "scenario": name,
        "clients": clients,
        "client_kind": client_kind,
        "client_processes": procs,
        "paced_rate_per_s": rate or None,
        "warmup_s": warmup,
        "window_s": seconds,
        "messages": answered,
        "messages_per_s": answered / seconds,
        "latency": latency_summary_ms(latencies),
        "client_cpu_pct_of_one_core": 100 * sum(o["cpu_s"] for o in outputs) / seconds,
        "machine_busy_pct": 100 * (busy1 - busy0) / max(1.0, total1 - total0),
        "client_errors": errors,
        # the upstream servers' CPU per client message: mirroring makes the shadow work too
        # (on 2 shared cores that is CPU taken from everything else, latency included)
        "server_cpu_per_message_us": {
            name: 1e6 * (servers1[name] - servers0[name]) / max(1, answered) for name in servers
        },
    }
    if relay_pids:
        result.update(
            {
                "relay_pids": list(relay_pids),
                "relay_cpu_s": relay_cpu,
                "relay_cpu_pct_of_one_core": 100 * relay_cpu / seconds,
                "relay_cpu_per_message_us": 1e6 * relay_cpu / max(1, answered),
                "relay_sys_cpu_per_message_us": 1e6 * (s1 - s0) / max(1, answered),
                "relay_syscalls_per_message": (calls1 - calls0) / max(1, answered),
            }
        )
    return result


def median_run(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """The run of median relay CPU per message (median throughput without a relay), with
    the median of every headline figure over all runs and the runs themselves."""

    def median(values: list[float]) -> float:
        ordered = sorted(values)
        mid = len(ordered) // 2
        return ordered[mid] if len(ordered) % 2 else (ordered[mid - 1] + ordered[mid]) / 2

    key = "relay_cpu_per_message_us" if "relay_cpu_per_message_us" in runs[0] else "messages_per_s"
    chosen = dict(sorted(runs, key=lambda r: r[key])[len(runs) // 2])
    chosen["rounds"] = len(runs)
    chosen["median"] = {
        "messages_per_s": median([r["messages_per_s"] for r in runs]),
        "p50_ms": median([r["latency"]["p50_ms"] for r in runs]),
        "p99_ms": median([r["latency"]["p99_ms"] for r in runs]),
    }
    if key == "relay_cpu_per_message_us":
        chosen["median"][key] = median([r[key] for r in runs])
    chosen["runs"] = [
        {
            "messages_per_s": r["messages_per_s"],
            "p50_ms": r["latency"]["p50_ms"],
            "p99_ms": r["latency"]["p99_ms"],
            **({key: r[key]} if key == "relay_cpu_per_message_us" else {}),
        }
        for r in runs
    ]
    return chosen


def fd_capacity(fds_per_client: int) -> int:
    """Clients a proxy process can hold within its RLIMIT_NOFILE (and what it reserves)."""
    soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    return max(0, (soft - FD_RESERVE) // fds_per_client)


def measure_memory(
    workdir: Path,
    secret: str,
    mode: str,
    old_url: str,
    new_url: str,
    wanted: int,
    procs: int,
) -> dict[str, Any]:
    """RSS per idle client of the proxy (pass-through or mirror)."""
    mirror = mode == "mirror"
    fds = 3 if mirror else 2  # client + primary (+ shadow) sockets per client
    clients = min(wanted, fd_capacity(fds))
    players = [f"m{mode[0]}{i:05d}" for i in range(clients)]
    with proxy(workdir, secret, f"proxy-mem-{mode}", old_url, new_url, mirror) as prx:
        url, admin = prx.url(), prx.url("admin on") + "/metrics"
        # warm the code paths (imports, first session) before the baseline
        jobs = [("idle", (url, secret, [f"warm{mode[0]}{k}" for k in range(5)]))]
        with client_processes(worker_main, jobs) as (ready, gos, results):
            collect(ready, 1, 60, "warm-up")
            gos[0].put(True)
            collect(results, 1, 60, "warm-up")
        _wait(lambda: metric_sum(fetch_metrics(admin), "stateshift_proxy_client_connections") == 0)
        before = rss_kib(prx.pid)
        jobs = [("idle", (url, secret, players[k::procs])) for k in range(procs)]
        began = time.monotonic()
        with client_processes(worker_main, jobs) as (ready, gos, results):
            opened = sum(collect(ready, len(jobs), 600, "connect idle clients"))
            connect_s = time.monotonic() - began
            shadows_ok = True
            if mirror:
                shadows_ok = _wait(
                    lambda: (
                        metric_sum(
                            fetch_metrics(admin),
                            "stateshift_proxy_upstream_connections",
                            role="shadow",
                        )
                        >= opened
                    ),
                    within=120,
                )
            time.sleep(1.0)  # let the last handshakes' garbage go
            metrics = fetch_metrics(admin)
            after = rss_kib(prx.pid)
            for go in gos:
                go.put(True)
            outputs = collect(results, len(jobs), 120, "idle clients")
        problems = prx.log_problems()
    return {
        "mode": mode,
        "clients_wanted": wanted,
        "clients": opened,
        "fd_capacity": fd_capacity(fds),
        "connect_failures": sum(o["failures"] for o in outputs),
        "lost_while_idle": sum(o["lost_while_idle"] for o in outputs),
        "connect_s": connect_s,
        "shadow_connections": metric_sum(
            metrics, "stateshift_proxy_upstream_connections", role="shadow"
        ),
        "primary_connections": metric_sum(
            metrics, "stateshift_proxy_upstream_connections", role="primary"
        ),
        "shadows_all_open": shadows_ok,
        "rss_before_kib": before,
        "rss_after_kib": after,
        "kib_per_client": (after - before) / max(1, opened),
        "proxy_log_problems": problems[:20],
    }


def _wait(condition: Any, within: float = 30.0, every: float = 0.25) -> bool:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError):
            if condition():
                return True
        time.sleep(every)
    return False


# --------------------------------------------------------------------------- report


def med(r: dict[str, Any], name: str) -> float:
    """A scenario's median figure over its rounds (its own figure for a single run)."""
    if "median" in r and name in r["median"]:
        return float(r["median"][name])
    return float(r["latency"][name] if name.endswith("_ms") else r[name])


def add_targets(results: dict[str, Any]) -> None:
    sc = results["scenarios"]
    targets = results["targets"]
    ratios: dict[str, Any] = {}
    load = results.get("load", "closed loop")
    suffix = "" if load == "closed loop" else f" ({load})"
    if "nginx" in sc:
        ng = sc["nginx"]
        direct_p50 = med(sc["direct"], "p50_ms") if "direct" in sc else None
        ng_added = med(ng, "p50_ms") - direct_p50 if direct_p50 is not None else None
        for key in ("passthrough", "mirror"):
            if key not in sc:
                continue
            r = sc[key]
            entry = {
                "cpu_per_message": med(r, "relay_cpu_per_message_us")
                / med(ng, "relay_cpu_per_message_us"),
                "throughput": med(r, "messages_per_s") / med(ng, "messages_per_s"),
            }
            if ng_added is not None and direct_p50 is not None:
                added = med(r, "p50_ms") - direct_p50
                entry["added_p50_ms"] = added
                entry["added_p50_vs_nginx"] = added / ng_added if ng_added > 0 else float("inf")
            ratios[key] = entry
        if ng_added is not None:
            ratios["nginx"] = {"added_p50_ms": ng_added}
        for key, limit in (
            ("mirror", TARGET_MIRROR_CPU_RATIO),
            ("passthrough", TARGET_PASSTHROUGH_CPU_RATIO),
        ):
            if key in ratios:
                measured = ratios[key]["cpu_per_message"]
                targets.append(
                    target(f"{key} relay CPU per message ÷ nginx's{suffix}", measured, limit)
                )
        if "mirror" in ratios and "added_p50_vs_nginx" in ratios["mirror"]:
            measured = ratios["mirror"]["added_p50_vs_nginx"]
            targets.append(
                target(
                    f"mirror added client p50 ÷ nginx's added p50{suffix}",
                    measured,
                    TARGET_MIRROR_ADDED_P50_RATIO,
                )
            )
    results["ratios_vs_nginx"] = ratios
    for mode, r in results.get("memory", {}).items():
        targets.append(
            target(
                f"{mode} proxy memory per idle client (KiB, at {r['clients']} clients)",
                r["kib_per_client"],
                TARGET_MEMORY_KIB_PER_CLIENT,
                strict=True,
            )
        )


def servers_cpu(r: dict[str, Any]) -> str:
    """The upstream servers' CPU per message (of the median run), as `old+new`."""
    per = r.get("server_cpu_per_message_us", {})
    if not per:
        return "-"
    return f"{per.get('old', 0):.0f}+{per.get('new', 0):.0f}"


def print_table(results: dict[str, Any]) -> None:
    sc = results["scenarios"]
    ratios = results.get("ratios_vs_nginx", {})
    header = (
        "scenario",
        "msgs/s",
        "p50 ms",
        "p99 ms",
        "relay CPU/msg µs",
        "÷ nginx",
        "added p50 ms",
        "÷ nginx",
        "servers CPU/msg µs (old+new)",
    )
    rows = []
    for key in SCENARIOS:
        if key not in sc:
            continue
        r = sc[key]
        ratio = ratios.get(key, {})
        cpu = med(r, "relay_cpu_per_message_us") if "relay_pids" in r else None
        rows.append(
            (
                key,
                f"{med(r, 'messages_per_s'):,.0f}",
                f"{med(r, 'p50_ms'):.3f}",
                f"{med(r, 'p99_ms'):.3f}",
                "-" if cpu is None else f"{cpu:.1f}",
                f"{ratio['cpu_per_message']:.2f}x" if "cpu_per_message" in ratio else "-",
                f"{ratio['added_p50_ms']:.3f}" if "added_p50_ms" in ratio else "-",
                f"{ratio['added_p50_vs_nginx']:.2f}x" if "added_p50_vs_nginx" in ratio else "-",
                servers_cpu(r),
            )
        )
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]
    print()
    print(" | ".join(h.ljust(w) for h, w in zip(header, widths, strict=True)))
    print("-+-".join("-" * w for w in widths))
    for row in rows:
        print(" | ".join(c.rjust(w) for c, w in zip(row, widths, strict=True)))
    for mode, r in results.get("memory", {}).items():
        print(
            f"memory {mode}: {r['clients']} idle clients, RSS {r['rss_before_kib']} → "
            f"{r['rss_after_kib']} KiB: {r['kib_per_client']:.1f} KiB per client"
            f" (connect failures {r['connect_failures']}, fd capacity {r['fd_capacity']})"
        )
    print()
    print_targets(results["targets"])
    print_problems(sc, "log_problems", "log")


# --------------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n", 1)[0])
    parser.add_argument("--quick", action="store_true", help="short windows (smoke run)")
    parser.add_argument(
        "--scenario",
        action="append",
        choices=SCENARIOS,
        help="run only these relay scenarios (repeat); default: all",
    )
    parser.add_argument(
        "--rounds", type=int, default=3, help="runs of each relay scenario, interleaved"
    )
    parser.add_argument("--clients", type=int, default=10)
    parser.add_argument("--client-processes", type=int, default=2)
    parser.add_argument(
        "--load-clients",
        choices=("raw", "websockets"),
        default="raw",
        help="closed-loop clients: raw sockets driven from data_received (default) or "
        "websockets' client (a task per client: the client processes then take more of the "
        "2 cores than the relays under test)",
    )
    parser.add_argument(
        "--peers",
        choices=("servers", "fast"),
        default="servers",
        help="the upstreams: the real servers (`stateshift legacy` as old, `stateshift serve` "
        "as new; default) or two fast protocol peers (benchmarks/fastpeer.py), as in the "
        "issue's reference figures",
    )
    parser.add_argument(
        "--rate",
        type=float,
        default=0.0,
        help="pace the load at this many client messages per second in all (raw players; "
        "latency counted from each message's slot) instead of a closed loop: the added "
        "latency of each relay below saturation, where the closed loop's is mostly queueing "
        "for the 2 shared cores",
    )
    parser.add_argument(
        "--proxy-arg",
        action="append",
        help="an extra argument for `stateshift proxy` in the relay scenarios (repeat; "
        "e.g. --proxy-arg=--shadow-coalesce-ms --proxy-arg=5)",
    )
    parser.add_argument("--idle-clients", type=int, default=10_000)
    parser.add_argument("--idle-processes", type=int, default=4)
    parser.add_argument("--no-memory", action="store_true", help="skip the idle-client part")
    parser.add_argument("--json", type=Path, default=DEFAULT_JSON, help="where to write results")
    parser.add_argument("--no-json", action="store_true", help="do not write the JSON file")
    args = parser.parse_args(argv)
    warmup, duration = (1.0, 3.0) if args.quick else (2.0, 8.0)
    chosen = args.scenario or list(SCENARIOS)
    nofile = raise_nofile()
    secret = secrets.token_hex(32)
    results: dict[str, Any] = {
        "benchmark": "mirroring proxy vs nginx",
        "command": command_line("proxy_bench.py", argv),
        "quick": args.quick,
        "started_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "git_commit": git_commit(),
        "hot_modules": hot_modules(),
        "git_dirty_proxy": _git_dirty("proxy"),
        "machine": {**machine_info(), "nginx": _nginx_version(), "rlimit_nofile": nofile},
        "upstream_args": list(RATE_ARGS),
        "peers": args.peers,
        "proxy_args": args.proxy_arg or [],
        "load": f"paced, {args.rate:g} messages/s" if args.rate else "closed loop",
        "message_mix": f"1 STATE_UPDATE in {UPDATE_EVERY}, the rest HEARTBEAT",
        "scenarios": {},
        "targets": [],
    }
    with tempfile.TemporaryDirectory(prefix="stateshift-proxy-bench-") as tmp:
        workdir = Path(tmp)
        if args.peers == "fast":
            old_cm, new_cm = fast_peer(workdir, secret, "old"), fast_peer(workdir, secret, "new")
        else:
            old_cm, new_cm = old_server(workdir, secret), new_server(workdir, secret)
        with old_cm as old, new_cm as new:
            old_url, new_url = old.url(), new.url()
            upstream = old_url.removeprefix("ws://")
            runs: dict[str, list[dict[str, Any]]] = {name: [] for name in chosen}
            for round_no, name in [(k, n) for k in range(args.rounds) for n in chosen]:
                print(
                    f"== {name} (round {round_no + 1}/{args.rounds}): "
                    f"warm-up {warmup:g} s, window {duration:g} s …",
                    flush=True,
                )
                load = (secret, args.clients, args.client_processes, warmup, duration)
                kind = args.load_clients
                pids = {"old": old.pid, "new": new.pid}
                if name == "direct":
                    r = measure_relay(
                        name, old_url, [], *load, servers=pids, client_kind=kind, rate=args.rate
                    )
                    r["log_problems"] = []
                elif name == "nginx":
                    with nginx(workdir, upstream) as (ngx, url):
                        workers = children_of(ngx.pid)
                        r = measure_relay(
                            name,
                            url,
                            [ngx.pid, *workers],
                            *load,
                            servers=pids,
                            client_kind=kind,
                            rate=args.rate,
                        )
                        r["nginx_workers"] = len(workers)
                        r["log_problems"] = ngx.log_problems()[:20]
                else:
                    mirror = name == "mirror"
                    extra = args.proxy_arg or []
                    with proxy(
                        workdir, secret, f"proxy-{name}", old_url, new_url, mirror, extra
                    ) as prx:
                        r = measure_relay(
                            name,
                            prx.url(),
                            [prx.pid],
                            *load,
                            servers=pids,
                            client_kind=kind,
                            rate=args.rate,
                        )
                        metrics = fetch_metrics(prx.url("admin on") + "/metrics")
                        r["proxy_metrics"] = {
                            k: v
                            for k, v in metrics.items()
                            if k.startswith(
                                (
                                    "stateshift_proxy_frames_total",
                                    "stateshift_proxy_shadow_drops_total",
                                    "stateshift_proxy_spliced",
                                )
                            )
                            and v
                        }
                        r["log_problems"] = prx.log_problems()[:20]
                runs[name].append(r)
            for name, done in runs.items():
                results["scenarios"][name] = median_run(done)
            if not args.no_memory:
                results["memory"] = {}
                for mode in ("passthrough", "mirror"):
                    print(f"== memory, {mode}: {args.idle_clients} idle clients …", flush=True)
                    results["memory"][mode] = measure_memory(
                        workdir,
                        secret,
                        mode,
                        old_url,
                        new_url,
                        args.idle_clients,
                        args.idle_processes,
                    )
            results["upstream_log_problems"] = {
                "old": old.log_problems()[:20],
                "new": new.log_problems()[:20],
            }
    add_targets(results)
    print_table(results)
    if not args.no_json:
        write_json(args.json, results)
    return 0


def _git_dirty(path: str) -> bool | None:
    with contextlib.suppress(OSError):
        out = subprocess.run(
            ["git", "status", "--porcelain", "--", path],
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=10,
        )
        return bool(out.stdout.strip())
    return None


def _nginx_version() -> str | None:
    with contextlib.suppress(OSError):
        out = subprocess.run(
            [shutil.which("nginx") or "/usr/sbin/nginx", "-v"],
            capture_output=True,
            text=True,
            timeout=10,
        )
        return (out.stderr or out.stdout).strip() or None
    return None


if __name__ == "__main__":
    sys.exit(main())
