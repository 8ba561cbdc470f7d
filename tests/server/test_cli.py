"""`stateshift serve` and `stateshift token` as a user runs them."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import jwt

from stateshift import native
from tests.support import TEST_SECRET, ServerProcess, cli_env, timeout


def test_serve_refuses_to_start_without_a_secret(tmp_path: Path):
    env = cli_env()
    del env["STATESHIFT_SECRET"]
    result = subprocess.run(
        [sys.executable, "-m", "stateshift", "serve", "--db", str(tmp_path / "x.db")],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout(30),
    )
    assert result.returncode == 2
    assert "STATESHIFT_SECRET is not set" in result.stderr


def test_token_prints_a_verifiable_token():
    result = subprocess.run(
        [
            *(sys.executable, "-m", "stateshift", "token", "--sub", "alice"),
            *("--role", "observer", "--game", "g1", "--game", "g2", "--ttl", "60"),
        ],
        env=cli_env(),
        capture_output=True,
        text=True,
        timeout=timeout(30),
    )
    assert result.returncode == 0, result.stderr
    claims = jwt.decode(result.stdout.strip(), TEST_SECRET, algorithms=["HS256"])
    assert (claims["sub"], claims["role"], claims["games"]) == ("alice", "observer", ["g1", "g2"])
    assert claims["exp"] - claims["iat"] == 60


def test_serve_stops_cleanly_on_sigterm(tmp_path: Path):
    server = ServerProcess(
        ["serve", "--port", "0", "--db", str(tmp_path / "s.db")], tmp_path / "log"
    )
    server.start()
    assert server.terminate() == 0
    assert (tmp_path / "s.db").exists()
    # what runs, for the operator: the same answer as `stateshift native` in this environment
    assert f"hot modules: {native.status()}" in server.output()
