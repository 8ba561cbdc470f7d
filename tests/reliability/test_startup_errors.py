"""Start-up errors of `stateshift serve` and `stateshift proxy`, run as a user runs them.

Each test names the bug it shows and failed before its fix: a port in use left `serve`
alive for ever (SIGTERM ignored) after a traceback; option values outside their meaningful
range started the servers (`--max-batch 0` spun at 100 % CPU without acknowledging
anything, `--port 99999` listened on another port, `--shadow-buffer -1` silently turned
mirroring off), and malformed upstream URLs started a proxy that failed every client.

Timing never decides a test: a process is watched until it exits or prints its listening
line, and one that does neither within a generous bound is killed and the test fails.
"""

from __future__ import annotations

import asyncio
import socket
import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.proxy.conftest import start_legacy, start_new
from tests.support import cli_outcome, proxy_args

#: upstreams for a proxy that must refuse its options before it connects anywhere
OLD, NEW = "ws://127.0.0.1:9", "ws://127.0.0.1:10"


def assert_usage_error(result: tuple[str, int | None, str, str], *words: str) -> None:
    """Refused before starting: exit 2, no traceback, the words named."""
    kind, code, stdout, stderr = result
    assert kind == "exited", f"it started anyway:\n{stdout}\n{stderr}"
    assert code == 2, f"exit {code}:\n{stdout}\n{stderr}"
    assert "Traceback" not in stdout + stderr, stderr
    for word in words:
        assert word in stderr, stderr


@pytest.fixture
def busy_port() -> Iterator[int]:
    """A TCP port on 127.0.0.1 another socket listens on."""
    holder = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        yield holder.getsockname()[1]
    finally:
        holder.close()


# ----------------------------------------------------------------- serve: cannot listen


def test_serve_on_a_port_in_use_says_so_and_exits(tmp_path: Path, busy_port: int):
    """`stateshift serve --port <in use>`: `start` opened the database and started the
    writer before listening failed, outside the try/finally that stops the server, so the
    aiosqlite thread was never closed: a rich traceback, then a process that SIGINT and
    SIGTERM could not stop. Now one error line and exit 1, the database closed."""
    db = tmp_path / "busy.db"
    args = ["serve", "--host", "127.0.0.1", "--port", str(busy_port), "--db", str(db)]
    kind, code, stdout, stderr = cli_outcome(args, tmp_path, "busy")
    assert kind == "exited", f"it started anyway:\n{stdout}\n{stderr}"
    assert code == 1, f"exit {code}:\n{stdout}\n{stderr}"
    assert "Traceback" not in stdout + stderr, stderr
    lines = stderr.strip().splitlines()
    assert len(lines) == 1, stderr
    assert lines[0].startswith(f"error: cannot listen on 127.0.0.1:{busy_port}: "), stderr
    assert "address already in use" in lines[0], stderr
    # closed, not abandoned: the last connection's close checkpoints and removes the WAL
    assert not Path(f"{db}-wal").exists()
    with sqlite3.connect(db) as check:
        assert check.execute("PRAGMA integrity_check").fetchone() == ("ok",)
    check.close()


def test_serve_on_an_address_not_on_this_machine_says_so_and_exits(tmp_path: Path):
    """The same bug for an address that cannot be bound (192.0.2.1, TEST-NET-1: never a
    local address): a traceback and a process that never ends."""
    args = ["serve", "--host", "192.0.2.1", "--port", "0", "--db", str(tmp_path / "far.db")]
    kind, code, stdout, stderr = cli_outcome(args, tmp_path, "far")
    assert kind == "exited", f"it started anyway:\n{stdout}\n{stderr}"
    assert code == 1, f"exit {code}:\n{stdout}\n{stderr}"
    assert "Traceback" not in stdout + stderr, stderr
    lines = stderr.strip().splitlines()
    assert len(lines) == 1, stderr
    assert lines[0].startswith("error: cannot listen on 192.0.2.1:0: "), stderr


# ----------------------------------------------------------------- bounds of the options


@pytest.mark.parametrize(
    ("option", "value"),
    [
        ("--max-batch", "0"),
        ("--max-batch", "-1"),
        ("--port", "99999"),
        ("--port", "-1"),
        ("--rate", "0"),
        ("--burst", "0"),
        ("--connect-timeout", "0"),
        ("--idle-timeout", "0"),
        ("--ping-interval", "0"),
    ],
)
def test_serve_refuses_an_option_out_of_range(tmp_path: Path, option: str, value: str):
    """`--max-batch 0` started a server whose writer committed empty batches in a loop
    (100 % CPU, nothing acknowledged, SIGTERM never served); `--port 99999` listened on
    34463; the others started a server that closed or pinged every connection at once."""
    args = ["serve", "--port", "0", "--db", str(tmp_path / "s.db"), option, value]
    assert_usage_error(cli_outcome(args, tmp_path, "range"), option)


@pytest.mark.parametrize(
    ("option", "value"),
    [
        ("--listen", "127.0.0.1:99999"),
        ("--admin", "127.0.0.1:65536"),
        ("--shadow-buffer", "-1"),
        ("--shadow-buffer", "0"),
        ("--gap-timeout", "0"),
        ("--answer-timeout", "-1"),
        ("--pair-timeout", "0"),
        ("--sweep-interval", "-1"),
        ("--shadow-coalesce-ms", "-1"),
    ],
)
def test_proxy_refuses_an_option_out_of_range(tmp_path: Path, option: str, value: str):
    """`--listen 127.0.0.1:99999` listened on another port (`host_port` only checked that
    the port was digits); `--shadow-buffer -1` silently turned mirroring off; the timeouts
    at 0 or below, a negative sweep interval or coalescing delay started a proxy anyway."""
    args = proxy_args(OLD, NEW, tmp_path / "p.db")
    assert_usage_error(cli_outcome([*args, option, value], tmp_path, "range"), option)


# ----------------------------------------------------------------- proxy: upstream URLs


@pytest.mark.parametrize(
    ("option", "url"),
    [
        ("--old", "ws://"),
        ("--old", "ws://[::1"),
        ("--old", "ws://127.0.0.1:99999"),
        ("--old", "ws://127.0.0.1:port"),
        ("--new", "ws://:8765"),
        ("--new", "ws://[::1]:70000"),
    ],
)
def test_proxy_refuses_a_malformed_upstream_url(tmp_path: Path, option: str, url: str):
    """A URL with no host, a broken IPv6 address or a port out of range passed the
    `startswith("ws://")` check: the proxy started, and every client's session then failed
    with a logged traceback."""
    old, new = (url, NEW) if option == "--old" else (OLD, url)
    result = cli_outcome(proxy_args(old, new, tmp_path / "p.db"), tmp_path, "url")
    assert_usage_error(result, f"error: {option} is not a valid ws:// URL: ")
    assert len(result[3].strip().splitlines()) == 1, result[3]


async def test_a_proxy_whose_secret_the_servers_refuse_does_not_start(tmp_path: Path):
    """A proxy started with another STATESHIFT_SECRET than the servers' served its clients
    (their tokens are the servers' to check), while every sweep, resync and switch
    verification was refused, found only in its log (a CLI audit's finding). It now asks
    each server once at start: refused, it exits 2 and says why."""
    old, new = await start_legacy(tmp_path), await start_new(tmp_path)
    try:
        args = proxy_args(old.url, new.url, tmp_path / "proxy.db")
        other = "another-secret-of-at-least-32-bytes-xxxxxxx"
        result = await asyncio.to_thread(
            cli_outcome, args, tmp_path, "wrong-secret", STATESHIFT_SECRET=other
        )
        assert_usage_error(result, "refused the proxy's admin token", "STATESHIFT_SECRET")
        # the servers' own secret: it starts
        started = await asyncio.to_thread(cli_outcome, args, tmp_path, "right-secret")
        assert started[0] == "listening", started
    finally:
        await old.stop()
        await new.stop()
