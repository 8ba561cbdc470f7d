"""Input gaps of the operators' commands found by an audit. The tests of each gap failed
before its fix; the guards beside them (protocol types still accepted, `legacy` on IPv6,
`nan` on a bounded option, which typer's bound already refused) passed before as well.

- A non-finite number (`nan`, `inf`, `-inf`) given to any float option is a usage error
  (exit 2) naming the option, checked while the command line is parsed
  (`stateshift.options.finite`): typer's `min=` bound let `inf` through and an option
  without bounds let `nan` through.
- An ignore-rules file naming a message type the protocol does not have (a misspelt
  `[rules.STAET]`) is refused, naming the type and the known ones: it was accepted, and its
  rule never matched a frame.
- A command listening on an IPv6 address prints a URL with the address in brackets
  (`ws://[::1]:PORT`): `ws://::1:PORT` could not be parsed back into a host and a port.

Commands run as real `stateshift` subprocesses on loopback (or, for the parse-only checks,
through the real app's own parser); every wait is for an event, bounded by `timeout()`.
"""

from __future__ import annotations

import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import typer
import typer.main
from typer.core import TyperOption

from compare.rules import RulesError
from compare.rules import load as load_rules
from proxy.admin import ControlPlane
from proxy.relay import MirrorProxy
from proxy.route import Route
from proxy.state import ProxyState
from stateshift.cli import app
from tests.proxy.conftest import Client, proxy_settings, start_legacy, start_new, token
from tests.support import ADMIN_LINE, LISTENING, ROOT, TEST_SECRET, cli_env, cli_outcome, timeout

NON_FINITE = ("nan", "inf", "-inf")
#: command groups whose float options are checked in each command's body, not while parsing
#: (`switchover`: thresholds, --auto-rollback, --check-every; tests/switchover/)
CHECKED_IN_BODY = ("switchover",)


def start_cli(args: list[str], log: Path) -> subprocess.Popen[bytes]:
    """`stateshift ARGS…` as a subprocess writing its output to `log`."""
    with log.open("ab") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "stateshift", *args],
            stdout=out,
            stderr=subprocess.STDOUT,
            env=cli_env(STATESHIFT_NATIVE="0", COLUMNS="200"),
            cwd=ROOT,
        )


def run_cli(tmp_path: Path, *args: str) -> tuple[int | None, str]:
    """`stateshift ARGS…` as a subprocess: (exit code, output). A command that starts
    serving instead (it printed its listening line) is stopped: (None, output)."""
    kind, code, stdout, stderr = cli_outcome(list(args), tmp_path, "cli", STATESHIFT_NATIVE="0")
    return (None if kind == "listening" else code), stdout + stderr


# ------------------------------------------------------------- non-finite float options


def float_options() -> Iterator[tuple[str, Any, TyperOption]]:
    """(`command path`, command, option) for every float option of every command of the
    `stateshift` app (its command objects, as it parses a command line)."""

    def walk(cmd: Any, path: tuple[str, ...]) -> Iterator[tuple[str, Any, TyperOption]]:
        subcommands = getattr(cmd, "commands", None)
        if subcommands:
            for name, sub in sorted(subcommands.items()):
                if name not in CHECKED_IN_BODY:
                    yield from walk(sub, (*path, name))
            return
        for param in cmd.params:
            if isinstance(param, TyperOption) and param.type_descriptor.annotation in FLOAT_TYPES:
                yield " ".join(path), cmd, param

    yield from walk(typer.main.get_command(app), ())


FLOAT_TYPES = (float, float | None)
FLOAT_OPTIONS = list(float_options())


def test_the_walk_finds_the_float_options():
    """An empty parametrization would pass on nothing."""
    found = {(path, opt.opts[0]) for path, _, opt in FLOAT_OPTIONS}
    for expected in [
        ("serve", "--idle-timeout"),
        ("legacy", "--rate"),
        ("proxy", "--drain-timeout"),
        ("loadgen", "--duration"),
        ("demo", "--rate"),
        ("conformance", "--rate"),
        ("token", "--ttl"),
        ("compare status", "--timeout"),
    ]:
        assert expected in found, sorted(found)


@pytest.mark.parametrize("value", NON_FINITE)
@pytest.mark.parametrize(
    ("path", "command", "option"),
    FLOAT_OPTIONS,
    ids=[f"{path} {opt.opts[0]}" for path, _, opt in FLOAT_OPTIONS],
)
def test_a_non_finite_number_is_refused_while_parsing(
    path: str, command: Any, option: TyperOption, value: str
):
    """The option's own check refuses it before the command runs (typer's bounds let `inf`
    through `min=`, and `nan` through an option without bounds)."""
    with pytest.raises(typer.BadParameter) as caught:
        command.make_context(path, [option.opts[0], value])
    assert caught.value.exit_code == 2
    assert caught.value.param is option, caught.value.format_message()


@pytest.mark.parametrize(
    "args",
    [
        ("serve", "--port", "0", "--idle-timeout", "inf"),
        ("legacy", "--port", "0", "--rate", "inf"),
        ("token", "--sub", "p1", "--ttl", "nan"),
    ],
    ids=["serve", "legacy", "token"],
)
def test_a_non_finite_number_is_a_usage_error_naming_the_option(
    tmp_path: Path, args: tuple[str, ...]
):
    """The real commands: exit 2 before anything starts, the option named, no traceback
    (`serve --idle-timeout inf` used to start serving, `legacy --rate inf` too)."""
    extra = {"serve": ["--db", str(tmp_path / "new.db")], "legacy": ["--data", str(tmp_path)]}
    code, output = run_cli(tmp_path, *args, *extra.get(args[0], []))
    assert code == 2, output
    assert f"'{args[-2]}'" in output, output
    assert "must be a finite number" in output, output
    assert "Traceback" not in output, output


# ------------------------------------------------------------------- rules file types


def write_rules(tmp_path: Path, message_type: str) -> Path:
    path = tmp_path / "rules.toml"
    path.write_text(f'[rules.{message_type}]\nignore_keys = ["message"]\n')
    return path


@pytest.mark.parametrize("misspelt", ["STAET", "state", "ERRORS", "HEARTBEAT_ACKS"])
def test_a_rules_file_with_an_unknown_type_is_refused(tmp_path: Path, misspelt: str):
    """The loader says which type is unknown and which are known."""
    with pytest.raises(RulesError) as caught:
        load_rules(write_rules(tmp_path, misspelt))
    message = str(caught.value)
    assert f"unknown message type {misspelt!r}" in message
    for known in ("*", "STATE", "ERROR", "CONNECTED", "ACK"):
        assert known in message


#: PROTOCOL.md's message types from client to server, and from server to client
CLIENT_TYPES = (
    *("CONNECT", "HEARTBEAT", "STATE_UPDATE", "GET_STATE", "DISCONNECT", "LIST_GAMES"),
    "IMPORT_STATE",
)
SERVER_TYPES = ("CONNECTED", "HEARTBEAT_ACK", "ACK", "STATE", "DISCONNECTED", "GAMES", "ERROR")


@pytest.mark.parametrize("message_type", ["*", *SERVER_TYPES])
def test_a_rules_file_with_a_type_the_servers_send_is_accepted(tmp_path: Path, message_type: str):
    rules = load_rules(write_rules(tmp_path, f'"{message_type}"'))
    assert "message" in rules.for_type(message_type).ignore_keys


@pytest.mark.parametrize("message_type", CLIENT_TYPES)
def test_a_rules_file_with_a_type_clients_send_is_refused(tmp_path: Path, message_type: str):
    """The comparator compares only the servers' frames: a rule for `STATE_UPDATE` (whose
    answers are `ACK` and `STATE`) would never apply."""
    with pytest.raises(RulesError, match="a type clients send"):
        load_rules(write_rules(tmp_path, message_type))


def test_compare_rules_refuses_a_misspelt_type_in_one_line(tmp_path: Path):
    """`stateshift compare rules --rules FILE` exit 2 (it listed the rule, exit 0)."""
    code, output = run_cli(
        tmp_path, "compare", "rules", "--rules", str(write_rules(tmp_path, "STAET"))
    )
    assert code == 2, output
    lines = [line for line in output.splitlines() if line.strip()]
    assert len(lines) == 1, output
    assert "unknown message type 'STAET'" in lines[0]
    assert "STATE" in lines[0]


def test_the_proxy_refuses_a_rules_file_with_a_misspelt_type(tmp_path: Path):
    """`stateshift proxy --rules FILE` exits 2 instead of starting to compare with it."""
    code, output = run_cli(
        tmp_path,
        *("proxy", "--old", "ws://127.0.0.1:1", "--new", "ws://127.0.0.1:2"),
        *("--listen", "127.0.0.1:0", "--admin", "127.0.0.1:0"),
        *("--state", str(tmp_path / "proxy.db"), "--rules", str(write_rules(tmp_path, "STAET"))),
    )
    assert code == 2, output
    assert "unknown message type 'STAET'" in output, output


# ------------------------------------------------------------------- IPv6 listen lines


def ipv6_loopback() -> bool:
    try:
        with socket.socket(socket.AF_INET6) as sock:
            sock.bind(("::1", 0))
    except OSError:
        return False
    return True


needs_ipv6 = pytest.mark.skipif(not ipv6_loopback(), reason="no IPv6 loopback here")


def assert_reachable(url: str, scheme: str) -> None:
    """The printed URL parses back into the IPv6 host and a port that accepts connections."""
    parts = urlsplit(url)
    assert parts.scheme == scheme, url
    assert parts.hostname == "::1", url
    assert parts.port is not None, url
    with socket.create_connection((parts.hostname, parts.port), timeout=timeout()):
        pass


@needs_ipv6
@pytest.mark.parametrize("kind", ["serve", "legacy"])
def test_a_server_on_ipv6_prints_its_url_in_brackets(tmp_path: Path, kind: str):
    """`listening on ws://[::1]:PORT` (was `ws://::1:PORT` for `serve`). Checked while the
    server runs: the URL it printed is one a client can connect to."""
    data = ["--db", str(tmp_path / "new.db")] if kind == "serve" else ["--data", str(tmp_path)]
    log = tmp_path / "server.log"
    proc = start_cli([kind, "--host", "::1", "--port", "0", *data], log)
    try:
        deadline = time.monotonic() + timeout(20)
        while (found := LISTENING.search(log.read_text())) is None:
            assert proc.poll() is None, log.read_text()
            assert time.monotonic() < deadline, log.read_text()
            time.sleep(0.02)
        assert found.group(1).startswith("ws://[::1]:"), found.group(0)
        assert_reachable(found.group(1), "ws")
    finally:
        proc.terminate()
        proc.wait(timeout=timeout(15))


@needs_ipv6
def test_the_proxy_on_ipv6_prints_both_urls_in_brackets(tmp_path: Path):
    """`listening on ws://[::1]:P` and `admin on http://[::1]:Q` (were `ws://::1:P` and
    `http://::1:Q`), each reachable while the proxy runs."""
    log = tmp_path / "proxy.log"
    args = [
        *("proxy", "--old", "ws://127.0.0.1:1", "--new", "ws://127.0.0.1:2"),
        *("--listen", "[::1]:0", "--admin", "[::1]:0", "--state", str(tmp_path / "proxy.db")),
    ]
    proc = start_cli(args, log)
    try:
        deadline = time.monotonic() + timeout(20)
        while (admin := ADMIN_LINE.search(log.read_text())) is None:
            assert proc.poll() is None, log.read_text()
            assert time.monotonic() < deadline, log.read_text()
            time.sleep(0.02)
        listening = LISTENING.search(log.read_text())
        assert listening is not None, log.read_text()
        assert listening.group(1).startswith("ws://[::1]:"), listening.group(0)
        assert admin.group(1).startswith("http://[::1]:"), admin.group(0)
        assert_reachable(listening.group(1), "ws")
        assert_reachable(admin.group(1), "http")
    finally:
        proc.terminate()
        proc.wait(timeout=timeout(15))


@needs_ipv6
async def test_the_proxy_and_its_control_plane_on_ipv6_give_their_urls_in_brackets(
    tmp_path: Path,
):
    """`MirrorProxy.url` and `ControlPlane.url` (what tests, the demo and the admin plane's
    own links use) built `ws://::1:PORT` too; a client connects through the bracketed URL."""
    old = await start_legacy(tmp_path)
    new = await start_new(tmp_path)
    settings = proxy_settings(tmp_path / "proxy.db", old.url, new.url, host="::1")
    proxy = MirrorProxy(settings, Route(primary="old"))
    await proxy.start()
    control = ControlPlane(proxy, ProxyState(settings.state_path), TEST_SECRET, "::1", 0)
    await control.start()
    try:
        for url, port in ((proxy.url, proxy.port), (control.url, control.port)):
            assert url == f"ws://[::1]:{port}", url
        client = await Client.open(f"{proxy.url}/v1/games/v6")
        answer = await client.request(type="CONNECT", id="c", token=token("p0"))
        assert answer["type"] == "CONNECTED", answer
        await client.ws.close()
    finally:
        await control.stop()
        await proxy.stop()
        await new.stop()
        await old.stop()
