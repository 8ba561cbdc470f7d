"""`stateshift.control.ControlClient` against a real proxy's control plane, plus the failures
it must turn into `ControlError`: refused tokens, unknown commands, unreachable or silent
peers (bounded waits)."""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from websockets.asyncio.server import ServerConnection, serve

from stateshift.control import ControlClient, ControlError, with_path
from tests.proxy.conftest import (
    ProxyUnderTest,
    start_legacy,
    start_new,
    start_proxy,
    stop_proxy,
    token,
)
from tests.support import timeout


@pytest.fixture
async def proxy(tmp_path: Path) -> AsyncIterator[ProxyUnderTest]:
    old = await start_legacy(tmp_path)
    new = await start_new(tmp_path)
    under_test = await start_proxy(tmp_path, old.url, new.url)
    yield under_test
    await stop_proxy(under_test)
    await new.stop()
    await old.stop()


def test_with_path_adds_the_path_only_when_there_is_none() -> None:
    assert with_path("ws://h:1", "/v1/control") == "ws://h:1/v1/control"
    assert with_path("ws://h:1/", "/v1/control") == "ws://h:1/v1/control"
    assert with_path("ws://h:1/other", "/v1/control") == "ws://h:1/other"


async def test_status_is_answered_with_the_proxys_figures(proxy: ProxyUnderTest) -> None:
    async with ControlClient(proxy.control.url, token("ops", "admin")) as client:
        assert client.actor == "ops"
        answer = await client.request("STATUS")
        route = await client.request("ROUTE")
    assert answer["type"] == "STATUS"
    assert answer["status"]["route"]["primary"] == "old"
    assert route["route"]["primary"] == "old"


async def test_requests_issued_at_once_each_get_their_answer(proxy: ProxyUnderTest) -> None:
    async with ControlClient(proxy.control.url, token("ops", "admin")) as client:
        answers = await asyncio.gather(*(client.request("HISTORY", limit=n) for n in (1, 2, 3)))
    assert [a["type"] for a in answers] == ["HISTORY"] * 3


async def test_an_error_answer_raises_with_its_code(proxy: ProxyUnderTest) -> None:
    async with ControlClient(proxy.control.url, token("ops", "admin")) as client:
        with pytest.raises(ControlError) as bad:
            await client.request("HISTORY", limit=0)
        assert bad.value.code == "BAD_MESSAGE"
        with pytest.raises(ControlError) as unknown:
            await client.request("NO_SUCH_COMMAND")
        assert unknown.value.code == "UNKNOWN_TYPE"
        assert (await client.request("STATUS"))["type"] == "STATUS"  # still usable


@pytest.mark.parametrize(
    ("admin_token", "code"),
    [("not-a-jwt", "UNAUTHENTICATED"), (token("alice", "player"), "FORBIDDEN")],
)
async def test_a_refused_token_raises_on_entry(
    proxy: ProxyUnderTest, admin_token: str, code: str
) -> None:
    with pytest.raises(ControlError) as refused:
        async with ControlClient(proxy.control.url, admin_token):
            pass
    assert refused.value.code == code


async def test_a_closed_port_is_unreachable() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    with pytest.raises(ControlError) as unreachable:
        async with ControlClient(f"ws://127.0.0.1:{port}", token("ops", "admin"), timeout=2):
            pass
    assert unreachable.value.code == "UNREACHABLE"


async def test_a_silent_peer_times_out_within_the_bound() -> None:
    async def silent(ws: ServerConnection) -> None:
        await ws.wait_closed()

    async with serve(silent, "127.0.0.1", 0) as server:
        port = server.sockets[0].getsockname()[1]
        started = time.monotonic()
        with pytest.raises(ControlError) as silent_error:
            async with ControlClient(f"ws://127.0.0.1:{port}", "t", timeout=0.2):
                pass
        assert silent_error.value.code == "TIMEOUT"
        assert time.monotonic() - started < timeout(5)


async def test_a_peer_closing_mid_request_is_unreachable() -> None:
    async def closing(ws: ServerConnection) -> None:
        await ws.recv()
        await ws.send('{"type": "CONNECTED", "re": null}')  # an answer to nobody
        await ws.close(1011, "gone")

    async with serve(closing, "127.0.0.1", 0) as server:
        port = server.sockets[0].getsockname()[1]
        with pytest.raises(ControlError) as lost:
            async with ControlClient(f"ws://127.0.0.1:{port}", "t", timeout=timeout()):
                pass
    assert lost.value.code == "UNREACHABLE"
    assert lost.value.extra["close_code"] == 1011
