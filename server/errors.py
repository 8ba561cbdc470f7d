"""The new server's error tree. Every error knows its wire code and, when it ends the
connection, its close code; library errors are converted at the boundary (`raise … from exc`).

    StateServerError                      (abstract: every error below has its own code)
    ├── Internal                          INTERNAL, stays open (1011 on CONNECT)
    │   └── DatabaseError                 storage failed: nothing was applied
    ├── ProtocolError                     (message-level problems)
    │   ├── BadMessage                    BAD_MESSAGE
    │   └── UnknownType                   UNKNOWN_TYPE
    ├── SecurityError
    │   ├── Unauthenticated               UNAUTHENTICATED (4401 on CONNECT)
    │   ├── Forbidden                     FORBIDDEN (4403 on CONNECT)
    │   └── RateLimited                   RATE_LIMITED (+ retry_after_ms; 4429 on abuse)
    ├── StateError
    │   ├── NotFound                      NOT_FOUND (4404 on CONNECT)
    │   ├── Conflict                      CONFLICT (+ version)
    │   └── InvalidState                  INVALID_STATE
    └── WebSocketError                    transport failures (never sent on the wire)
"""

from __future__ import annotations

from typing import Any, ClassVar


class StateServerError(Exception):
    """Base of every error the server raises on purpose."""

    code: ClassVar[str] = "INTERNAL"
    #: close code when this error happens while handling CONNECT (None: stays open)
    connect_close_code: ClassVar[int | None] = None

    def __init__(self, message: str = "") -> None:
        super().__init__(message or self.code.lower().replace("_", " "))
        self.message = message or self.code.lower().replace("_", " ")
        #: the offending message's `id` when it was readable (the answer's `re`); set in
        #: `__init__`, not as a class-level default, which compiled exceptions do not see
        self.re: str | None = None

    def extra(self) -> dict[str, Any]:
        """Fields this error adds to its `ERROR` frame besides `re`, `code` and `message`."""
        return {}


class ProtocolError(StateServerError):
    """The frame or message does not follow the protocol's shape."""


class BadMessage(ProtocolError):
    code = "BAD_MESSAGE"


class UnknownType(ProtocolError):
    code = "UNKNOWN_TYPE"


class SecurityError(StateServerError):
    """Authentication, authorisation and abuse."""


class Unauthenticated(SecurityError):
    code = "UNAUTHENTICATED"
    connect_close_code = 4401


class Forbidden(SecurityError):
    code = "FORBIDDEN"
    connect_close_code = 4403


class RateLimited(SecurityError):
    code = "RATE_LIMITED"

    def __init__(self, retry_after_ms: int) -> None:
        super().__init__("over the message rate")
        self.retry_after_ms = retry_after_ms

    def extra(self) -> dict[str, Any]:
        return {"retry_after_ms": self.retry_after_ms}


class StateError(StateServerError):
    """The request is well formed but the game's state does not allow it."""


class NotFound(StateError):
    code = "NOT_FOUND"
    connect_close_code = 4404


class Conflict(StateError):
    code = "CONFLICT"

    def __init__(self, version: int) -> None:
        super().__init__(f"expected_version differs from the current version {version}")
        self.version = version

    def extra(self) -> dict[str, Any]:
        return {"version": self.version}


class InvalidState(StateError):
    code = "INVALID_STATE"


class Internal(StateServerError):
    """The server failed; nothing was applied (note 37: a failed CONNECT closes 1011)."""

    code = "INTERNAL"
    connect_close_code = 1011


class DatabaseError(Internal):
    """Storage failed; the change was not applied."""


class WebSocketError(StateServerError):
    """A transport failure on one connection (never sent to a client)."""


# Close codes of PROTOCOL.md, named once.
CLOSE_NORMAL = 1000
CLOSE_TOO_BIG = 1009
CLOSE_SERVER_ERROR = 1011
CLOSE_RESTART = 1012
CLOSE_UNAUTHENTICATED = 4401
CLOSE_FORBIDDEN = 4403
CLOSE_NOT_FOUND = 4404
CLOSE_IDLE = 4408
CLOSE_RATE_LIMITED = 4429
