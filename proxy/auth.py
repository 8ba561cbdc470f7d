"""Admin authentication for the proxy's control plane: an HS256 JWT with role `admin`,
signed with the secret the servers share. The proxy verifies it itself: it judges the
servers and imports none of their code."""

from __future__ import annotations

from typing import Any

import jwt


class ControlAuthError(Exception):
    """The caller may not use the control plane; `code` is UNAUTHENTICATED or FORBIDDEN."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


def verify_admin(token: object, secret: str) -> str:
    """The admin's id (`sub`) from a valid admin token, else `ControlAuthError`."""
    if not isinstance(token, str) or not token:
        raise ControlAuthError("UNAUTHENTICATED", "`token` is missing")
    try:
        claims: dict[str, Any] = jwt.decode(
            token, secret, algorithms=["HS256"], options={"require": ["exp", "sub", "role"]}
        )
    except jwt.InvalidTokenError as exc:
        raise ControlAuthError("UNAUTHENTICATED", "the token is invalid or expired") from exc
    if claims.get("role") != "admin":
        raise ControlAuthError("FORBIDDEN", "the control plane needs an admin token")
    return str(claims.get("sub"))
