"""Shared fixtures of the comparator's tests."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from legacy.service import LegacyServer
from server.app import StateServer
from tests.proxy.conftest import start_legacy, start_new


@pytest.fixture
async def servers(tmp_path: Path) -> AsyncIterator[tuple[LegacyServer, StateServer]]:
    """The reference old server and the new server, both empty."""
    old = await start_legacy(tmp_path)
    new = await start_new(tmp_path)
    yield old, new
    await new.stop()
    await old.stop()


def game_state(game_id: str, **settings: str) -> dict[str, Any]:
    """A game's state as the servers keep it (version 3), with these settings."""
    return {
        "game_id": game_id,
        "status": "waiting",
        "current_player": None,
        "scores": {"p": 1},
        "timer": {"p": 1000},
        "settings": settings,
        "version": 3,
        "updated_at": "2026-11-26T10:00:00.000Z",
    }
