"""The new server over real connections: ordering, concurrency, broadcast isolation,
group commit, failures, shutdown and metrics. (Every row of PROTOCOL.md is covered by the
conformance suite, run against this server in `tests/conformance`.)"""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path

import orjson
import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from server.app import StateServer
from stateshift.tokens import mint_token
from tests.server.conftest import Client, OpenClient, settings
from tests.support import TEST_SECRET, timeout, wait_until


async def test_many_clients_updating_one_game_see_every_version_in_order(
    server: StateServer, open_client: OpenClient
):
    players = [f"p{i}" for i in range(12)]
    clients = []
    for player in players:
        client = await open_client()
        assert (await client.connect(player))["type"] == "CONNECTED"
        clients.append(client)
    # joins were broadcast to the connections already open: drain them
    for index, client in enumerate(clients):
        for _ in range(len(players) - index - 1):
            assert (await client.recv())["type"] == "STATE"
    updates_each = 15

    async def play(client, player):
        acked: list[int] = []
        seen: list[int] = []
        for n in range(updates_each):
            await client.send(
                type="STATE_UPDATE", id=f"u{n}", updates={"score_deltas": {player: 1}}
            )
        while len(acked) < updates_each or len(seen) < updates_each * len(players):
            frame = await client.recv()
            if frame["type"] == "ACK":
                acked.append(frame["version"])
            else:
                assert frame["type"] == "STATE", frame
                seen.append(frame["version"])
        return acked, seen

    results = await asyncio.gather(*(play(c, p) for c, p in zip(clients, players, strict=True)))
    first = len(players) + 1
    expected = list(range(first, first + updates_each * len(players)))
    all_acks = sorted(v for acked, _ in results for v in acked)
    assert all_acks == expected  # every version exactly once: strictly +1, no gaps
    for _, seen in results:
        assert seen == expected  # every client saw every broadcast, in version order
    final = await clients[0].request(type="GET_STATE", id="s")
    assert final["version"] == expected[-1]
    assert all(score == updates_each for score in final["state"]["scores"].values())


async def test_the_sender_gets_its_ack_before_the_broadcast(open_client: OpenClient):
    client = await open_client()
    await client.connect("alice")
    ack = await client.request(type="STATE_UPDATE", id="u", updates={"status": "active"})
    assert ack == {"type": "ACK", "re": "u", "version": 2}
    state = await client.recv()
    assert (state["type"], state["version"], "re" in state) == ("STATE", 2, False)


async def test_group_commit_puts_concurrent_changes_in_one_transaction(
    server: StateServer, open_client: OpenClient
):
    clients = []
    for n in range(20):
        client = await open_client(f"/v1/games/gc{n}")
        await client.connect(f"p{n}")
        clients.append(client)
    before = server.metrics.registry.get_sample_value("stateshift_server_commit_batch_size_count")
    for n, client in enumerate(clients):
        await client.send(type="STATE_UPDATE", id="u", updates={"score_deltas": {f"p{n}": 1}})
    for client in clients:
        assert (await client.recv())["type"] == "ACK"
    commits = server.metrics.registry.get_sample_value("stateshift_server_commit_batch_size_count")
    assert before is not None
    assert commits is not None
    # 20 changes sent without waiting: fewer transactions than changes
    assert commits - before < 20


async def test_history_tables_get_a_row_per_changed_value(
    server: StateServer, open_client: OpenClient, tmp_path: Path
):
    client = await open_client()
    await client.connect("alice")
    await client.request(
        type="STATE_UPDATE",
        id="u",
        updates={"scores": {"alice": 7}, "timer": {"alice": 5}, "settings": {"k": "v"}},
    )
    with sqlite3.connect(tmp_path / "state.db") as db:
        scores = db.execute(
            "SELECT player_id, score, version FROM scores ORDER BY rowid"
        ).fetchall()
        timers = db.execute("SELECT remaining_ms, version FROM timers ORDER BY rowid").fetchall()
        settings_rows = db.execute("SELECT key, value, version, timestamp FROM settings").fetchall()
    assert scores == [("alice", 0, 1), ("alice", 7, 2)]
    assert timers == [(60000, 1), (5, 2)]
    assert settings_rows[0][:3] == ("k", "v", 2)
    assert settings_rows[0][3].endswith("Z")


async def test_a_reader_that_never_reads_does_not_slow_the_game(
    server: StateServer, open_client: OpenClient
):
    """A slow reader's frames pile up in its own buffer; others get theirs at once."""
    stalled = await connect(server.url + "/v1/games/g1", max_queue=1)
    try:
        await stalled.send(
            orjson.dumps(
                {"type": "CONNECT", "id": "c", "token": mint_token(TEST_SECRET, "sleepy", "player")}
            ).decode()
        )
        active = await open_client()
        await active.connect("alice")
        pad = {f"pad{k}": "x" * 1000 for k in range(4)}
        for n in range(90):  # ~400 KB of broadcasts that the stalled client never reads
            pad["n"] = str(n)
            ack = await active.request(type="STATE_UPDATE", id=f"u{n}", updates={"settings": pad})
            assert ack["type"] == "ACK"
            assert (await active.recv())["type"] == "STATE"
    finally:
        stalled.transport.abort()


async def test_a_failed_commit_answers_internal_and_applies_nothing(
    server: StateServer, open_client: OpenClient, tmp_path: Path
):
    client = await open_client()
    await client.connect("alice")
    # A real SQLite failure: a trigger makes the next commit of this game abort.
    with sqlite3.connect(tmp_path / "state.db") as db:
        db.execute(
            "CREATE TRIGGER boom BEFORE UPDATE ON game_state WHEN NEW.version = 2 "
            "BEGIN SELECT RAISE(ABORT, 'disk on fire'); END"
        )
    error = await client.request(type="STATE_UPDATE", id="u", updates={"status": "active"})
    assert (error["type"], error["code"], error["re"]) == ("ERROR", "INTERNAL", "u")
    # a health check must not send more clients to a server that cannot commit
    assert await health(server) == "503 Service Unavailable: commits failing"
    state = await client.request(type="GET_STATE", id="s")
    assert (state["version"], state["state"]["status"]) == (1, "waiting")
    with sqlite3.connect(tmp_path / "state.db") as db:
        db.execute("DROP TRIGGER boom")
    ack = await client.request(type="STATE_UPDATE", id="u2", updates={"status": "active"})
    assert ack == {"type": "ACK", "re": "u2", "version": 2}
    assert await health(server) == "200 OK: ok"


async def health(server: StateServer) -> str:
    """`/healthz` as `status reason: body`."""
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    writer.write(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    raw = (await asyncio.wait_for(reader.read(1 << 16), timeout())).decode()
    writer.close()
    head, _, body = raw.partition("\r\n\r\n")
    return f"{head.splitlines()[0].split(' ', 1)[1]}: {body.strip()}"


async def test_shutdown_finishes_commits_and_closes_clients_with_1012(tmp_path: Path):
    srv = StateServer(settings(tmp_path))
    await srv.start()
    ws = await connect(srv.url + "/v1/games/g1")
    client = Client(ws)
    await client.connect("alice")
    for n in range(30):
        await client.send(type="STATE_UPDATE", id=f"u{n}", updates={"score_deltas": {"alice": 1}})
    stop = asyncio.create_task(srv.stop())
    acked = 0

    async def read_until_closed() -> None:
        nonlocal acked
        while True:
            frame = await client.recv()
            acked += frame["type"] == "ACK"

    with pytest.raises(ConnectionClosed):
        await read_until_closed()
    await stop
    assert ws.close_code == 1012
    # every ACK the client got is on disk
    with sqlite3.connect(tmp_path / "state.db") as db:
        (version,) = db.execute("SELECT version FROM game_state WHERE game_id='g1'").fetchone()
    assert version >= 1 + acked


async def test_from_the_stop_on_nothing_more_is_processed(tmp_path: Path):
    """Clients that keep sending must not keep the group commit busy for ever: a message
    that arrives once the stop began is neither processed nor acknowledged (the 1012 tells
    its client to send it again elsewhere); what was in flight is committed and ACKed."""
    srv = StateServer(settings(tmp_path))
    await srv.start()
    client = Client(await connect(srv.url + "/v1/games/g1"))
    await client.connect("alice")
    lock = sqlite3.connect(tmp_path / "state.db", isolation_level=None)
    try:
        lock.execute("BEGIN IMMEDIATE")  # the server's next commit waits for this writer
        await client.send(type="STATE_UPDATE", id="before", updates={"score_deltas": {"alice": 1}})
        await wait_until(lambda: not srv.games._idle.is_set(), what="a commit in flight")
        stopping = asyncio.create_task(srv.stop())
        await wait_until(lambda: not srv.serving, what="the stop to begin")
        await client.send(type="STATE_UPDATE", id="after", updates={"score_deltas": {"alice": 1}})
        await asyncio.sleep(0.2)  # lets it arrive (an unread one would prove nothing)
    finally:
        lock.close()  # the commit of "before" goes through
    answers: list[dict] = []

    async def read_until_closed() -> None:
        while True:
            answers.append(await client.recv())

    with pytest.raises(ConnectionClosed):
        await read_until_closed()
    await asyncio.wait_for(stopping, timeout(15))
    assert [a.get("re") for a in answers if a["type"] == "ACK"] == ["before"]
    assert client.ws.close_code == 1012
    with sqlite3.connect(tmp_path / "state.db") as db:
        (version,) = db.execute("SELECT version FROM game_state WHERE game_id='g1'").fetchone()
    assert version == 2  # the join, then "before"


async def test_no_connect_in_time_closes_4401(server: StateServer):
    async with connect(server.url + "/v1/games/g1") as ws:
        async with asyncio.timeout(timeout(server.settings.connect_timeout + 5)):
            with pytest.raises(ConnectionClosed):
                await ws.recv()
        assert ws.close_code == 4401


async def test_metrics_and_health_are_served_on_the_same_port(
    server: StateServer, open_client: OpenClient
):
    client = await open_client()
    await client.connect("alice")
    await client.request(type="HEARTBEAT", id="h")
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    writer.write(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
    body = (await asyncio.wait_for(reader.read(1 << 20), timeout())).decode()
    writer.close()
    assert "200 OK" in body.splitlines()[0]
    assert 'stateshift_server_messages_total{path="game",result="ok",type="HEARTBEAT"} 1.0' in body
    assert 'stateshift_server_connections{path="game"} 1.0' in body
    assert "stateshift_server_commit_seconds_bucket" in body
    await wait_until(
        lambda: server.metrics.registry.get_sample_value("stateshift_server_games_loaded") == 1.0,
        what="one game loaded",
    )


async def test_messages_and_errors_are_counted_by_path_kind(
    server: StateServer, open_client: OpenClient
):
    """The error-ratio alerts read `path="game"` only: a sweep's NOT_FOUND on the admin path
    is stateshift's own read, which no client sees."""
    admin = await open_client("/v1/admin")
    assert (await admin.connect("ops", "admin"))["type"] == "CONNECTED"
    missing = await admin.request(type="GET_STATE", id="r", game_id="missing")
    assert missing["code"] == "NOT_FOUND", missing
    player = await open_client()
    assert (await player.connect("alice"))["type"] == "CONNECTED"
    refused = await player.request(type="STATE_UPDATE", id="u", updates={"status": "nope"})
    assert refused["type"] == "ERROR", refused
    code = refused["code"]
    sample = server.metrics.registry.get_sample_value
    errors = "stateshift_server_errors_total"
    assert sample(errors, {"path": "admin", "code": "NOT_FOUND"}) == 1.0
    assert sample(errors, {"path": "game", "code": "NOT_FOUND"}) == 0.0
    assert sample(errors, {"path": "game", "code": code}) == 1.0
    assert sample(errors, {"path": "admin", "code": code}) == 0.0
    messages = "stateshift_server_messages_total"
    assert sample(messages, {"path": "admin", "type": "GET_STATE", "result": "NOT_FOUND"}) == 1.0
    assert sample(messages, {"path": "admin", "type": "CONNECT", "result": "ok"}) == 1.0
    assert sample(messages, {"path": "game", "type": "CONNECT", "result": "ok"}) == 1.0
    assert sample(messages, {"path": "game", "type": "STATE_UPDATE", "result": code}) == 1.0


async def test_games_are_evicted_from_memory_when_nobody_uses_them(
    server: StateServer, open_client: OpenClient
):
    client = await open_client()
    await client.connect("alice")
    assert "g1" in server.games.games
    await client.ws.close()
    await wait_until(lambda: "g1" not in server.games.games, what="eviction")
    again = await open_client()
    connected = await again.connect("alice")
    assert connected["state"]["version"] == 1  # reloaded from disk, not re-created


async def test_a_join_that_cannot_be_committed_answers_internal_and_closes_1011(
    server: StateServer, open_client: OpenClient, tmp_path: Path
):
    first = await open_client()
    await first.connect("alice")
    with sqlite3.connect(tmp_path / "state.db") as db:
        db.execute(
            "CREATE TRIGGER boom BEFORE UPDATE ON game_state "
            "BEGIN SELECT RAISE(ABORT, 'disk on fire'); END"
        )
    late = await open_client()
    error = await late.connect("bob")
    assert (error["type"], error["code"]) == ("ERROR", "INTERNAL")
    with pytest.raises(ConnectionClosed):
        await late.recv()
    assert late.ws.close_code == 1011
    state = await first.request(type="GET_STATE", id="s")
    assert (state["version"], list(state["state"]["scores"])) == (1, ["alice"])
