"""The proxy's admin plane, its persisted state, metrics accuracy (lost primaries, the
primary under a ramp, health checks to an IPv6 primary) and the `stateshift proxy` CLI's
errors. Each test names the bug it shows and failed before its fix."""

from __future__ import annotations

import asyncio
import socket
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from legacy.faults import parse_faults
from legacy.service import Config, LegacyServer
from proxy.metrics import CONNECTION_STATES
from proxy.relay import MAX_TRACKED, MirrorProxy
from server.app import ServerSettings, StateServer
from stateshift.control import ControlClient, ControlError
from tests.proxy.conftest import (
    Client,
    start_legacy,
    start_new,
    start_proxy,
    start_stack,
    stop_proxy,
    token,
)
from tests.support import LISTENING, ROOT, TEST_SECRET, cli_env, proxy_args, timeout, wait_until

ADMIN = token("ops", role="admin")


# ----------------------------------------------------------------- control channel


async def test_malformed_json_on_the_control_channel_is_bad_message_not_a_hangup(
    tmp_path: Path,
):
    """A control frame that starts like JSON but does not parse (a typo in a script, or an
    integer past 64 bits) must get `ERROR BAD_MESSAGE` like any other bad frame; the
    control plane instead ends the admin's connection without a word."""
    async with start_stack(tmp_path) as stack:
        client = await Client.open(f"ws://127.0.0.1:{stack.control.port}/v1/control")
        connected = await client.request(type="CONNECT", id="c", token=ADMIN)
        assert connected["type"] == "CONNECTED"
        await client.ws.send('{"type": "STATUS", "id": "s1",}')  # trailing comma
        answer = await client.recv()
        assert (answer["type"], answer["code"]) == ("ERROR", "BAD_MESSAGE"), answer
        # and the channel is still usable
        status = await client.request(type="STATUS", id="s2")
        assert status["type"] == "STATUS"
        await client.ws.close()


# ----------------------------------------------------------------- metrics


async def test_route_primary_names_the_new_server_when_a_ramp_sends_most_games_there(
    tmp_path: Path,
):
    """`stateshift_route_primary` is documented (its HELP, and the switchover dashboard's
    "Current primary per proxy") as "1 for the upstream that is primary (for all games, or
    most under a ramp)". After `RAMP 90` nine games in ten have the new server as primary,
    but the gauge still says old=1, new=0."""
    async with start_stack(tmp_path, switchboard=True) as stack:
        async with ControlClient(stack.control.url, ADMIN, timeout=timeout()) as control:
            answer = await control.request("RAMP", percent=90)
        assert answer["route"]["ramp"] == 90.0
        registry = stack.proxy.metrics.registry
        gauge = "stateshift_route_primary"
        assert registry.get_sample_value("stateshift_route_ramp_percent") == 90.0
        assert registry.get_sample_value(gauge, {"upstream": "new"}) == 1.0
        assert registry.get_sample_value(gauge, {"upstream": "old"}) == 0.0


async def test_a_primary_lost_mid_session_is_counted_as_an_upstream_failure(tmp_path: Path):
    """docs/metrics.md and both dashboards ("Failed or lost upstream connections; primary
    failures are client-visible") count lost upstream connections in
    `stateshift_proxy_upstream_connect_failures_total`, with series pre-created for
    role=primary and reason crash/closed. A primary that drops a client's connection with
    1011 (internal error) is never counted: those series stay at 0 whatever the primary does,
    while the same close from the shadow counts `crash`."""
    async with start_stack(tmp_path, "close-early:1") as stack:
        client = await Client.open(f"{stack.proxy.url}/v1/games/lost-primary")
        connected = await client.request(type="CONNECT", id="c", token=token("alice"))
        assert connected["type"] == "CONNECTED"
        assert await client.closed() == 1011  # the primary's close, relayed
        await wait_until(lambda: not stack.proxy.sessions, what="the session to end")
        registry = stack.proxy.metrics.registry
        failures = "stateshift_proxy_upstream_connect_failures_total"
        lost = sum(
            registry.get_sample_value(
                failures, {"upstream": "old", "role": "primary", "reason": reason}
            )
            or 0.0
            for reason in ("crash", "closed")
        )
        assert lost == 1.0


async def http_status(url: str, path: str) -> tuple[int, bytes]:
    """A plain HTTP GET on a proxy's client port: (status, body)."""
    host, port = url.removeprefix("ws://").rsplit(":", 1)
    reader, writer = await asyncio.open_connection(host.strip("[]"), int(port))
    try:
        writer.write(f"GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n".encode())
        async with asyncio.timeout(timeout()):
            raw = await reader.read()
        head, _, body = raw.partition(b"\r\n\r\n")
        return int(head.split(b" ", 2)[1]), body
    finally:
        writer.close()


async def test_a_health_check_reaches_a_primary_given_by_an_ipv6_url(tmp_path: Path):
    """`--old ws://[::1]:PORT` (the URL form the servers themselves print for an IPv6
    address): WebSocket clients are relayed, but a plain HTTP health check on the client
    port gets 502 "primary upstream unreachable" from a healthy primary: `_plain_http`
    splits the URL by hand and connects to the host `[::1]`, brackets included. (A URL
    without a port, `ws://old.example`, fails the same way: `int("old.example")`.)"""
    old = LegacyServer(Config(data=tmp_path / "old6.jsonl", secret=TEST_SECRET, host="::1", port=0))
    await old.start()
    new = await start_new(tmp_path)
    assert old.url.startswith("ws://[::1]:")
    under_test = await start_proxy(tmp_path, old.url, new.url)
    try:
        client = await Client.open(f"{under_test.url}/v1/games/six")
        connected = await client.request(type="CONNECT", id="c", token=token("alice"))
        assert connected["type"] == "CONNECTED"  # the WebSocket path reaches it
        await client.ws.close()
        direct = await http_status(old.url, "/healthz")
        assert direct[0] == 200
        assert await http_status(under_test.url, "/healthz") == direct
    finally:
        await stop_proxy(under_test)
        await new.stop()
        await old.stop()


# ----------------------------------------------------------------- the CLI


def proxy_outcome(args: list[str], log: Path) -> tuple[str, int | None, str]:
    """Run `stateshift proxy …` until it exits or prints its listening line (whichever comes
    first; never decided by a clock): ("exited", code, output) or ("listening", None,
    output), the process then stopped."""
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "stateshift", *args],
            stdout=out,
            stderr=subprocess.STDOUT,
            env=cli_env(),
            cwd=ROOT,
        )
    try:
        deadline = time.monotonic() + timeout(30)
        while time.monotonic() < deadline:
            code = proc.poll()
            text = log.read_text(errors="replace")
            if code is not None:
                return "exited", code, text
            if LISTENING.search(text):
                return "listening", None, text
            time.sleep(0.02)
        raise AssertionError(f"neither exited nor listened:\n{log.read_text(errors='replace')}")
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def assert_clear_error(outcome: tuple[str, int | None, str], *words: str) -> None:
    kind, code, output = outcome
    assert kind == "exited", f"it started anyway:\n{output}"
    assert code not in (0, None)
    assert "Traceback" not in output, output
    assert "error" in output.lower(), output
    for word in words:
        assert word in output, output


async def test_a_listen_port_in_use_is_a_clear_error_not_a_traceback(tmp_path: Path):
    """`stateshift proxy --listen` on a port another process holds: the other servers
    (`stateshift legacy`) say `error: …` and exit; the proxy dies with a Python traceback
    (OSError from the event loop) and typer's exception dump."""
    old = await start_legacy(tmp_path)
    new = await start_new(tmp_path)
    holder = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        busy = holder.getsockname()[1]
        args = proxy_args(old.url, new.url, tmp_path / "s.db", listen=f"127.0.0.1:{busy}")
        outcome = await asyncio.to_thread(proxy_outcome, args, tmp_path / "busy.log")
        assert_clear_error(outcome, str(busy))
    finally:
        holder.close()
        await new.stop()
        await old.stop()


async def test_a_corrupt_state_file_is_a_clear_error_not_a_traceback(tmp_path: Path):
    """A `--state` file that is not a SQLite database (truncated, the wrong path): the
    proxy must say which file is wrong and exit; it dies with a sqlite3.DatabaseError
    traceback. (The same for a directory that does not exist.)"""
    state = tmp_path / "proxy.db"
    state.write_bytes(b"this is not a database, it is a text file\n" * 200)
    args = proxy_args("ws://127.0.0.1:9", "ws://127.0.0.1:10", state)
    outcome = await asyncio.to_thread(proxy_outcome, args, tmp_path / "corrupt.log")
    assert_clear_error(outcome, "proxy.db")


async def test_a_persisted_route_the_proxy_cannot_read_is_a_clear_error(tmp_path: Path):
    """A state file whose route row this version cannot read (written by a newer version,
    or edited by hand: `primary: "both"`) kills the proxy with a ValueError traceback from
    `Route.__post_init__` instead of naming the file and the problem."""
    state = tmp_path / "proxy.db"
    with sqlite3.connect(state) as db:
        db.execute("CREATE TABLE route (id INTEGER PRIMARY KEY, route JSON, updated TEXT)")
        db.execute(
            "INSERT INTO route VALUES (1, ?, ?)",
            ('{"primary": "both", "mirroring": true, "ramp": null}', "2030-01-01T00:00:00Z"),
        )
    args = proxy_args("ws://127.0.0.1:9", "ws://127.0.0.1:10", state)
    outcome = await asyncio.to_thread(proxy_outcome, args, tmp_path / "newer.log")
    assert_clear_error(outcome, "proxy.db")


async def test_the_same_server_as_old_and_new_is_refused(tmp_path: Path):
    """`--old` and `--new` naming the same server: every client frame would be applied to
    it twice (once as primary, once as "shadow": every score delta doubled in the real
    game's state) and every comparison would be of the server with itself. The CLI
    validates the URLs' scheme but starts happily with this one."""
    url = "ws://127.0.0.1:9"
    args = proxy_args(url, url + "/", tmp_path / "same.db")
    outcome = await asyncio.to_thread(proxy_outcome, args, tmp_path / "same.log")
    assert_clear_error(outcome, "--new")


async def test_an_unknown_log_level_is_a_usage_error_not_a_traceback(tmp_path: Path):
    """`--log-level verbose` dies in logging.basicConfig with a ValueError traceback, after
    the other options were validated as usage errors (exit 2)."""
    args = proxy_args("ws://127.0.0.1:9", "ws://127.0.0.1:10", tmp_path / "l.db")
    outcome = await asyncio.to_thread(
        proxy_outcome, [*args, "--log-level", "verbose"], tmp_path / "level.log"
    )
    assert_clear_error(outcome)
    assert outcome[1] == 2


async def test_ids_a_shadow_never_answers_are_not_kept_for_ever(tmp_path: Path):
    """Answer latency remembers when each id went to each upstream until its answer. The
    primary's ids were bounded (MAX_TRACKED), the shadow's not: a shadow that answers
    garbage (or never answers) grew the proxy's memory by every message of the connection."""
    new = StateServer(
        ServerSettings(db=tmp_path / "new.db", secret=TEST_SECRET, port=0, rate=1e6, burst=10**6)
    )
    await new.start()
    old = LegacyServer(
        Config(
            data=tmp_path / "old.jsonl",
            secret=TEST_SECRET,
            port=0,
            rate=1e6,
            burst=1e6,
            faults=parse_faults(["garbage:1"]),
        )
    )
    await old.start()
    # a buffer larger than the load: the order does not give the shadow up meanwhile
    under_test = await start_proxy(tmp_path, old.url, new.url, primary="new", shadow_buffer=10**5)
    try:
        client = await Client.open(f"{under_test.url}/v1/games/memory")
        await client.request(type="CONNECT", id="c", token=token("p0"))
        beats = MAX_TRACKED + 500
        for n in range(beats):
            await client.send(type="HEARTBEAT", id=f"b{n}")
        await client.until(lambda frame: frame.get("re") == f"b{beats - 1}")
        (session,) = under_test.proxy.sessions.values()
        await wait_until(
            lambda: under_test.proxy.order.pending(session.id) == 0,
            what="every copy written to the shadow",
        )
        assert 0 < len(session.sent["old"]) <= MAX_TRACKED
    finally:
        await stop_proxy(under_test)
        await old.stop()
        await new.stop()


def connection_states(proxy: MirrorProxy) -> dict[str, float]:
    registry = proxy.metrics.registry
    return {
        state: registry.get_sample_value("stateshift_proxy_connections", {"state": state}) or 0.0
        for state in CONNECTION_STATES
    }


async def test_connections_are_exported_by_state(tmp_path: Path):
    """The issue asks for "connections by state": mirrored, spliced (pass-through), and back
    to zero when the clients leave; the states add up to the open client connections."""
    old, new = await start_legacy(tmp_path), await start_new(tmp_path)
    (tmp_path / "spliced").mkdir()
    mirroring = await start_proxy(tmp_path, old.url, new.url)
    passing = await start_proxy(tmp_path / "spliced", old.url, new.url, mirroring=False)
    try:
        clients = [
            await Client.open(f"{mirroring.url}/v1/games/states"),
            await Client.open(f"{passing.url}/v1/games/states"),
        ]
        for n, client in enumerate(clients):
            await client.request(type="CONNECT", id="c", token=token(f"p{n}"))
        assert connection_states(mirroring.proxy) == {
            "handshaking": 0,
            "mirrored": 1,
            "held": 0,
            "relayed": 0,
            "spliced": 0,
        }
        assert connection_states(passing.proxy)["spliced"] == 1
        for under_test in (mirroring, passing):
            open_now = under_test.proxy.metrics.registry.get_sample_value(
                "stateshift_proxy_client_connections"
            )
            assert sum(connection_states(under_test.proxy).values()) == open_now == 1
        for client in clients:
            await client.ws.close()
        for proxy in (mirroring.proxy, passing.proxy):

            def all_zero(proxy: MirrorProxy = proxy) -> bool:
                return not any(connection_states(proxy).values())

            await wait_until(all_zero, what="every state back to zero")
    finally:
        await stop_proxy(passing)
        await stop_proxy(mirroring)
        await old.stop()
        await new.stop()


@pytest.mark.parametrize(
    ("command", "fields"),
    [
        ("RAMP", {"percent": True}),  # `true` is an int in Python: it was a 1 % ramp
        ("FIGURES", {"window": True}),
        ("PREPARE", {"target": {"primary": "new"}, "hold": True}),
        ("PREPARE", {"target": {"primary": "new", "mirroring": "false"}}),  # bool("false")
        ("PREPARE", {"target": {"primary": "new", "ramp": True}}),
    ],
)
async def test_booleans_and_strings_are_not_numbers_or_switches(
    tmp_path: Path, command: str, fields: dict[str, Any]
):
    async with start_stack(tmp_path, switchboard=True) as stack:
        before = stack.proxy.route
        async with ControlClient(stack.control.url, ADMIN, timeout=timeout()) as control:
            with pytest.raises(ControlError) as refused:
                await control.request(command, **fields)
        assert refused.value.code == "BAD_MESSAGE"
        assert stack.proxy.route == before
        assert stack.board.prepared is None
