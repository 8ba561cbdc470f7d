"""`stateshift conformance` against running servers: exit codes, JSON, readable failures."""

from __future__ import annotations

import io
import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from rich.console import Console
from typer.testing import CliRunner

import conformance.cli
from stateshift.cli import app
from tests.conformance.servers import cli_flags, server_args
from tests.support import TEST_SECRET, ServerProcess, running

SECRET_ENV = "STATESHIFT_SECRET"


@pytest.fixture(scope="module")
def new_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """A healthy new server."""
    tmp = tmp_path_factory.mktemp("cli-new")
    with running(server_args("new", tmp), tmp / "server.log") as server:
        yield server


@pytest.fixture(scope="module")
def faulty_legacy(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """A legacy server that applies every score delta one too high."""
    tmp = tmp_path_factory.mktemp("cli-faulty")
    args = server_args("legacy", tmp, "--fault", "score-delta-off-by-one")
    with running(args, tmp / "server.log") as server:
        yield server


def invoke(url: str, *args: str, secret: str | None = TEST_SECRET) -> tuple[int, str, str]:
    """Run `stateshift conformance --url URL ARGS…`: (exit code, stdout, stderr)."""
    env = {SECRET_ENV: secret} if secret is not None else {SECRET_ENV: ""}
    result = CliRunner().invoke(
        app, ["conformance", "--url", url, *cli_flags(), *args], env=env, catch_exceptions=False
    )
    return result.exit_code, result.stdout, result.stderr


def test_cli_exits_0_when_the_selected_checks_pass(new_server: ServerProcess) -> None:
    code, out, _ = invoke(new_server.url, "--only", "transport.", "--only", "envelope.*")
    assert code == 0, out
    assert "failed" in out
    assert "FAIL" not in out


def test_cli_json_report_parses_and_lists_each_check(new_server: ServerProcess) -> None:
    code, out, _ = invoke(new_server.url, "--json", "--only", "messages.")
    report = json.loads(out)
    assert code == 0
    assert report["ok"] is True
    assert report["failed"] == 0
    names = [r["name"] for r in report["results"]]
    assert names == sorted(names)
    assert all(n.startswith("messages.") for n in names)
    assert {"name", "category", "passed", "message", "duration", "slow", "doc"} <= set(
        report["results"][0]
    )


def test_cli_no_slow_skips_the_slow_checks(new_server: ServerProcess) -> None:
    code, out, _ = invoke(
        new_server.url, "--json", "--no-slow", "--only", "idle.", "--only", "auth."
    )
    report = json.loads(out)
    assert code == 0
    assert report["results"]
    assert not any(r["slow"] for r in report["results"])
    assert not any(r["name"].startswith("idle.") for r in report["results"])


def test_cli_exits_1_with_a_readable_report_when_a_server_is_wrong(
    faulty_legacy: ServerProcess, monkeypatch: pytest.MonkeyPatch
) -> None:
    buffer = io.StringIO()
    monkeypatch.setattr(conformance.cli, "console", Console(file=buffer, width=200))
    code, _, _ = invoke(
        faulty_legacy.url, "--only", "update.score_deltas", "--only", "update.timer"
    )
    text = buffer.getvalue()
    assert code == 1
    assert "update.score_deltas_add_to_scores_after_scores_are_set" in text
    assert "FAIL" in text
    assert "expected {'alice': 5, 'bob': -2}, got {'alice': 6, 'bob': -1}" in text
    assert "update.timer_key_sets_each_listed_timer" in text  # the passing one is listed too
    assert "1 passed, 1 failed" in text


def test_cli_with_a_wrong_secret_fails_the_auth_checks(new_server: ServerProcess) -> None:
    code, out, _ = invoke(
        new_server.url, "--json", "--only", "join.first_connect", secret="not-the-secret"
    )
    report = json.loads(out)
    assert code == 1
    assert report["failed"] == 1
    assert "UNAUTHENTICATED" in report["results"][0]["message"]


def test_cli_without_a_secret_is_a_usage_error(tmp_path: Path) -> None:
    code, _, err = invoke("ws://127.0.0.1:9", secret=None)
    assert code == 2
    assert "STATESHIFT_SECRET is not set" in err


def test_cli_with_an_unmatched_pattern_is_a_usage_error(new_server: ServerProcess) -> None:
    code, _, err = invoke(new_server.url, "--only", "no.such.check")
    assert code == 2
    assert "no check matches" in err


def test_cli_with_a_non_websocket_url_is_a_usage_error() -> None:
    code, _, err = invoke("http://127.0.0.1:9")
    assert code == 2
    assert "ws://" in err


def test_cli_against_a_closed_port_is_one_connection_error_without_hanging() -> None:
    """Nothing listening is exit 2 and one line, no report (tests/conformance/
    test_dead_target.py); it was exit 1 with every selected check failed."""
    code, out, err = invoke("ws://127.0.0.1:9", "--json", "--only", "messages.heartbeat")
    assert code == 2
    assert out == ""
    assert "cannot connect to ws://127.0.0.1:9" in err
