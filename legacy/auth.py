"""Token verification of the legacy server (JWT, HS256 only), independent of the new server's.

Owns notes 8 to 10: which claims are required, what is `UNAUTHENTICATED` (the token itself is
bad: close 4401) and what is `FORBIDDEN` (a good token without the right: close 4403).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

import jwt
from jwt.types import Options

from legacy.errors import Forbidden, Unauthenticated
from legacy.rules import is_identifier

ROLES: Final = frozenset({"player", "observer", "admin"})
# HS256 only: `none` and every other algorithm (RS256 with the secret as a "public key", …)
# must fail, or anyone could mint tokens.
_ALGORITHMS: Final = ["HS256"]
# `aud` is not part of the protocol: a token carrying one is not refused for it.
_OPTIONS: Final = Options(require=["exp"], verify_aud=False)


@dataclass(frozen=True, slots=True)
class Identity:
    """Who a verified token speaks for."""

    player_id: str
    role: str
    # None means every game (`["*"]`); the admin path ignores the claim.
    games: frozenset[str] | None


def verify_token(token: object, secret: str, game_id: str | None) -> Identity:
    """Verify `token` for a game path (`game_id`) or the admin path (None).

    Raises fatal `Unauthenticated` for a bad token and fatal `Forbidden` for a valid token
    without the right to this path or game.
    """
    if not isinstance(token, str):
        raise Unauthenticated("CONNECT needs a string token", fatal=True)
    try:
        claims = jwt.decode(token, secret, algorithms=_ALGORITHMS, options=_OPTIONS)
    except jwt.ExpiredSignatureError as exc:
        raise Unauthenticated("token expired", fatal=True) from exc
    except jwt.PyJWTError as exc:
        raise Unauthenticated("invalid token", fatal=True) from exc
    sub = claims.get("sub")
    role = claims.get("role")
    if not is_identifier(sub):
        raise Unauthenticated("token sub missing or not a valid player id", fatal=True)
    if not isinstance(role, str) or role not in ROLES:
        raise Unauthenticated("token role missing or unknown", fatal=True)
    assert isinstance(sub, str)  # is_identifier checked it; this narrows the type
    if game_id is None:
        if role != "admin":
            raise Forbidden("the admin path needs an admin token", fatal=True)
        return Identity(sub, role, None)
    games = claims.get("games")
    if not isinstance(games, list) or not all(isinstance(game, str) for game in games):
        raise Unauthenticated("token games missing or not a list of game ids", fatal=True)
    if "*" in games:
        return Identity(sub, role, None)
    if game_id not in games:
        raise Forbidden("the token does not open this game", fatal=True)
    return Identity(sub, role, frozenset(games))
