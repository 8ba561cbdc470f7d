"""Minting of signed client tokens (JWT, HS256) for scripts, tests and the load generator.

Verification is deliberately not here: each server verifies tokens with its own code, so
that mirroring one against the other can reveal a bug in either.
"""

from __future__ import annotations

import time
from collections.abc import Sequence

import jwt

SECRET_ENV = "STATESHIFT_SECRET"
ROLES = ("player", "observer", "admin")


def mint_token(
    secret: str,
    sub: str,
    role: str,
    games: Sequence[str] = ("*",),
    ttl: float = 3600.0,
    *,
    now: float | None = None,
) -> str:
    """An HS256 JWT for `sub` with `role`, the `games` it may open, expiring after `ttl` s."""
    if role not in ROLES:
        raise ValueError(f"role must be one of {', '.join(ROLES)}, not {role!r}")
    issued = time.time() if now is None else now
    claims = {
        "sub": sub,
        "role": role,
        "games": list(games),
        "iat": int(issued),
        "exp": int(issued + ttl),
    }
    return jwt.encode(claims, secret, algorithm="HS256")
