"""How the conformance tests start each server: short deadlines so the slow checks stay short."""

from __future__ import annotations

from pathlib import Path

from conformance.config import SuiteConfig
from tests.support import timeout

KINDS = ("new", "legacy")
# The servers run with short deadlines; the suite is told the same values. Its own waits
# (an answer, a whole check) scale with STATESHIFT_TEST_TIMEOUT_SCALE like every test wait.
# The ping interval stays long (the default 20 s): note 38 makes a server ping at least
# three times per idle period anyway, and the idle checks verify that it does.
DEADLINE_FLAGS = ["--connect-timeout", "1", "--idle-timeout", "2", "--ping-interval", "20"]
CONFIG = SuiteConfig(
    connect_timeout=1.0, idle_timeout=2.0, answer_timeout=timeout(5), check_timeout=timeout(30)
)


def server_args(kind: str, tmp: Path, *extra: str) -> list[str]:
    """`stateshift …` arguments starting the `kind` server on a free port with data in `tmp`."""
    if kind == "new":
        return ["serve", "--port", "0", "--db", str(tmp / "new.db"), *DEADLINE_FLAGS, *extra]
    if kind == "legacy":
        return ["legacy", "--port", "0", "--data", str(tmp / "legacy.log"), *DEADLINE_FLAGS, *extra]
    raise ValueError(f"unknown server kind {kind!r}")


def cli_flags() -> list[str]:
    """The `stateshift conformance` flags matching `DEADLINE_FLAGS`."""
    return ["--connect-timeout", "1", "--idle-timeout", "2"]
