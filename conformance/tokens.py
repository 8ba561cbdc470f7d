"""Tokens for the suite, good and forged, minted from the shared secret (pure).

The suite signs its own tokens rather than asking either server: it judges their
verification, including of tokens that must be refused. Signing is done here with `hmac`
rather than PyJWT: PyJWT refuses or warns about some of the forgeries the suite needs
(short keys for HS512, odd claim types), and a JWS is three base64url parts.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
from collections.abc import Mapping
from typing import Any

_MISSING = object()


def claims(
    sub: Any = "p1",
    role: Any = "player",
    games: Any = ("*",),
    ttl: float = 3600.0,
    *,
    now: float | None = None,
) -> dict[str, Any]:
    """A claim set; pass a value to override a claim (use `drop()` to remove one)."""
    issued = time.time() if now is None else now
    return {
        "sub": sub,
        "role": role,
        "games": list(games) if isinstance(games, tuple | list) else games,
        "iat": int(issued),
        "exp": int(issued + ttl),
    }


def drop(payload: Mapping[str, Any], *names: str) -> dict[str, Any]:
    """`payload` without the claims `names`."""
    return {k: v for k, v in payload.items() if k not in names}


_DIGESTS = {"HS256": hashlib.sha256, "HS384": hashlib.sha384, "HS512": hashlib.sha512}


def b64url(raw: bytes) -> str:
    """base64url without padding (RFC 7515)."""
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def _part(obj: Mapping[str, Any]) -> str:
    return b64url(json.dumps(obj, separators=(",", ":")).encode())


def sign(payload: Mapping[str, Any], secret: str, algorithm: str = "HS256") -> str:
    """A JWT of `payload` signed with `secret` by `algorithm` (HS256/HS384/HS512)."""
    signing_input = f"{_part({'alg': algorithm, 'typ': 'JWT'})}.{_part(payload)}"
    mac = hmac.new(secret.encode(), signing_input.encode(), _DIGESTS[algorithm]).digest()
    return f"{signing_input}.{b64url(mac)}"


def unsigned(payload: Mapping[str, Any]) -> str:
    """A JWT with `alg: none` and an empty signature (which must be refused)."""
    return f"{_part({'alg': 'none', 'typ': 'JWT'})}.{_part(payload)}."
