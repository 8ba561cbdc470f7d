"""The legacy server over real connections (in-process, port 0): delivery, liveness, storage."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from legacy.errors import JournalError
from legacy.service import LegacyServer
from tests.legacy.conftest import Open, Start
from tests.support import timeout, wait_until


async def http_get(server: LegacyServer, path: str) -> tuple[int, dict[str, str], bytes]:
    """A bare HTTP/1.1 GET on the server's port: status, headers, body."""
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    writer.write(f"GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode())
    data = await asyncio.wait_for(reader.read(), timeout())
    writer.close()
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode().split("\r\n")
    headers = dict(line.split(": ", 1) for line in lines[1:])
    return int(lines[0].split()[1]), {k.lower(): v for k, v in headers.items()}, body


async def test_healthz_metrics_and_unknown_paths(server: LegacyServer) -> None:
    assert (await http_get(server, "/healthz"))[::2] == (200, b"ok")
    status, headers, body = await http_get(server, "/metrics")
    assert status == 200
    assert headers["content-type"].startswith("text/plain")
    assert b"stateshift_legacy_messages_total" in body
    for path in ("/", "/v1/games/", "/v1/games/bad%20id", "/v1/games/a/b", "/v1/adminx"):
        assert (await http_get(server, path))[0] == 404, path


async def test_messages_and_errors_are_counted_by_path_kind(
    server: LegacyServer, open_client: Open
) -> None:
    """As the new server's: the error-ratio alerts read `path="game"` only."""
    admin = await open_client(server, "/v1/admin", sub="ops", role="admin")
    missing = await admin.ask("GET_STATE", game_id="missing")
    assert missing["code"] == "NOT_FOUND", missing
    player = await open_client(server)
    refused = await player.ask("STATE_UPDATE", updates={"status": "nope"})
    assert refused["type"] == "ERROR", refused
    code = refused["code"]
    sample = server.metrics.registry.get_sample_value
    errors = "stateshift_legacy_errors_total"
    assert sample(errors, {"path": "admin", "code": "NOT_FOUND"}) == 1.0
    assert sample(errors, {"path": "game", "code": "NOT_FOUND"}) == 0.0
    assert sample(errors, {"path": "game", "code": code}) == 1.0
    assert sample(errors, {"path": "admin", "code": code}) == 0.0
    messages = "stateshift_legacy_messages_total"
    assert sample(messages, {"path": "admin", "type": "GET_STATE", "result": "error"}) == 1.0
    assert sample(messages, {"path": "game", "type": "STATE_UPDATE", "result": "error"}) == 1.0


async def test_sender_gets_ack_then_state_and_others_get_state(
    server: LegacyServer, open_client: Open
) -> None:
    alice = await open_client(server)
    bob = await open_client(server, sub="bob")
    joined = await alice.recv()
    assert (joined["type"], joined["version"]) == ("STATE", 2), "a join is broadcast"
    assert "bob" in bob.connected["state"]["scores"]
    mid = await bob.send("STATE_UPDATE", updates={"status": "active"})
    assert await bob.recv() == {"type": "ACK", "re": mid, "version": 3}
    for client in (bob, alice):
        state = await client.recv()
        assert (state["type"], state["version"], state["state"]["status"]) == ("STATE", 3, "active")


async def test_concurrent_updates_get_consecutive_versions_broadcast_in_order(
    server: LegacyServer, open_client: Open, log_path: Path
) -> None:
    players = [await open_client(server, sub=f"p{i}") for i in range(8)]
    watcher = await open_client(server, sub="w", role="observer")
    for client in players:  # drain the join broadcasts each has seen
        for _ in range(8 - 1 - players.index(client)):
            assert (await client.recv())["type"] == "STATE"
    base = watcher.connected["state"]["version"]

    async def burst(client) -> list[int]:
        ids = [
            await client.send("STATE_UPDATE", updates={"score_deltas": {"p0": 1}})
            for _ in range(10)
        ]
        acks: list[int] = []
        while len(acks) < len(ids):
            message = await client.recv()
            if message["type"] == "ACK":
                acks.append(message["version"])
        return acks

    acks = await asyncio.gather(*(burst(c) for c in players))
    versions = sorted(v for client_acks in acks for v in client_acks)
    assert versions == list(range(base + 1, base + 81))
    seen = [(await watcher.recv())["version"] for _ in range(80)]
    assert seen == versions, "broadcasts arrive in version order"
    state = await watcher.ask("GET_STATE")
    assert state["state"]["scores"]["p0"] == 80
    lines = await asyncio.to_thread(log_path.read_bytes)
    assert lines.count(b"\n") == 8 + 80


async def test_acknowledged_changes_survive_a_restart(start: Start, open_client: Open) -> None:
    server = await start()
    alice = await open_client(server)
    for i in range(5):
        assert (await alice.ask("STATE_UPDATE", updates={"scores": {"alice": i}}))["type"] == "ACK"
        await alice.recv()
    before = (await alice.ask("GET_STATE"))["state"]
    await server.stop()
    again = await start()
    alice = await open_client(again)
    assert alice.connected["state"] == before
    ack = await alice.ask("STATE_UPDATE", updates={"status": "active"})
    assert ack["version"] == before["version"] + 1


async def test_a_failed_log_write_answers_internal_and_applies_nothing(
    server: LegacyServer, open_client: Open, monkeypatch: pytest.MonkeyPatch
) -> None:
    alice = await open_client(server)
    watcher = await open_client(server, sub="w", role="observer")
    journal = server._journal
    assert journal is not None

    def fail(data: bytes) -> None:
        raise JournalError("disk on fire")

    monkeypatch.setattr(journal, "append", fail)
    answer = await alice.ask("STATE_UPDATE", updates={"status": "active"})
    assert answer["code"] == "INTERNAL"
    newcomer = await connect(server.url + "/v1/games/g1", ping_interval=None)
    from tests.legacy.conftest import Client, token

    bob = Client(newcomer)
    refused = await bob.ask("CONNECT", token=token("bob"))
    assert refused["code"] == "INTERNAL"
    assert await bob.close_code() == 1011
    monkeypatch.undo()
    state = (await alice.ask("GET_STATE"))["state"]
    assert (state["version"], state["status"], list(state["scores"])) == (1, "waiting", ["alice"])
    ack = await alice.ask("STATE_UPDATE", updates={"status": "active"})
    assert ack["version"] == 2, "no version was burnt by the failure"
    assert (await watcher.recv())["version"] == 2, "the failed change was never broadcast"


async def test_a_frame_over_64_kib_closes_1009(server: LegacyServer, open_client: Open) -> None:
    alice = await open_client(server)
    await alice.ws.send("x" * 65_537)
    assert await alice.close_code() == 1009


async def test_no_connect_in_time_closes_4401(start: Start, open_client: Open) -> None:
    server = await start(connect_timeout=0.2)
    client = await open_client(server, sub=None)
    assert await client.close_code() == 4401


async def test_a_silent_connection_closes_4408(start: Start, open_client: Open) -> None:
    server = await start(idle_timeout=0.3)
    alice = await open_client(server)
    # Stop reading: the client can no longer answer pings, as a dead peer would.
    alice.ws.transport.pause_reading()
    idle = server.metrics.registry
    await wait_until(
        lambda: (
            idle.get_sample_value("stateshift_legacy_server_closes_total", {"reason": "idle"})
            == 1.0
        ),
        what="idle close",
    )
    alice.ws.transport.resume_reading()
    assert await alice.close_code() == 4408


async def test_pongs_keep_a_silent_client_open(start: Start, open_client: Open) -> None:
    # Pings go every third of the idle period: a process stall longer than two of them
    # (about 0.2 s at 0.3) closed the client before its next pong on a loaded machine.
    server = await start(idle_timeout=timeout(1.5))
    alice = await open_client(server)
    (conn,) = server._conns
    marks: list[float] = []

    def refreshed_by_pongs() -> bool:
        if not marks or conn.last_active > marks[-1]:
            marks.append(conn.last_active)
        return len(marks) >= 5  # four pong refreshes: more than two idle periods

    await wait_until(refreshed_by_pongs, what="pongs")
    assert alice.ws.close_code is None
    assert (await alice.ask("HEARTBEAT"))["type"] == "HEARTBEAT_ACK"


async def test_rate_abuse_closes_4429(start: Start, open_client: Open) -> None:
    server = await start(rate=1.0, burst=1.0)
    client = await open_client(server, sub=None)
    for i in range(202):
        try:
            await client.ws.send(json.dumps({"type": "HEARTBEAT", "id": str(i)}))
        except ConnectionClosed:
            break
    assert await client.close_code() == 4429


async def test_stop_closes_clients_with_1012(server: LegacyServer, open_client: Open) -> None:
    alice = await open_client(server)
    await server.stop()
    assert await alice.close_code() == 1012
    assert (await http_get_refused(server)) is True


async def http_get_refused(server: LegacyServer) -> bool:
    try:
        await http_get(server, "/healthz")
    except OSError:
        return True
    return False


async def test_admin_connections_import_and_list(server: LegacyServer, open_client: Open) -> None:
    alice = await open_client(server)
    admin = await open_client(server, "/v1/admin?x=1", sub="ops", role="admin")
    assert "state" not in admin.connected
    state = {**alice.connected["state"], "version": 50, "status": "paused"}
    assert (await admin.ask("IMPORT_STATE", state=state))["version"] == 50
    pushed = await alice.recv()
    assert (pushed["type"], pushed["version"]) == ("STATE", 50)
    games = await admin.ask("LIST_GAMES")
    assert games["games"] == [{"game_id": "g1", "version": 50}]
    assert (await alice.ask("STATE_UPDATE", updates={"status": "active"}))["version"] == 51
