"""The operator CLIs given bad input: a malformed ws:// URL, an admin token the proxies refuse,
a control peer answering in another shape. Each is a usage or connection error (exit 2, or 1
where a switch was asked for and may have begun), said in one line: never a traceback, never
a success. Each test failed before its fix.

Driven through the real `stateshift` app (typer's CliRunner in a worker thread: the CLI runs
its own event loop, as in production), against real proxies (`tests/switchover/conftest.py`)
or a tiny WebSocket peer on 127.0.0.1 that speaks the control protocol's envelope (CONNECT,
answers with the request's `type` and `re`) but not its fields.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator, Mapping
from typing import Any

import pytest
from typer.testing import CliRunner
from websockets.asyncio.server import ServerConnection, serve
from websockets.exceptions import ConnectionClosed

from stateshift.cli import app
from stateshift.control import ADMIN_TOKEN_ENV
from stateshift.tokens import SECRET_ENV, mint_token
from tests.support import TEST_SECRET
from tests.switchover.conftest import Stack

ADMIN = mint_token(TEST_SECRET, "migration-engineer", "admin")
BAD_URLS = ("ws://[::1", "ws://127.0.0.1:99999", "ws://127.0.0.1:-1", "ws://127.0.0.1:abc")


async def invoke(*args: str, admin_token: str = ADMIN) -> tuple[int, str]:
    """`stateshift ARGS…` in a worker thread: (exit code, stdout + stderr); an uncaught
    exception (a traceback for the user) is appended as `Traceback: …`."""
    env = {SECRET_ENV: TEST_SECRET, ADMIN_TOKEN_ENV: admin_token, "COLUMNS": "200"}
    result = await asyncio.to_thread(CliRunner().invoke, app, list(args), env=env)
    text = result.stdout + result.stderr
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        text += f"\nTraceback: {result.exception!r}"
    return result.exit_code, text


# ------------------------------------------------------------------ malformed URLs

#: every command taking a server's or a proxy's address; URL stands for the bad one
URL_COMMANDS: tuple[tuple[str, ...], ...] = (
    ("compare", "status", "--proxy", "URL"),
    ("compare", "show", "--proxy", "URL"),
    ("compare", "explain", "1", "--proxy", "URL"),
    ("compare", "resync", "g1", "--proxy", "URL"),
    ("compare", "sweep", "--old", "URL", "--new", "ws://127.0.0.1:1"),
    ("compare", "sweep", "--old", "ws://127.0.0.1:1", "--new", "URL"),
    ("backfill", "--from", "URL", "--to", "ws://127.0.0.1:1"),
    ("backfill", "--from", "ws://127.0.0.1:1", "--to", "URL"),
    ("switchover", "status", "--proxy", "URL"),
    ("switchover", "check", "--proxy", "URL"),
    ("switchover", "flip", "--proxy", "URL"),
    ("switchover", "rollback", "--proxy", "URL"),
    ("switchover", "ramp", "50", "--proxy", "URL"),
    ("switchover", "finalize", "--yes", "--proxy", "URL"),
    ("switchover", "history", "--proxy", "URL"),
    ("loadgen", "--url", "URL", "--duration", "0.1"),
    ("conformance", "--url", "URL"),
)


@pytest.mark.parametrize("url", BAD_URLS)
@pytest.mark.parametrize("command", URL_COMMANDS, ids=lambda c: " ".join(c))
async def test_a_malformed_url_is_a_usage_error(command: tuple[str, ...], url: str):
    """`ws://[::1` (ValueError: Invalid IPv6 URL), a port out of range or not a number: the
    prefix was checked, then urlsplit's ValueError came out as a traceback (exit 1), or, in
    `conformance`, as every check failing."""
    code, text = await invoke(*(url if arg == "URL" else arg for arg in command))
    assert "Traceback" not in text, text
    assert code == 2, text
    assert "is not a valid ws:// URL" in text, text


async def test_the_one_url_check_says_why():
    from stateshift.control import ws_url_problem  # imported here: the helper is new

    assert ws_url_problem("ws://127.0.0.1:8081") is None
    assert ws_url_problem("wss://[::1]:8081/v1/control") is None
    assert "IPv6" in str(ws_url_problem("ws://[::1"))
    assert "out of range" in str(ws_url_problem("ws://127.0.0.1:99999"))
    for bad in ("http://127.0.0.1:1", "127.0.0.1:1", "ws://:1", "ws://h:0", "ws://h:1#f"):
        assert ws_url_problem(bad), bad


@pytest.mark.parametrize("hold", ["nan", "inf", "0", "-1", "61"])
@pytest.mark.parametrize("command", ["flip", "rollback", "ramp"])
async def test_a_hold_the_proxies_refuse_is_a_usage_error(command: str, hold: str):
    """`--hold` outside what a proxy accepts (0 < seconds <= 60): a usage error before any
    proxy is asked. `nan` and `inf` went to the proxies, which refused them as a bad
    message; 0 and 61 too."""
    args = [command, *(["50"] if command == "ramp" else [])]
    code, text = await invoke("switchover", *args, "--hold", hold, "--proxy", "ws://127.0.0.1:1")
    assert "Traceback" not in text, text
    assert code == 2, text
    assert "--hold" in text, text
    assert "127.0.0.1:1" not in text, text  # refused before connecting


# ------------------------------------------------------------------ tokens refused

REFUSED_TOKENS = {
    "another secret": mint_token("another-secret-that-no-proxy-knows-of-at-all", "eve", "admin"),
    "expired": mint_token(TEST_SECRET, "eve", "admin", ttl=-10),
    "player": mint_token(TEST_SECRET, "eve", "player"),
}


@pytest.mark.parametrize("which", list(REFUSED_TOKENS))
async def test_a_refused_token_is_exit_2_and_changes_nothing(stack: Stack, which: str):
    """`switchover check/history/flip/ramp/finalize` exited 1 ("not ready", "failed") on
    UNAUTHENTICATED or FORBIDDEN, although nothing was asked; status and rollback said the
    proxy was "unreachable"."""
    proxy = await stack.add_proxy()
    bad = REFUSED_TOKENS[which]
    for command in (
        ("check",),
        ("history",),
        ("flip",),
        ("flip", "--force"),
        ("ramp", "50"),
        ("finalize", "--yes"),
    ):
        code, text = await invoke("switchover", *command, "--proxy", proxy.admin, admin_token=bad)
        assert "Traceback" not in text, text
        assert code == 2, (command, text)
        assert "UNAUTHENTICATED" in text or "FORBIDDEN" in text, text
    code, text = await invoke("switchover", "status", "--proxy", proxy.admin, admin_token=bad)
    assert code == 2, text
    assert "refused" in text, text
    assert "unreachable" not in text, text
    code, text = await invoke(
        "switchover", "rollback", "--json", "--proxy", proxy.admin, admin_token=bad
    )
    assert code == 2, text
    doc = json.loads(text[: text.rindex("}") + 1])
    assert [p["state"] for p in doc["switch"]["proxies"]] == ["refused"], doc
    assert proxy.route().primary == "old"
    assert proxy.route().mirroring
    assert proxy.proxy.gate.is_set()


# ------------------------------------------------------------------ malformed answers


@contextlib.asynccontextmanager
async def peer(answers: Mapping[str, Mapping[str, Any]]) -> AsyncIterator[str]:
    """A WebSocket peer on 127.0.0.1 answering CONNECT with CONNECTED and each request with
    its own `type` and `re` plus `answers[type]` (nothing more when not listed)."""

    async def handler(ws: ServerConnection) -> None:
        with contextlib.suppress(ConnectionClosed):
            async for raw in ws:
                msg = json.loads(raw)
                kind = msg.get("type")
                if kind == "CONNECT":
                    reply: dict[str, Any] = {"type": "CONNECTED", "actor": "someone"}
                else:
                    reply = {"type": kind, **answers.get(kind, {})}
                await ws.send(json.dumps({**reply, "re": msg.get("id")}))

    async with serve(handler, "127.0.0.1", 0) as server:
        port = server.sockets[0].getsockname()[1]
        yield f"ws://127.0.0.1:{port}"


#: the fields each command's answer carries, all null
NULL_FIELDS: dict[str, dict[str, Any]] = {
    "STATUS": {"status": None},
    "COMPARE_STATUS": {"compare": None},
    "HISTORY": {"events": None},
    "FIGURES": {"figures": None},
    "PREPARE": {"prepared": None},
    "COMMIT": {"route": None},
    "ABORT": {"route": None},
    "FINALIZE": {"route": None},
    "RESYNC": {"game_id": None, "version": None},
}
#: the same fields with another shape (another version's answers, or not a proxy at all)
WRONG_FIELDS: dict[str, dict[str, Any]] = {
    "STATUS": {"status": {"route": ["old"], "connections": 3}},
    "COMPARE_STATUS": {"compare": {"comparisons": [1], "diverged": 3, "mismatch_ratio": "x"}},
    "HISTORY": {"events": [1, "two"]},
    "FIGURES": {"figures": ["comparisons", 10]},
    "PREPARE": {"prepared": {"paused_ms": "soon"}},
    "COMMIT": {"route": "new"},
    "ABORT": {"route": 5},
    "FINALIZE": {"route": {"primary": None}},
    "RESYNC": {"game_id": ["g1"], "version": "latest"},
}
SHAPES = {"missing": {}, "null": NULL_FIELDS, "wrong": WRONG_FIELDS}

#: a command, and the exit codes it may give (2: nothing was changed; never 0)
PEER_COMMANDS: tuple[tuple[str, ...], ...] = (
    ("switchover", "status"),
    ("switchover", "status", "--json"),
    ("switchover", "check"),
    ("switchover", "history"),
    ("switchover", "flip"),
    ("switchover", "flip", "--force"),
    ("switchover", "rollback"),
    ("switchover", "ramp", "50"),
    ("switchover", "finalize", "--yes"),
    ("compare", "resync", "g1"),
)


@pytest.mark.parametrize("shape", list(SHAPES))
@pytest.mark.parametrize("command", PEER_COMMANDS, ids=lambda c: " ".join(c))
async def test_a_peer_answering_another_shape_is_a_bad_answer(command: tuple[str, ...], shape: str):
    """KeyError 'status'/'figures'/'events', TypeError on None, AttributeError on a list came
    out as tracebacks; `switchover status` printed `unreachable: None` with exit 0, and
    `compare resync` `resynced None: the shadow now has version None` with exit 0."""
    async with peer(SHAPES[shape]) as url:
        code, text = await invoke(*command, "--proxy", url)
    assert "Traceback" not in text, text
    assert code == 2, text
    assert "BAD_ANSWER" in text, text


async def test_compare_status_with_figures_of_another_shape_is_a_bad_answer():
    async with peer(WRONG_FIELDS) as url:
        code, text = await invoke("compare", "status", "--proxy", url)
    assert "Traceback" not in text, text
    assert code == 2, text
    assert "BAD_ANSWER" in text, text


#: a peer that answers the reads as a proxy would (old server primary, no figures)
GOOD_READS: dict[str, dict[str, Any]] = {
    "STATUS": {"status": {"route": {"primary": "old", "ramp": None, "mirroring": True}}},
    "FIGURES": {"figures": {}},
    "RECORD": {"event_id": 1},
}


@pytest.mark.parametrize(
    "answers",
    [
        {**GOOD_READS, **{k: v for k, v in shapes.items() if k == "PREPARE"}}
        for shapes in (NULL_FIELDS, WRONG_FIELDS)
    ]
    + [
        {
            **GOOD_READS,
            "PREPARE": {"prepared": {"token": "0123456789abcdef"}},
            "COMMIT": shapes["COMMIT"],
        }
        for shapes in (NULL_FIELDS, WRONG_FIELDS)
    ],
    ids=["prepare null", "prepare wrong", "commit null", "commit wrong"],
)
async def test_a_switch_answered_in_another_shape_fails_and_says_so(
    answers: dict[str, dict[str, Any]],
):
    """A PREPARE or COMMIT answer without its fields (the proxy may have paused its clients,
    or switched): a traceback before. Now the switch fails (exit 1: it was asked, something
    may have changed, it is aborted by its token), never a success."""
    async with peer(answers) as url:
        code, text = await invoke("switchover", "flip", "--force", "--json", "--proxy", url)
    assert "Traceback" not in text, text
    assert code == 1, text
    doc = json.loads(text[: text.rindex("}") + 1])
    assert doc["ok"] is False
    [outcome] = doc["switch"]["proxies"]
    assert outcome["state"] in ("failed", "unknown"), outcome
    assert "BAD_ANSWER" in outcome["error"] or "BAD_ANSWER" in doc["switch"]["message"], doc


@pytest.mark.parametrize(
    "command",
    [("status",), ("show",), ("resync", "g1"), ("explain", "1")],
    ids=lambda c: c[0],
)
async def test_compare_commands_refuse_a_repeated_proxy(command: tuple[str, ...]):
    """`compare resync g --proxy A --proxy B` resynced on B only and said "resynced";
    `compare status` with two showed B's figures as if the fleet's: a repeated `--proxy`
    kept the last, silently (a rehearsal). These commands read one proxy: a usage error."""
    code, text = await invoke(
        "compare", *command, "--proxy", "ws://127.0.0.1:1", "--proxy", "ws://127.0.0.1:2"
    )
    assert "Traceback" not in text, text
    assert code == 2, text
    assert "exactly one" in text, text
