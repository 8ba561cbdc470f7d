"""The limits the suite expects the server under test to apply.

PROTOCOL.md fixes the defaults (rate 50/s, burst 100, CONNECT within 10 s, idle 60 s, frames
up to 65,536 bytes); a server started with other values is judged against those values.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class SuiteConfig:
    """Expected server limits; times in seconds."""

    rate: float = 50.0
    burst: int = 100
    connect_timeout: float = 10.0
    idle_timeout: float = 60.0
    max_frame: int = 65536
    # Bounds on the suite itself, not on the server.
    concurrency: int = 16
    answer_timeout: float = 5.0
    check_timeout: float = 30.0

    def timeout_for(self, slow: bool) -> float:
        """The bound on one check: a hang is a failure, never a hang of the suite."""
        if not slow:
            return self.check_timeout
        # slow checks wait for the server's own deadlines (idle, CONNECT), up to three idle
        # periods (note 38), with margin
        return self.check_timeout + 4 * max(self.connect_timeout, self.idle_timeout)
