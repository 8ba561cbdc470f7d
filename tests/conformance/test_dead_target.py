"""`stateshift conformance` against an address where nothing listens: one connection error
(exit 2, one line on stderr, no report), not a report of every check failed on its own
refused connection. Failed before its fix (exit 1, 133 failed checks).

The closed port is a socket bound on 127.0.0.1 and never listening: connecting to it is
refused for as long as the test holds it (no other process can take the port meanwhile).
"""

from __future__ import annotations

import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conformance.servers import cli_flags, server_args
from tests.support import ROOT, cli_env, running, timeout


@pytest.fixture
def closed_port() -> Iterator[int]:
    """A loopback port bound by this test and not listening: every connection is refused."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        yield sock.getsockname()[1]


def conformance(*args: str, flags: bool = True, columns: int = 80) -> tuple[int, str, str]:
    """`stateshift conformance ARGS…` as a subprocess (with the test servers' `cli_flags`
    unless `flags` is False): (exit code, stdout, stderr)."""
    proc = subprocess.run(
        [sys.executable, "-m", "stateshift", "conformance", *(cli_flags() if flags else ()), *args],
        capture_output=True,
        text=True,
        env=cli_env(STATESHIFT_NATIVE="0", COLUMNS=str(columns)),
        cwd=ROOT,
        timeout=timeout(120),
        check=False,
    )
    return proc.returncode, proc.stdout, proc.stderr


def error_lines(stderr: str) -> list[str]:
    """stderr without the native-modules notice (`stateshift.native`, printed on start)."""
    return [
        line
        for line in stderr.splitlines()
        if line.strip() and not line.startswith("running every compiled module")
    ]


@pytest.mark.parametrize("as_json", [False, True], ids=["table", "json"])
def test_nothing_listening_is_one_connection_error(closed_port: int, as_json: bool):
    url = f"ws://127.0.0.1:{closed_port}"
    code, out, err = conformance("--url", url, *(["--json"] if as_json else []))
    assert code == 2, f"exit {code}\nstdout:\n{out[-3000:]}\nstderr:\n{err}"
    assert out == "", out[-3000:]  # no report: no check was run
    lines = error_lines(err)
    assert len(lines) == 1, err
    assert lines[0].startswith(f"error: cannot connect to {url}: "), err
    assert "Traceback" not in err


def test_the_exit_code_is_documented():
    """The help says what exit 2 means here."""
    code, out, err = conformance("--help", flags=False, columns=200)
    assert code == 0, err
    assert "nothing can be reached at --url" in " ".join(out.split()), out


def test_a_usage_error_is_said_before_the_connection_error(closed_port: int):
    """`--only` matching no check is the usage error it is, whether or not the server is up."""
    code, _, err = conformance("--url", f"ws://127.0.0.1:{closed_port}", "--only", "no.such")
    assert code == 2, err
    assert error_lines(err) == ["error: no check matches ['no.such']"], err


def test_a_listening_server_is_still_checked(tmp_path: Path):
    """The probe lets a live server through: its checks run and pass."""
    with running(server_args("new", tmp_path), tmp_path / "server.log") as server:
        code, out, err = conformance("--url", server.url, "--only", "messages.heartbeat")
    assert code == 0, f"{out}\n{err}"
    assert "1 passed" in out, out
