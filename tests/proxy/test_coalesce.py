"""Shadow copies that wait to share a write (`shadow_coalesce`): a copy with a place in its
game's order (a change, a read at a version) goes at once with what waited before it, the rest
go when the window ends, and a flip sends what waits before it swaps the roles (a copy never
reaches the new primary)."""

from __future__ import annotations

from pathlib import Path

from proxy.route import Route
from tests.proxy.conftest import Client, Stack, start_stack, token
from tests.support import timeout, wait_until

#: longer than any test: a copy that waits for the window is never written by it here
FOREVER = 3600.0


def shadow_answers(stack: Stack) -> list[str]:
    """The message ids the shadow answered, in the order the proxy read them."""
    return [
        str(record.msg["re"])
        for record in stack.recorder.records
        if record.role == "shadow" and record.msg is not None and "re" in record.msg
    ]


async def connected(stack: Stack, game: str, player: str) -> Client:
    client = await Client.open(f"{stack.proxy.url}/v1/games/{game}")
    answer = await client.request(type="CONNECT", id="c", token=token(player))
    assert answer["type"] == "CONNECTED", answer
    return client


async def test_a_change_or_a_read_takes_the_copies_waiting_before_it_along_at_once(
    tmp_path: Path,
):
    async with start_stack(tmp_path, shadow_coalesce=FOREVER) as stack:
        client = await connected(stack, "g1", "alice")  # CONNECT joins: it changes state
        await wait_until(lambda: "c" in shadow_answers(stack), what="the shadow's CONNECTED")
        for n in range(3):
            assert (await client.request(type="HEARTBEAT", id=f"h{n}"))["type"] == "HEARTBEAT_ACK"
        assert shadow_answers(stack) == ["c"]  # the heartbeats' copies wait for the window
        assert (await client.request(type="GET_STATE", id="s1"))["type"] == "STATE"
        await wait_until(lambda: "s1" in shadow_answers(stack), what="the shadow's STATE")
        # in the connection's order: what waited went first, in the same write
        assert shadow_answers(stack) == ["c", "h0", "h1", "h2", "s1"]
        await client.request(type="HEARTBEAT", id="h3")
        answer = await client.request(
            type="STATE_UPDATE", id="u1", updates={"score_deltas": {"alice": 1}}
        )
        assert answer["type"] == "ACK", answer
        await wait_until(lambda: "u1" in shadow_answers(stack), what="the shadow's ACK")
        assert shadow_answers(stack)[5:] == ["h3", "u1"]
        await client.ws.close()


async def test_copies_that_wait_are_written_when_the_window_ends(tmp_path: Path):
    async with start_stack(tmp_path, shadow_coalesce=0.05) as stack:
        client = await connected(stack, "g1", "alice")
        for n in range(10):
            await client.request(type="HEARTBEAT", id=f"h{n}")
        wanted = ["c"] + [f"h{n}" for n in range(10)]
        await wait_until(lambda: shadow_answers(stack) == wanted, what="every shadow answer")
        sent = stack.proxy.metrics.frames.labels("client", "new", "shadow").value
        assert sent == len(wanted)
        await client.ws.close()


async def test_a_flip_writes_the_waiting_copies_to_the_shadow_before_it_swaps(tmp_path: Path):
    async with start_stack(tmp_path, switchboard=True, shadow_coalesce=FOREVER) as stack:
        client = await connected(stack, "g1", "alice")
        await wait_until(lambda: "c" in shadow_answers(stack), what="the shadow's CONNECTED")
        for n in range(3):
            await client.request(type="HEARTBEAT", id=f"h{n}")
        prepared = await stack.board.prepare(Route(primary="new"))
        await stack.board.commit(prepared.token)
        assert stack.proxy.route.primary == "new"
        # the old shadow (now primary) answered the copies before the swap, as the shadow
        assert shadow_answers(stack)[:4] == ["c", "h0", "h1", "h2"]
        shadow_upstreams = {
            record.upstream
            for record in stack.recorder.records
            if record.role == "shadow" and record.msg is not None and record.msg.get("re") == "h2"
        }
        assert shadow_upstreams == {"new"}
        # and the client got exactly one answer per frame: none of the copies' answers
        answer = await client.request(type="HEARTBEAT", id="after")
        assert answer["re"] == "after", answer
        assert [frame.get("re") for frame in client.frames] == ["c", "h0", "h1", "h2", "after"]
        await client.ws.close()


async def test_without_a_window_every_copy_goes_in_its_turn(tmp_path: Path):
    async with start_stack(tmp_path, shadow_coalesce=0.0) as stack:
        client = await connected(stack, "g1", "alice")
        await client.request(type="HEARTBEAT", id="h0")
        await wait_until(lambda: shadow_answers(stack) == ["c", "h0"], within=timeout(10))
        await client.ws.close()
