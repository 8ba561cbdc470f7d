"""`compare.admin.AdminClient` against real servers on loopback: paging, reads, imports,
typed errors, pipelined requests, rate limits and a connection lost to one bad request."""

from __future__ import annotations

import asyncio
import socket
from pathlib import Path
from typing import Any

import pytest

from compare.admin import AdminClient, AdminError, AdminUnreachable
from legacy.service import LegacyServer
from server.app import ServerSettings, StateServer
from tests.proxy.conftest import start_legacy, start_new, token
from tests.support import TEST_SECRET

ADMIN = token("ops", "admin")


def state(game_id: str, version: int = 3, **changes: Any) -> dict[str, Any]:
    """A valid full state with two players."""
    base: dict[str, Any] = {
        "game_id": game_id,
        "status": "active",
        "current_player": "alice",
        "scores": {"alice": 5, "bob": -2},
        "timer": {"alice": 1000, "bob": 2000},
        "settings": {"initial_time_ms": "60000", "mode": "blitz"},
        "version": version,
        "updated_at": "2026-11-26T10:00:00.123Z",
    }
    base.update(changes)
    return base


@pytest.fixture(params=["new", "legacy"])
async def server_url(request: pytest.FixtureRequest, tmp_path: Path) -> Any:
    """Each kind of server, in-process on port 0."""
    server: StateServer | LegacyServer
    server = await (start_new(tmp_path) if request.param == "new" else start_legacy(tmp_path))
    yield server.url
    await server.stop()


async def test_import_then_get_state_returns_the_state_exactly(server_url: str) -> None:
    async with AdminClient(server_url, ADMIN) as admin:
        assert await admin.import_state(state("g1", 7)) == 7
        assert await admin.get_state("g1") == state("g1", 7)


async def test_get_state_of_an_unknown_game_is_none(server_url: str) -> None:
    async with AdminClient(server_url, ADMIN) as admin:
        assert await admin.get_state("nobody-here") is None


async def test_listing_pages_through_every_game_in_id_order(server_url: str) -> None:
    ids = [f"g{n:02d}" for n in range(7)]
    async with AdminClient(server_url, ADMIN) as admin:
        for n, game_id in enumerate(reversed(ids)):
            await admin.import_state(state(game_id, n + 1))
        first, following = await admin.list_games(limit=3)
        assert [g for g, _ in first] == ids[:3]
        assert following == "g02"
        pages = [page async for page in admin.all_games(page_size=3)]
        assert [len(page) for page in pages] == [3, 3, 1]
        assert [g for page in pages for g, _ in page] == ids
        listing = await admin.listing()
    assert listing == {game_id: 7 - n for n, game_id in enumerate(ids)}


async def test_requests_issued_at_once_each_get_their_own_answer(server_url: str) -> None:
    ids = [f"p{n}" for n in range(20)]
    async with AdminClient(server_url, ADMIN) as admin:
        versions = await asyncio.gather(
            *(admin.import_state(state(g, n + 1)) for n, g in enumerate(ids))
        )
        states = await asyncio.gather(*(admin.get_state(g) for g in ids))
    assert versions == list(range(1, 21))
    assert [s["game_id"] for s in states if s is not None] == ids


async def test_a_refused_import_raises_its_wire_code(server_url: str) -> None:
    async with AdminClient(server_url, ADMIN) as admin:
        with pytest.raises(AdminError) as refused:
            await admin.import_state(state("g1", scores={"alice": 1}))  # timer keys differ
        assert refused.value.code == "INVALID_STATE"
        assert not isinstance(refused.value, AdminUnreachable)
        assert await admin.get_state("g1") is None  # still usable


async def test_a_player_token_is_refused_on_connect(server_url: str) -> None:
    with pytest.raises(AdminError) as refused:
        async with AdminClient(server_url, token("alice")):
            pass
    assert refused.value.code == "FORBIDDEN"


async def test_a_closed_port_is_unreachable() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    with pytest.raises(AdminUnreachable) as unreachable:
        async with AdminClient(f"ws://127.0.0.1:{port}", ADMIN, timeout=2):
            pass
    assert unreachable.value.code == "UNREACHABLE"


async def test_a_request_that_closes_the_connection_fails_alone(server_url: str) -> None:
    """A state too large for one frame closes the connection (1009); the next request
    reconnects."""
    huge = state("big", settings={f"k{n}": "x" * 1024 for n in range(64)})
    async with AdminClient(server_url, ADMIN) as admin:
        with pytest.raises(AdminUnreachable) as lost:
            await admin.import_state(huge)
        assert "1009" in lost.value.message
        assert await admin.import_state(state("small")) == 3


async def test_rate_limited_requests_are_retried_after_the_servers_delay(
    tmp_path: Path,
) -> None:
    server = StateServer(
        ServerSettings(db=tmp_path / "slow.db", secret=TEST_SECRET, port=0, rate=200, burst=5)
    )
    await server.start()
    try:
        async with AdminClient(server.url, ADMIN) as admin:
            states = await asyncio.gather(*(admin.get_state(f"none{n}") for n in range(30)))
        assert states == [None] * 30
    finally:
        await server.stop()


async def test_a_long_read_past_the_burst_is_paced_not_refused_request_after_request(
    tmp_path: Path,
) -> None:
    """A sweep reads every game, one after the other, on one connection. Past the burst
    every read was refused once before it went through (the server's delay, then at once
    the next read): as many ERRORs in the server's metrics as reads, enough to close the
    connection 4429 (more than 200 refusals in 10 s) with a few hundred games. The client
    now paces its requests by the time the server says it needs for one message."""
    server = StateServer(
        ServerSettings(db=tmp_path / "paced.db", secret=TEST_SECRET, port=0, rate=200, burst=5)
    )
    await server.start()
    try:
        async with AdminClient(server.url, ADMIN) as admin:
            for n in range(200):
                assert await admin.get_state(f"none{n}") is None
        refused = server.metrics.registry.get_sample_value(
            "stateshift_server_errors_total", {"path": "admin", "code": "RATE_LIMITED"}
        )
        # once per read past the burst (about 195) before; about one in 15 paced
        assert refused is not None
        assert refused <= 40, refused
    finally:
        await server.stop()
