"""Routing: which upstream is primary for a game, and whether the other one is mirrored.

Pure. The route is a value; the proxy swaps it whole. A ramp sends a stable share of games
(by a hash of `game_id`, the same on every proxy and across restarts) to the new server as
primary.
"""

from __future__ import annotations

import hashlib
from dataclasses import asdict, dataclass
from typing import Any, Final

UPSTREAMS: Final = ("old", "new")


def other(upstream: str) -> str:
    """The upstream that is not `upstream`."""
    return "new" if upstream == "old" else "old"


def ramp_bucket(game_id: str) -> int:
    """A stable bucket in [0, 10000) for a game id (basis points of the ramp)."""
    digest = hashlib.sha256(game_id.encode()).digest()
    return int.from_bytes(digest[:8], "big") % 10_000


@dataclass(frozen=True, slots=True)
class Route:
    """Who is primary (for every game, or per game under a ramp) and whether to mirror."""

    primary: str = "old"
    mirroring: bool = True
    #: percent of games (0..100) whose primary is `new`; None: `primary` decides for all
    ramp: float | None = None

    def __post_init__(self) -> None:
        if self.primary not in UPSTREAMS:
            raise ValueError(f"primary must be old or new, not {self.primary!r}")
        if self.ramp is not None and not 0.0 <= self.ramp <= 100.0:
            raise ValueError("ramp must be a percentage from 0 to 100")

    def primary_for(self, game_id: str | None) -> str:
        """The primary upstream of a game (admin connections follow `primary`)."""
        if self.ramp is None or game_id is None:
            return self.primary
        return "new" if ramp_bucket(game_id) < self.ramp * 100 else "old"

    def share(self) -> float:
        """Percent of games whose primary is the new server (100 after a full flip)."""
        if self.ramp is not None:
            return self.ramp
        return 100.0 if self.primary == "new" else 0.0

    def share_of(self, upstream: str) -> float:
        """Percent of games whose primary is `upstream` ("old" or "new")."""
        return self.share() if upstream == "new" else 100.0 - self.share()

    def describe(self) -> str:
        """For people: `primary is new, ramp 10% to new, mirroring`."""
        text = f"primary is {self.primary}"
        if self.ramp is not None:
            text += f", ramp {self.ramp:g}% to new"
        return text + (", mirroring" if self.mirroring else ", not mirroring (finalized)")

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Route:
        """Inverse of `to_dict` (unknown keys ignored)."""
        ramp = data.get("ramp")
        return cls(
            primary=str(data.get("primary", "old")),
            mirroring=bool(data.get("mirroring", True)),
            ramp=None if ramp is None else float(ramp),
        )
