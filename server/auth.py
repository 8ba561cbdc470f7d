"""Token verification for `CONNECT` (PROTOCOL.md "Authentication", notes 8-10).

Only HS256 is accepted (`alg: none` and every other algorithm are refused by PyJWT's
`algorithms=` list); `exp`, `sub` and `role` are required, `games` on game paths.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import jwt

from server.errors import Forbidden, Unauthenticated
from server.rules import is_identifier

ROLES = frozenset({"player", "observer", "admin"})


@dataclass(frozen=True, slots=True)
class Claims:
    """What a verified token grants."""

    sub: str
    role: str
    games: frozenset[str]

    def may_open(self, game_id: str) -> bool:
        """True when the token lists `game_id` or `*`."""
        return "*" in self.games or game_id in self.games


def verify(token: object, secret: str, game_id: str | None) -> Claims:
    """Verify a `CONNECT` token for a game path (`game_id`) or the admin path (None)."""
    if not isinstance(token, str) or not token:
        raise Unauthenticated("`token` is missing")
    try:
        claims: dict[str, Any] = jwt.decode(
            token,
            secret,
            algorithms=["HS256"],
            # `aud` is not a claim of the protocol: a token that carries one is not refused
            # for it (PyJWT would, with no audience given), as the old server does not
            options={"require": ["exp", "sub", "role"], "verify_aud": False},
        )
    except jwt.ExpiredSignatureError as exc:
        raise Unauthenticated("the token has expired") from exc
    except jwt.InvalidTokenError as exc:
        raise Unauthenticated("the token is invalid") from exc
    sub, role = claims.get("sub"), claims.get("role")
    if not is_identifier(sub) or not isinstance(role, str) or role not in ROLES:
        raise Unauthenticated("the token's `sub` or `role` is invalid")
    assert isinstance(sub, str)
    assert isinstance(role, str)
    if game_id is None:
        if role != "admin":
            raise Forbidden("the admin path needs an admin token")
        return Claims(sub, role, frozenset())
    games = claims.get("games")
    if not isinstance(games, list) or not all(isinstance(g, str) for g in games):
        raise Unauthenticated("the token's `games` claim is missing or invalid")
    granted = Claims(sub, role, frozenset(games))
    if not granted.may_open(game_id):
        raise Forbidden("the token does not grant this game")
    return granted
