"""The proxy over real sockets: transparency, ordering, isolation from shadow faults,
primary faults, and the control plane."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest
from websockets.asyncio.client import connect
from websockets.asyncio.server import ServerConnection, serve
from websockets.exceptions import InvalidStatus

from legacy.service import LegacyServer
from server.app import StateServer
from tests.proxy.conftest import (
    Client,
    ProxyUnderTest,
    normalise,
    start_proxy,
    stop_proxy,
    token,
)
from tests.support import ServerProcess, timeout, wait_until


async def scripted_session(base_url: str, game: str) -> tuple[list[Any], int | None]:
    """One client's session touching every kind of answer; returns what it saw."""
    client = await Client.open(f"{base_url}/v1/games/{game}")
    await client.request(type="CONNECT", id="c", token=token("alice", games=(game,)))
    await client.request(type="HEARTBEAT", id="h")
    await client.request(type="STATE_UPDATE", id="u1", updates={"status": "active"})
    await client.recv()  # the broadcast
    await client.request(type="STATE_UPDATE", id="u2", updates={"status": "waiting"})
    await client.request(
        type="STATE_UPDATE",
        id="u3",
        updates={"score_deltas": {"alice": 5}, "settings": {"b": "2", "a": "1"}},
    )
    await client.recv()
    await client.request(
        type="STATE_UPDATE", id="u4", updates={"status": "paused"}, expected_version=1
    )
    await client.request(type="GET_STATE", id="g")
    await client.ws.send("this is not json")
    await client.recv()
    await client.ws.send(b"\x00binary")
    await client.recv()
    await client.request(type="FLY", id="f")
    await client.request(type="DISCONNECT", id="d")
    code = await client.closed()
    return normalise(client.frames, {}), code


async def test_a_session_through_the_proxy_is_what_the_primary_says_directly(
    mirror: ProxyUnderTest, old_server: LegacyServer, new_server: StateServer
):
    direct = await scripted_session(old_server.url, "direct-game")
    proxied = await scripted_session(mirror.url, "proxied-game")
    assert proxied == direct
    assert proxied[1] == 1000
    assert len(proxied[0]) == 13
    # the shadow's own close after DISCONNECT is its normal answer, not a lost shadow
    await wait_until(lambda: not mirror.proxy.sessions, what="the session to end")
    drops = mirror.proxy.metrics.registry.get_sample_value(
        "stateshift_proxy_shadow_drops_total", {"reason": "closed"}
    )
    assert drops == 0.0


async def test_with_the_new_server_primary_the_client_gets_the_new_servers_frames(
    tmp_path: Path, old_server: LegacyServer, new_server: StateServer
):
    under_test = await start_proxy(tmp_path, old_server.url, new_server.url, primary="new")
    try:
        direct = await scripted_session(new_server.url, "direct-game")
        assert await scripted_session(under_test.url, "proxied-game") == direct
    finally:
        await stop_proxy(under_test)


async def test_concurrent_clients_leave_both_servers_equal_at_every_version(
    mirror: ProxyUnderTest, old_server: LegacyServer, new_server: StateServer
):
    """Racing `set`s would diverge if the shadow applied them in arrival order."""
    players = [f"p{n}" for n in range(6)]
    clients = []
    for player in players:
        client = await Client.open(f"{mirror.url}/v1/games/race")
        connected = await client.request(type="CONNECT", id="c", token=token(player))
        assert connected["type"] == "CONNECTED"
        clients.append(client)
    rounds = 20

    async def hammer(client: Client, player: str) -> None:
        for n in range(rounds):
            updates = {
                "scores": {"p0": n},
                "settings": {"last": player},
                "score_deltas": {player: 1},
            }
            await client.send(type="STATE_UPDATE", id=f"{player}-{n}", updates=updates)
        await client.until(lambda f: f.get("re") == f"{player}-{rounds - 1}")

    await asyncio.gather(*(hammer(c, p) for c, p in zip(clients, players, strict=True)))
    await clients[0].send(type="GET_STATE", id="final")
    final = await clients[0].until(lambda f: f.get("re") == "final")
    last = final["version"]
    assert last == len(players) + len(players) * rounds

    def shadow_caught_up() -> bool:
        return last in mirror.recorder.broadcasts("shadow", "race")

    await wait_until(
        shadow_caught_up, within=timeout(20), what="the shadow to reach the last version"
    )
    primary = mirror.recorder.broadcasts("primary", "race")
    shadow = mirror.recorder.broadcasts("shadow", "race")
    compared = 0
    for version, state in primary.items():
        if version in shadow:
            assert normalise(shadow[version]) == normalise(state), f"version {version}"
            compared += 1
    assert compared >= len(players) * rounds  # (joins before a client connected are unseen)
    assert not [n for n in mirror.recorder.notices if n.kind == "not_comparable"]


async def test_a_primary_refusal_is_relayed_with_its_close_code(mirror: ProxyUnderTest):
    client = await Client.open(f"{mirror.url}/v1/games/g1")
    answer = await client.request(type="CONNECT", id="c", token="forged")
    assert answer["code"] == "UNAUTHENTICATED"
    assert await client.closed() == 4401


async def test_an_oversized_frame_gets_the_primarys_1009(mirror: ProxyUnderTest):
    client = await Client.open(f"{mirror.url}/v1/games/g1")
    await client.request(type="CONNECT", id="c", token=token("alice"))
    await client.ws.send("x" * 70_000)
    assert await client.closed() == 1009


async def test_an_unreachable_primary_refuses_the_handshake_with_502(
    tmp_path: Path, new_server: StateServer
):
    under_test = await start_proxy(tmp_path, "ws://127.0.0.1:9", new_server.url)
    try:
        with pytest.raises(InvalidStatus) as refused:
            await connect(f"{under_test.url}/v1/games/g1", open_timeout=timeout(), proxy=None)
        assert refused.value.response.status_code == 502
    finally:
        await stop_proxy(under_test)


async def test_a_primary_404_is_relayed_as_404(mirror: ProxyUnderTest):
    with pytest.raises(InvalidStatus) as refused:
        await connect(f"{mirror.url}/elsewhere", open_timeout=timeout(), proxy=None)
    assert refused.value.response.status_code == 404
    # the client's own answer, not a fault of the primary (which would page after a flip)
    registry = mirror.proxy.metrics.registry
    failures = "stateshift_proxy_upstream_connect_failures_total"
    labels = {"upstream": "old", "role": "primary"}
    assert registry.get_sample_value(failures, {**labels, "reason": "rejected"}) == 1.0
    assert registry.get_sample_value(failures, {**labels, "reason": "refused"}) == 0.0


async def test_a_primary_that_dies_ends_the_client_connection(
    tmp_path: Path, new_server: StateServer
):
    primary = ServerProcess(
        [
            "legacy",
            "--port",
            "0",
            "--data",
            str(tmp_path / "dying.jsonl"),
            "--fault",
            "crash-after:2",
        ],
        tmp_path / "dying.log",
    )
    url = primary.start()
    under_test = await start_proxy(tmp_path, url, new_server.url)
    try:
        client = await Client.open(f"{under_test.url}/v1/games/g1")
        await client.request(type="CONNECT", id="c", token=token("alice"))
        await client.request(type="HEARTBEAT", id="h")
        await client.send(type="HEARTBEAT", id="h2")  # the primary exits on this one
        async with asyncio.timeout(timeout(15)):
            code = await client.closed()
        assert code in (1006, None)  # what a client sees when its server vanishes
    finally:
        await stop_proxy(under_test)
        primary.stop()


async def test_path_query_subprotocol_headers_and_binary_frames_pass_through(
    tmp_path: Path, new_server: StateServer
):
    seen: dict[str, Any] = {}

    async def echo(ws: ServerConnection) -> None:
        assert ws.request is not None
        seen["path"] = ws.request.path
        seen["xff"] = ws.request.headers.get("X-Forwarded-For")
        seen["auth"] = ws.request.headers.get("Authorization")
        async for message in ws:
            await ws.send(message)

    def pick(ws: ServerConnection, offered: Any) -> Any:
        return "game.v2" if "game.v2" in offered else None

    upstream = await serve(echo, "127.0.0.1", 0, select_subprotocol=pick)
    port = upstream.sockets[0].getsockname()[1]
    under_test = await start_proxy(tmp_path, f"ws://127.0.0.1:{port}", new_server.url)
    try:
        async with connect(
            f"{under_test.url}/v1/games/g1?token=abc",
            subprotocols=["game.v1", "game.v2"],  # type: ignore[list-item]
            additional_headers={"Authorization": "Bearer t"},
            proxy=None,
        ) as ws:
            assert ws.subprotocol == "game.v2"
            await ws.send(b"\x01\x02")
            assert await ws.recv() == b"\x01\x02"
            await ws.send("text")
            assert await ws.recv() == "text"
        assert seen == {"path": "/v1/games/g1?token=abc", "xff": "127.0.0.1", "auth": "Bearer t"}
    finally:
        await stop_proxy(under_test)
        upstream.close()
        await upstream.wait_closed()


async def test_the_route_survives_a_proxy_restart(
    tmp_path: Path, old_server: LegacyServer, new_server: StateServer
):
    first = await start_proxy(tmp_path, old_server.url, new_server.url, primary="new")
    assert first.proxy.route.primary == "new"
    await stop_proxy(first)
    again = await start_proxy(tmp_path, old_server.url, new_server.url, primary="old")
    try:
        assert again.proxy.route.primary == "new"  # the persisted route wins
    finally:
        await stop_proxy(again)


async def control(
    under_test: ProxyUnderTest, tok: str | None, **frame: Any
) -> tuple[list[Any], int | None]:
    """Send CONNECT (with `tok`) then `frame` on the control channel; return answers and close."""
    client = await Client.open(f"ws://127.0.0.1:{under_test.control.port}/v1/control")
    answers = [await client.request(type="CONNECT", id="c", token=tok)]
    if answers[0]["type"] == "CONNECTED":
        answers.append(await client.request(id="x", **frame))
        await client.ws.close()
        return answers, 1000
    return answers, await client.closed()


async def test_the_control_plane_needs_an_admin_token(mirror: ProxyUnderTest):
    answers, code = await control(mirror, None, type="STATUS")
    assert (answers[0]["code"], code) == ("UNAUTHENTICATED", 4401)
    answers, code = await control(mirror, token("alice"), type="STATUS")
    assert (answers[0]["code"], code) == ("FORBIDDEN", 4403)
    answers, _ = await control(mirror, token("ops", role="admin"), type="STATUS")
    status = answers[1]["status"]
    assert status["route"] == {"primary": "old", "mirroring": True, "ramp": None}


async def test_health_and_metrics_are_served_on_the_admin_port(mirror: ProxyUnderTest):
    client = await Client.open(f"{mirror.url}/v1/games/g1")
    await client.request(type="CONNECT", id="c", token=token("alice"))
    await client.request(type="HEARTBEAT", id="h")
    reader, writer = await asyncio.open_connection("127.0.0.1", mirror.control.port)
    writer.write(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
    body = (await asyncio.wait_for(reader.read(1 << 20), timeout())).decode()
    writer.close()
    assert 'stateshift_route_primary{upstream="old"} 1.0' in body
    assert (
        'stateshift_proxy_frames_total{direction="client",role="primary",upstream="old"} 2.0'
        in body
    )
    assert "stateshift_upstream_latency_seconds_bucket" in body
    assert "stateshift_proxy_client_connections 1.0" in body


async def http_get(url: str, path: str) -> tuple[int, bytes, str]:
    """A plain HTTP GET on a proxy's client port: (status, body, content type)."""
    host, port = url.removeprefix("ws://").rsplit(":", 1)
    reader, writer = await asyncio.open_connection(host, int(port))
    try:
        writer.write(f"GET {path} HTTP/1.1\r\nHost: {host}\r\n\r\n".encode())
        async with asyncio.timeout(timeout()):
            head = await reader.readuntil(b"\r\n\r\n")
            fields = dict(
                line.split(": ", 1) for line in head.decode("latin-1").split("\r\n")[1:] if line
            )
            length = fields.get("Content-Length")
            body = await (reader.read() if length is None else reader.readexactly(int(length)))
        return int(head.split(b" ", 2)[1]), body, fields.get("Content-Type", "")
    finally:
        writer.close()


async def test_a_health_check_on_the_client_port_gets_the_primarys_answer(
    mirror: ProxyUnderTest,
):
    status, body, _ = await http_get(mirror.url, "/healthz")
    assert (status, body) == (200, b"ok")


async def test_a_primarys_http_answer_in_several_segments_is_relayed_whole(
    tmp_path: Path, new_server: StateServer
):
    """The primary writes its health answer in three writes, a pause between: the client
    gets it all, with the primary's status, reason and content type."""
    body = b'{"status": "degraded", "detail": "' + b"x" * 3000 + b'"}'

    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        head = (
            "HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
        )
        try:
            for n, part in enumerate((head.encode(), body[:1000], body[1000:])):
                if n:
                    await asyncio.sleep(0.05)
                writer.write(part)
                await writer.drain()
        finally:
            # at once: the proxy reads the answer to its Content-Length and goes on (the
            # test may end before a pause here would, leaving this connection unclosed)
            writer.close()

    primary = await asyncio.start_server(answer, "127.0.0.1", 0)
    port = primary.sockets[0].getsockname()[1]
    under_test = await start_proxy(tmp_path, f"ws://127.0.0.1:{port}", new_server.url)
    try:
        status, got, content_type = await http_get(under_test.url, "/healthz")
        assert (status, got, content_type) == (503, body, "application/json")
    finally:
        await stop_proxy(under_test)
        primary.close()
        await primary.wait_closed()
