"""Shared fixtures of the comparator's tests."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

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
