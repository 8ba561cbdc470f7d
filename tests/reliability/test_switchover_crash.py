"""A flip through the CLI while the new server *crashes* (SIGKILL, no close frames, no
goodbye) in the middle of PREPARE: the flip fails, the route stays on the old server,
forwarding resumes, and the client connected through the proxy carries on without a close.

tests/switchover/test_cli.py covers the same moment with a graceful stop of an in-process
server (its connections closed with 1012); here the new server is a subprocess killed
outright, so the proxy sees its shadow connections vanish (1006) and the verification finds
nobody listening."""

from __future__ import annotations

import contextlib
from pathlib import Path

import pytest

from compare.rules import defaults
from legacy.service import LegacyServer
from proxy.admin import ControlPlane
from proxy.relay import MirrorProxy, ProxySettings
from proxy.route import Route
from proxy.state import ProxyState
from proxy.switch import Switchboard
from proxy.tap import Tap
from tests.proxy.conftest import Client, start_legacy, token
from tests.support import TEST_SECRET, ServerProcess
from tests.switchover.conftest import cli


async def test_a_flip_during_which_the_new_server_is_killed_changes_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    new = ServerProcess(
        ["serve", "--port", "0", "--db", str(tmp_path / "new.db")], tmp_path / "new.log"
    )
    old: LegacyServer = await start_legacy(tmp_path)
    async with contextlib.AsyncExitStack() as exits:
        exits.push_async_callback(old.stop)
        exits.callback(new.stop)
        new_url = new.start()
        state = ProxyState(tmp_path / "proxy.db")
        settings = ProxySettings(
            old_url=old.url,
            new_url=new_url,
            secret=TEST_SECRET,
            state_path=tmp_path / "proxy.db",
            port=0,
            admin_port=0,
        )
        proxy = MirrorProxy(settings, state.load_route(Route()), tap=Tap())
        await proxy.start()
        exits.push_async_callback(proxy.stop)
        control = ControlPlane(proxy, state, TEST_SECRET, port=0)
        await control.start()
        exits.push_async_callback(control.stop)
        board = Switchboard(proxy, control, state, defaults())
        board.start()
        exits.push_async_callback(board.stop)

        client = await Client.open(f"{proxy.url}/v1/games/crash")
        await client.request(type="CONNECT", id="c", token=token("alice"))
        ack = await client.request(
            type="STATE_UPDATE", id="u1", updates={"score_deltas": {"alice": 1}}
        )
        assert ack["type"] == "ACK", ack
        quiesce = board._quiesce

        async def quiesce_then_the_new_server_is_killed() -> None:
            await quiesce()
            new.kill()  # SIGKILL: the kernel closes its sockets, nothing else happens

        monkeypatch.setattr(board, "_quiesce", quiesce_then_the_new_server_is_killed)
        outcome = await cli("flip", "--proxy", control.url, "--force", "--reason", "crash")
        assert outcome.code == 1, outcome
        assert "failed" in outcome.stdout
        assert proxy.route.primary == "old"
        assert proxy.gate.is_set()  # forwarding resumed
        assert len(proxy.sessions) == 1  # the client was not disconnected
        await client.send(type="STATE_UPDATE", id="u2", updates={"score_deltas": {"alice": 1}})
        answer = await client.until(lambda frame: frame.get("re") == "u2")
        assert answer["type"] == "ACK", answer
        events = {(e["kind"], e["result"]) for e in await state.history()}
        assert ("prepare", "failed") in events, events  # the proxy's record
        assert ("abort", "aborted") in events, events  # the CLI's record of giving up
        await client.request(type="DISCONNECT", id="bye")
        assert await client.closed() == 1000
