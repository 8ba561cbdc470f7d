"""The tap: every frame from each upstream, handed to the comparator through a bounded
buffer that never blocks the relay (client frames are not tapped: nothing is compared on
them; the order of the shadow's copies is `proxy.sequencer`'s business).

`offer` is synchronous and O(1): when the consumer falls behind, records are dropped and
counted (the comparator then reports what it could not see) rather than slowing clients.

Two ways to consume: a task awaiting `batch()`, or a `sink` that the relay hands everything
offered so far with `pour()` at the end of each event-loop turn in which it relayed frames
(after every ready socket was relayed): no task wake-up per turn. Either way the consumer
runs on the event loop's thread, between turns of the relay, as a task would.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any


@dataclass(slots=True, init=False)
class TapRecord:
    """One frame seen by the proxy (`__init__` written out: see `proxy.sequencer.Entry`)."""

    conn_id: int
    #: "client" (client -> upstreams) or "upstream" (upstream -> proxy)
    direction: str
    #: "primary" or "shadow" (for client frames: the role of the upstream it went to first)
    role: str
    #: "old" or "new"
    upstream: str
    #: wall-clock time (time.time()) when the proxy saw it
    at: float
    game_id: str | None
    data: str | bytes
    #: the frame parsed, or None when it is not a JSON object
    msg: dict[str, Any] | None

    def __init__(
        self,
        conn_id: int,
        direction: str,
        role: str,
        upstream: str,
        at: float,
        game_id: str | None,
        data: str | bytes,
        msg: dict[str, Any] | None,
    ) -> None:
        self.conn_id = conn_id
        self.direction = direction
        self.role = role
        self.upstream = upstream
        self.at = at
        self.game_id = game_id
        self.data = data
        self.msg = msg


@dataclass(frozen=True, slots=True)
class TapNotice:
    """Something the proxy knows that the comparator must take into account."""

    kind: str  # "not_comparable" | "conn_closed"
    reason: str
    game_id: str | None = None
    conn_id: int | None = None


class Tap:
    """Bounded, non-blocking hand-off from the relay to a consumer task."""

    def __init__(self, capacity: int = 65_536) -> None:
        self.capacity = capacity
        self.dropped = 0
        self._items: deque[TapRecord | TapNotice] = deque()
        self._ready = asyncio.Event()
        #: takes what `pour()` hands over (instead of a task awaiting `batch()`)
        self.sink: Callable[[Iterable[TapRecord | TapNotice]], None] | None = None

    def offer(self, item: TapRecord | TapNotice) -> None:
        """Hand over one record; never blocks, drops (and counts) when full."""
        if len(self._items) >= self.capacity:
            self.dropped += 1
            return
        self._items.append(item)
        if self.sink is None and not self._ready.is_set():
            self._ready.set()

    def pour(self) -> None:
        """Hand everything offered so far to the sink, if there is one."""
        if self.sink is not None and self._items:
            items, self._items = self._items, deque()
            self.sink(items)

    def __len__(self) -> int:
        return len(self._items)

    async def batch(self, limit: int = 4096) -> list[TapRecord | TapNotice]:
        """Wait for records, then return up to `limit` of them, oldest first."""
        while not self._items:
            self._ready.clear()
            await self._ready.wait()
        items = self._items
        if len(items) <= limit:  # the usual case: take them all at once
            self._items = deque()
            return list(items)
        return [items.popleft() for _ in range(limit)]
