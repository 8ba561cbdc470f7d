"""A proxy restart loses neither the route nor the history: a `stateshift proxy` subprocess
with clients connected is flipped to the new server over its control plane, stopped with
SIGTERM (its clients get 1012, "reconnect"), and started again on the same state file and
the same addresses: the clients reconnect to the same URL and carry on where they were, the
route is still `new`, and HISTORY still holds the flip."""

from __future__ import annotations

import asyncio
import signal
import socket
from pathlib import Path

from server.app import StateServer
from stateshift.control import ControlClient
from stateshift.tokens import mint_token
from tests.proxy.conftest import Client, start_legacy, start_new, token
from tests.support import TEST_SECRET, ServerProcess, admin_url, proxy_args, timeout
from tests.switchover.conftest import game_state

ADMIN = mint_token(TEST_SECRET, "restart-engineer", "admin")
PLAYERS = ("ann", "bea", "cid")
GAME = "restarted"


def free_port() -> int:
    """A loopback port free right now (bound to port 0, then released): the proxy is
    started on it twice, so clients can reconnect to the same address."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def join(url: str, name: str) -> tuple[Client, dict]:
    client = await Client.open(f"{url}/v1/games/{GAME}")
    connected = await client.request(type="CONNECT", id="c", token=token(name))
    assert connected["type"] == "CONNECTED", connected
    return client, connected


async def score(client: Client, name: str, msg_id: str) -> None:
    await client.send(type="STATE_UPDATE", id=msg_id, updates={"score_deltas": {name: 1}})
    answer = await client.until(lambda frame: frame.get("re") == msg_id)
    assert answer["type"] == "ACK", answer


async def test_a_restarted_proxy_keeps_its_route_and_history_and_clients_reconnect(
    tmp_path: Path,
):
    old = await start_legacy(tmp_path)
    new: StateServer = await start_new(tmp_path)
    listen, admin = free_port(), free_port()
    proxy = ServerProcess(
        proxy_args(
            old.url,
            new.url,
            tmp_path / "proxy-state.db",
            "--sweep-interval",
            "0",
            listen=f"127.0.0.1:{listen}",
            admin=f"127.0.0.1:{admin}",
        ),
        tmp_path / "proxy.log",
    )
    clients: list[Client] = []
    try:
        url = await asyncio.to_thread(proxy.start)
        assert url == f"ws://127.0.0.1:{listen}"
        admin_http = await asyncio.to_thread(admin_url, proxy)
        control_url = admin_http.replace("http://", "ws://") + "/v1/control"
        for name in PLAYERS:
            client, _ = await join(url, name)
            clients.append(client)
            await score(client, name, "before-flip")

        async with ControlClient(control_url, ADMIN, timeout=timeout()) as control:
            prepared = await control.request(
                "PREPARE", target={"primary": "new"}, token="restart-test-token"
            )
            assert prepared["prepared"]["token"] == "restart-test-token"
            committed = await control.request("COMMIT", token="restart-test-token")
            assert committed["route"]["primary"] == "new"
        for client, name in zip(clients, PLAYERS, strict=True):
            await score(client, name, "after-flip")  # served by the new server now

        # in a thread: the upstream servers run on this test's event loop and must answer the
        # proxy's closes while it shuts down
        assert await asyncio.to_thread(proxy.terminate, signal.SIGTERM) == 0
        codes = [await client.closed() for client in clients]
        assert codes == [1012] * len(PLAYERS)  # "service restart": clients reconnect

        assert await asyncio.to_thread(proxy.start) == url  # same state file, same address
        assert "route from" in proxy.output()  # the persisted route won over --primary old
        clients = []
        for name in PLAYERS:
            client, connected = await join(url, name)
            clients.append(client)
            # the game is where it was: both rounds of updates are in the state
            assert connected["state"]["scores"][name] == 2, connected
        for client, name in zip(clients, PLAYERS, strict=True):
            await score(client, name, "after-restart")
        async with ControlClient(control_url, ADMIN, timeout=timeout()) as control:
            status = (await control.request("STATUS"))["status"]
            events = (await control.request("HISTORY", limit=50))["events"]
        assert status["route"]["primary"] == "new"
        assert status["connections"] == len(PLAYERS)
        (commit,) = [e for e in events if e["kind"] == "commit"]
        assert commit["actor"] == "restart-engineer"
        assert commit["result"] == "ok"
        assert (commit["details"]["from"]["primary"], commit["details"]["to"]["primary"]) == (
            "old",
            "new",
        )
        # every acknowledged update is on the new server (the primary since the flip)
        state = await game_state(new.url, GAME)
        assert state["scores"] == dict.fromkeys(PLAYERS, 3)
        for client in clients:
            await client.request(type="DISCONNECT", id="bye")
            assert await client.closed() == 1000
    finally:
        for client in clients:
            await client.ws.close()
        await asyncio.to_thread(proxy.stop)
        await new.stop()
        await old.stop()
