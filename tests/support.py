"""Shared test support: one scalable timeout, condition waits and server subprocesses.

Timing never decides a test: waits are for conditions, bounded by `timeout(base)`, which
`STATESHIFT_TEST_TIMEOUT_SCALE` multiplies on slow machines.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

SCALE = float(os.environ.get("STATESHIFT_TEST_TIMEOUT_SCALE", "1"))
TEST_SECRET = "test-secret-shared-by-old-and-new-servers"
LISTENING = re.compile(r"listening on (ws://\S+)")
ADMIN_LINE = re.compile(r"admin on (http://\S+)")
ROOT = Path(__file__).resolve().parent.parent


def timeout(base: float = 10.0) -> float:
    """A generous, scalable bound for waiting on a condition (seconds)."""
    return base * SCALE


async def wait_until(
    condition: Callable[[], bool | Awaitable[bool]],
    *,
    within: float | None = None,
    every: float = 0.02,
    what: str = "condition",
) -> None:
    """Poll `condition` until it holds; fail the test after `within` seconds (scaled)."""
    deadline = time.monotonic() + (within if within is not None else timeout())
    while True:
        result = condition()
        if not isinstance(result, bool):
            result = await result
        if result:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(every)


def cli_env(**extra: str) -> dict[str, str]:
    """Environment for a `stateshift` subprocess: the test secret, unbuffered output."""
    env = dict(os.environ)
    env["STATESHIFT_SECRET"] = TEST_SECRET
    env["PYTHONUNBUFFERED"] = "1"
    env.update(extra)
    return env


class ServerProcess:
    """A `stateshift …` server started as a subprocess on port 0.

    The server prints `listening on ws://HOST:PORT` once it accepts connections; that line
    gives the URL. Output goes to a log file so a failing test can show it.
    """

    def __init__(self, args: Sequence[str], log_path: Path, env: dict[str, str] | None = None):
        self.args = [sys.executable, "-m", "stateshift", *args]
        self.log_path = log_path
        self.env = env or cli_env()
        self.proc: subprocess.Popen[bytes] | None = None
        self.url = ""
        #: listening lines printed so far (one per start: a restart appends to the log)
        self.starts = 0

    def start(self, within: float | None = None) -> str:
        """Start the process and wait for its listening line; return its ws:// URL."""
        before = len(LISTENING.findall(self.output()))
        log = self.log_path.open("ab")
        self.proc = subprocess.Popen(
            self.args, stdout=log, stderr=subprocess.STDOUT, env=self.env, cwd=ROOT
        )
        log.close()
        deadline = time.monotonic() + (within if within is not None else timeout(20))
        while time.monotonic() < deadline:
            # a restart appends to the same log: wait for a listening line of this start
            matches = LISTENING.findall(self.output())
            if len(matches) > before:
                self.url = matches[-1]
                self.starts = len(matches)
                return self.url
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited early:\n{self.output()}")
            time.sleep(0.02)
        raise RuntimeError(f"server did not start listening:\n{self.output()}")

    def output(self) -> str:
        """Everything the process printed so far."""
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def kill(self) -> None:
        """SIGKILL: the process gets no chance to flush or close anything."""
        if self.proc and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=timeout(10))

    def terminate(self, sig: int = signal.SIGTERM) -> int:
        """Send `sig` and wait for the exit; return the exit code."""
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            return self.proc.wait(timeout=timeout(15))
        except subprocess.TimeoutExpired:
            self.proc.kill()
            raise

    def stop(self) -> None:
        """Stop quietly (used by fixtures' clean-up)."""
        if self.proc and self.proc.poll() is None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.terminate()
            self.kill()


def proxy_args(
    old_url: str,
    new_url: str,
    state: Path,
    *extra: str,
    listen: str = "127.0.0.1:0",
    admin: str = "127.0.0.1:0",
) -> list[str]:
    """The arguments of a `stateshift proxy` subprocess (loopback, port 0 by default)."""
    return [
        *("proxy", "--old", old_url, "--new", new_url),
        *("--listen", listen, "--admin", admin, "--state", str(state)),
        *extra,
    ]


def admin_url(proxy: ServerProcess, within: float | None = None) -> str:
    """The control-plane URL a started proxy printed (its newest start): the proxy prints
    it just after its listening line, so wait for it rather than race it."""
    deadline = time.monotonic() + (within if within is not None else timeout())
    while True:
        found = ADMIN_LINE.findall(proxy.output())
        if len(found) >= proxy.starts:
            return str(found[-1])
        if time.monotonic() > deadline:
            raise RuntimeError(f"no admin line:\n{proxy.output()}")
        time.sleep(0.02)


@contextlib.contextmanager
def running(args: Sequence[str], log_path: Path, **kwargs: Any) -> Iterator[ServerProcess]:
    """Context manager: a started server subprocess, stopped on exit."""
    server = ServerProcess(args, log_path, **kwargs)
    try:
        server.start()
        yield server
    finally:
        server.stop()


def cli_outcome(
    args: list[str], tmp_path: Path, name: str, **env: str
) -> tuple[str, int | None, str, str]:
    """Run `stateshift …` until it exits or prints its listening line: ("exited", code,
    stdout, stderr) or ("listening", None, stdout, stderr). The process is gone on return
    (killed if it still ran: a hang fails the test after a generous bound)."""
    out_path, err_path = tmp_path / f"{name}.out", tmp_path / f"{name}.err"
    with out_path.open("wb") as out, err_path.open("wb") as err:
        proc = subprocess.Popen(
            [sys.executable, "-m", "stateshift", *args],
            stdout=out,
            stderr=err,
            env=cli_env(COLUMNS="200", **env),
            cwd=ROOT,
        )
    try:
        deadline = time.monotonic() + timeout(30)
        while True:
            code = proc.poll()
            stdout = out_path.read_text(errors="replace")
            stderr = err_path.read_text(errors="replace")
            if code is not None:
                return "exited", code, stdout, stderr
            if LISTENING.search(stdout):
                return "listening", None, stdout, stderr
            if time.monotonic() > deadline:
                raise AssertionError(f"neither exited nor listened (killed):\n{stdout}\n{stderr}")
            time.sleep(0.02)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=timeout(10))
