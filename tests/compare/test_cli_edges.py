"""Bad input to the operators' commands, from a CLI audit (each failed before its fix):
a finding id past SQLite's integers, a timeout of 0, one unreadable history row."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest
from typer.testing import CliRunner

from proxy.admin import CommandError
from proxy.state import ProxyState
from stateshift.cli import app
from stateshift.tokens import mint_token
from tests.proxy.conftest import start_stack
from tests.support import TEST_SECRET

ADMIN_ENV = {
    "STATESHIFT_SECRET": TEST_SECRET,
    "STATESHIFT_ADMIN_TOKEN": mint_token(TEST_SECRET, "ops", "admin"),
    "COLUMNS": "160",
}


async def test_a_finding_id_past_sqlites_integers_is_not_found(tmp_path: Path):
    """`compare explain 9223372036854775808` made the proxy answer INTERNAL (OverflowError
    from SQLite); a longer one crashed the CLI before asking (orjson)."""
    async with start_stack(tmp_path, comparator=True) as stack:
        with pytest.raises(CommandError) as missing:
            await stack.live._finding("ops", {"finding_id": 2**63})
        assert missing.value.code == "NOT_FOUND"
    result = CliRunner().invoke(
        app,
        ["compare", "explain", "99999999999999999999999", "--proxy", "ws://127.0.0.1:9"],
        env=ADMIN_ENV,
    )
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output


@pytest.mark.parametrize("command", [["compare", "status"], ["switchover", "status"]])
def test_a_timeout_of_zero_is_a_usage_error_not_an_unreachable_proxy(command: list[str]):
    """`--timeout 0` was reported as "UNREACHABLE: no handshake within 0 s": the network
    blamed for an option."""
    result = CliRunner().invoke(
        app, [*command, "--proxy", "ws://127.0.0.1:9", "--timeout", "0"], env=ADMIN_ENV
    )
    assert result.exit_code == 2, result.output
    assert "UNREACHABLE" not in result.output


async def test_one_unreadable_history_row_leaves_the_rest_readable(tmp_path: Path):
    """An event row whose details are not JSON (edited by hand, a disk fault) made the whole
    history unreadable (`switchover history`: INTERNAL)."""
    state = ProxyState(tmp_path / "proxy.db")
    await state.record("ops", "flip", "ok", {"paused_ms": 1.0})
    with sqlite3.connect(tmp_path / "proxy.db") as db:
        db.execute(
            "INSERT INTO events (at, actor, kind, result, details) VALUES ('t', 'x', 'k', 'r', ?)",
            ("not json",),
        )
    await state.record("ops", "rollback", "ok", {})
    events = await state.history(10)
    assert [e["kind"] for e in events] == ["rollback", "k", "flip"]
    assert events[1]["details"] == {"unreadable": "not json"}
    assert events[2]["details"] == {"paused_ms": 1.0}


@pytest.mark.parametrize(
    "args",
    [
        ["--sub", "x", "--ttl", "nan"],  # a traceback (ValueError) before
        ["--sub", "x", "--ttl", "inf"],  # OverflowError
        ["--sub", "bad id!!"],  # a token every server refuses, exit 0
        ["--sub", ""],
        ["--sub", "x", "--game", "bad game!"],
    ],
)
def test_token_refuses_what_the_servers_would(args: list[str]):
    result = CliRunner().invoke(app, ["token", *args], env=ADMIN_ENV)
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output


def test_token_mints_for_good_ids_and_every_game():
    result = CliRunner().invoke(
        app, ["token", "--sub", "p.1-a_b", "--game", "*", "--game", "g1"], env=ADMIN_ENV
    )
    assert result.exit_code == 0, result.output
    assert result.output.count(".") == 2  # header.claims.signature


def test_demo_refuses_a_rate_that_sends_nothing():
    """`demo --rate -1` sent no update and still printed "demo OK"."""
    result = CliRunner().invoke(app, ["demo", "--rate", "-1"], env=ADMIN_ENV)
    assert result.exit_code == 2, result.output
