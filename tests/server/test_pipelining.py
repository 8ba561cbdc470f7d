"""Messages handled as they are parsed: pipelined requests from one connection are answered
in request order (note 6), ACKs only after commit, state shown only once committed (note 36),
closes after the answers before them."""

from __future__ import annotations

import asyncio
from typing import Any

import orjson
import pytest
from websockets.exceptions import ConnectionClosed

from server.app import StateServer
from stateshift.tokens import mint_token
from tests.server.conftest import Client, OpenClient
from tests.support import TEST_SECRET, timeout


async def read_frames(client: Client, count: int) -> list[dict[str, Any]]:
    return [await client.recv() for _ in range(count)]


def update(n: int, player: str = "alice", **extra: Any) -> dict[str, Any]:
    return {
        "type": "STATE_UPDATE",
        "id": f"u{n}",
        "updates": {"score_deltas": {player: 1}},
        **extra,
    }


async def test_pipelined_updates_get_acks_in_request_order_with_consecutive_versions(
    open_client: OpenClient,
):
    sender = await open_client()
    await sender.connect("alice")
    watcher = await open_client()
    await watcher.connect("bob")
    assert (await sender.recv())["version"] == 2  # bob's join
    count = 60
    for n in range(count):  # none waits for an answer
        await sender.send(**update(n))
    frames = await read_frames(sender, 2 * count)
    acks = [f for f in frames if f["type"] == "ACK"]
    assert [f["re"] for f in acks] == [f"u{n}" for n in range(count)]
    assert [f["version"] for f in acks] == list(range(3, 3 + count))
    # on the sender's connection each ACK comes right before its own broadcast
    for ack, state in zip(frames[::2], frames[1::2], strict=True):
        assert (ack["type"], state["type"]) == ("ACK", "STATE")
        assert state["version"] == ack["version"]
    seen = [f["version"] for f in await read_frames(watcher, count)]
    assert seen == list(range(3, 3 + count))


async def test_get_state_right_after_an_update_answers_after_its_ack_and_shows_it(
    open_client: OpenClient,
):
    client = await open_client()
    await client.connect("alice")
    await client.send(**update(1))
    await client.send(type="GET_STATE", id="s")
    ack, broadcast, answer = await read_frames(client, 3)
    assert ack == {"type": "ACK", "re": "u1", "version": 2}
    assert (broadcast["type"], broadcast.get("re"), broadcast["version"]) == ("STATE", None, 2)
    assert (answer["type"], answer["re"], answer["version"]) == ("STATE", "s", 2)
    assert answer["state"]["scores"] == {"alice": 1}


async def test_a_heartbeat_behind_a_pending_update_is_answered_after_the_ack(
    open_client: OpenClient,
):
    client = await open_client()
    await client.connect("alice")
    await client.send(**update(1))
    await client.send(type="HEARTBEAT", id="h")
    await client.send(**update(2))
    frames = await read_frames(client, 5)
    assert [(f["type"], f.get("re")) for f in frames] == [
        ("ACK", "u1"),
        ("STATE", None),
        ("HEARTBEAT_ACK", "h"),
        ("ACK", "u2"),
        ("STATE", None),
    ]


async def test_a_refusal_behind_pending_updates_is_decided_on_committed_state_in_order(
    open_client: OpenClient,
):
    """The CONFLICT waits for the pending change (note 36); the update after it waits for
    the CONFLICT and still applies."""
    client = await open_client()
    await client.connect("alice")
    await client.send(**update(1))
    await client.send(**update(2, expected_version=1))  # stale once u1 is in
    await client.send(**update(3, expected_version=2))
    frames = [f for f in await read_frames(client, 5) if f["type"] != "STATE"]
    assert frames == [
        {"type": "ACK", "re": "u1", "version": 2},
        {
            "type": "ERROR",
            "re": "u2",
            "code": "CONFLICT",
            "message": frames[1]["message"],
            "version": 2,
        },
        {"type": "ACK", "re": "u3", "version": 3},
    ]


async def test_messages_sent_before_connected_are_handled_after_connect(
    open_client: OpenClient,
):
    client = await open_client()
    token = mint_token(TEST_SECRET, "alice", "player", ("*",))
    await client.send(type="CONNECT", id="c", token=token)
    await client.send(type="HEARTBEAT", id="h")
    await client.send(**update(1))
    frames = await read_frames(client, 4)
    assert [(f["type"], f.get("re")) for f in frames] == [
        ("CONNECTED", "c"),
        ("HEARTBEAT_ACK", "h"),
        ("ACK", "u1"),
        ("STATE", None),
    ]


async def test_disconnect_behind_pending_updates_answers_them_then_closes_1000(
    open_client: OpenClient,
):
    client = await open_client()
    await client.connect("alice")
    await client.send(**update(1))
    await client.send(**update(2))
    await client.send(type="DISCONNECT", id="d")
    await client.send(**update(3))  # after DISCONNECT: not processed
    frames = await read_frames(client, 5)
    assert [(f["type"], f.get("re")) for f in frames] == [
        ("ACK", "u1"),
        ("STATE", None),
        ("ACK", "u2"),
        ("STATE", None),
        ("DISCONNECTED", "d"),
    ]
    with pytest.raises(ConnectionClosed):
        await client.recv()
    assert client.ws.close_code == 1000


async def test_a_fragmented_message_is_handled_whole(open_client: OpenClient):
    client = await open_client()
    await client.connect("alice")
    await client.ws.send(['{"type": "HEART', 'BEAT", "id": "h"}'])
    assert (await client.recv())["type"] == "HEARTBEAT_ACK"


async def test_invalid_utf8_in_a_text_frame_closes_1007(open_client: OpenClient):
    client = await open_client()
    await client.connect("alice")
    await client.ws.send(b'{"type": "HEARTBEAT", "id": "\xff"}', text=True)
    with pytest.raises(ConnectionClosed):
        await client.recv()
    assert client.ws.close_code == 1007


async def test_more_pipelined_updates_than_the_bound_are_all_answered_in_order(
    server: StateServer, open_client: OpenClient
):
    """Past a bound of waiting answers the connection is no longer read (backpressure);
    nothing is lost: every update is answered, in order."""
    client = await open_client()
    await client.connect("alice")
    count = 95  # above the bound of 64 waiting answers, within the burst of 100
    async with asyncio.timeout(timeout()):
        for n in range(count):
            await client.send(**update(n))
    acks = [f for f in await read_frames(client, 2 * count) if f["type"] == "ACK"]
    assert [f["version"] for f in acks] == list(range(2, 2 + count))
    assert all(not conn.answers and not conn.backlog for conn in server.conns)


def masked_text(payload: bytes, mask: bytes = b"\x01\x02\x03\x04") -> bytes:
    """A final, masked client text frame, as a client puts it on the wire."""
    size = len(payload)
    header = bytes((0x81, 0x80 | size)) if size < 126 else bytes((0x81, 0xFE)) + size.to_bytes(2)
    body = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
    return header + mask + body


async def test_frames_split_or_joined_across_tcp_segments_are_each_handled_once(
    open_client: OpenClient,
):
    """Whole frames in one segment, a frame split inside its header and its payload, a ping
    between frames: every message is answered once, in order."""
    client = await open_client()
    await client.connect("alice")
    transport = client.ws.transport
    beat = [masked_text(b'{"type": "HEARTBEAT", "id": "h%d"}' % n) for n in range(5)]
    long_id = "x" * 60
    padded = masked_text(
        b'{"type": "HEARTBEAT", "id": "%s", "pad": "%s"}' % (long_id.encode(), b"p" * 200)
    )
    ping = bytes((0x89, 0x80)) + b"\x00\x00\x00\x00"  # masked, empty payload
    transport.write(beat[0] + beat[1])  # two whole frames in one segment
    for chunk in (padded[:1], padded[1:3], padded[3:9], padded[9:50], padded[50:]):
        transport.write(chunk)  # one frame (16-bit length) in five segments
        await asyncio.sleep(0.005)  # let the server read each part (the outcome is the same)
    transport.write(beat[2] + ping + beat[3] + beat[4][:4])
    transport.write(beat[4][4:])
    ids = [(await client.recv())["re"] for _ in range(6)]
    assert ids == ["h0", "h1", long_id, "h2", "h3", "h4"]


async def test_reading_pauses_past_the_bound_and_resumes_when_answers_leave(
    server: StateServer, open_client: OpenClient
):
    server.settings.max_waiting = 4
    client = await open_client()
    await client.connect("alice")
    count = 60
    client.ws.transport.write(b"".join(masked_text(orjson.dumps(update(n))) for n in range(count)))
    acks = [f for f in await read_frames(client, 2 * count) if f["type"] == "ACK"]
    assert [f["re"] for f in acks] == [f"u{n}" for n in range(count)]
    # one segment of 60 updates went past the bound of 4
    assert sum(conn.pauses for conn in server.conns) > 0
    assert (await client.request(type="HEARTBEAT", id="h"))["type"] == "HEARTBEAT_ACK"
    assert not any(conn.paused for conn in server.conns)
