"""What the dashboards' end-to-end tests share: both servers as subprocesses."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.support import ServerProcess, proxy_args


@dataclass
class Servers:
    old: ServerProcess
    new: ServerProcess
    tmp: Path

    def proxy(self, name: str, *extra: str) -> ServerProcess:
        """A `stateshift proxy` (not started) in front of both servers, state in tmp."""
        return ServerProcess(
            proxy_args(
                self.old.url, self.new.url, self.tmp / f"{name}.db", "--sweep-interval", "0", *extra
            ),
            self.tmp / f"{name}.log",
        )


@pytest.fixture
def servers(tmp_path: Path) -> Iterator[Servers]:
    old = ServerProcess(
        ["legacy", "--port", "0", "--data", str(tmp_path / "old.jsonl")], tmp_path / "old.log"
    )
    new = ServerProcess(
        ["serve", "--port", "0", "--db", str(tmp_path / "new.db")], tmp_path / "new.log"
    )
    try:
        old.start()
        new.start()
        yield Servers(old, new, tmp_path)
    finally:
        new.stop()
        old.stop()
