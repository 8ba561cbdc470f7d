"""Per-connection rate limiting: a token bucket plus an abuse window (PROTOCOL.md "Limits",
note 25). Pure: the caller passes the time in."""

from __future__ import annotations

import math
from collections import deque


class RateLimiter:
    """`rate` messages per second with a burst of `burst`; more than `abuse_limit` refusals
    within `abuse_window` seconds is abuse."""

    __slots__ = ("_last", "_refusals", "_tokens", "abuse_limit", "abuse_window", "burst", "rate")

    def __init__(
        self,
        rate: float,
        burst: int,
        now: float,
        abuse_limit: int = 200,
        abuse_window: float = 10.0,
    ) -> None:
        self.rate = rate
        self.burst = burst
        self.abuse_limit = abuse_limit
        self.abuse_window = abuse_window
        self._tokens = float(burst)
        self._last = now
        self._refusals: deque[float] = deque(maxlen=abuse_limit + 1)

    def take(self, now: float) -> int:
        """Spend a token: 0 when the message may go on, else the ms until the next token."""
        tokens = min(self.burst, self._tokens + (now - self._last) * self.rate)
        self._last = now
        if tokens >= 1.0:
            self._tokens = tokens - 1.0
            return 0
        self._tokens = tokens
        self._refusals.append(now)
        return max(1, math.ceil((1.0 - tokens) / self.rate * 1000))

    def abusive(self, now: float) -> bool:
        """True when more than `abuse_limit` refusals fell within the last `abuse_window` s."""
        refusals = self._refusals
        return len(refusals) > self.abuse_limit and now - refusals[0] <= self.abuse_window
