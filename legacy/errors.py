"""The reference old server's error tree: every refusal knows its wire code and close code.

```
LegacyError                      base; wire code INTERNAL
├── Refusal                      a client message refused with an ERROR frame
│   ├── BadMessage               BAD_MESSAGE      stays open
│   │   └── FloatForInt          a float where an integer belongs (maybe a >64-bit int)
│   ├── UnknownType              UNKNOWN_TYPE     stays open
│   ├── Unauthenticated          UNAUTHENTICATED  closes 4401 when raised on CONNECT
│   ├── Forbidden                FORBIDDEN        closes 4403 when raised on CONNECT
│   ├── NotFound                 NOT_FOUND        closes 4404 when raised on CONNECT
│   ├── Conflict                 CONFLICT         stays open; carries the current version
│   ├── InvalidState             INVALID_STATE    stays open
│   ├── RateLimited              RATE_LIMITED     stays open; carries retry_after_ms
│   └── Internal                 INTERNAL         stays open (closes 1011 on CONNECT)
├── JournalError                 the append-only log cannot be read or written
│   └── JournalCorrupt           an acknowledged record is unreadable: refuse to start
└── ConfigError                  bad command line (fault spec, missing secret)
```

A refusal is *fatal* when it ends the connection (a bad `CONNECT`); `close_code` is then the
WebSocket close code to use. The same class is non-fatal elsewhere (a `FORBIDDEN` for an
observer's update keeps the connection), so fatality is per instance, not per class.
"""

from __future__ import annotations

from typing import Any, ClassVar


class LegacyError(Exception):
    """Base of every error the legacy server raises on purpose."""

    code: ClassVar[str] = "INTERNAL"
    close_code: ClassVar[int] = 1011


class Refusal(LegacyError):
    """A client message refused: answered `ERROR {re, code, message}` (plus `extra`)."""

    def __init__(self, message: str, *, fatal: bool = False) -> None:
        super().__init__(message)
        self.message = message
        self.fatal = fatal

    def extra(self) -> dict[str, Any]:
        """Fields the wire `ERROR` carries beside `re`, `code` and `message`."""
        return {}


class BadMessage(Refusal):
    """Not JSON, not an object, binary, missing or ill-typed field, unknown update key."""

    code = "BAD_MESSAGE"


class FloatForInt(BadMessage):
    """A number with a fraction or exponent where an integer belongs.

    orjson reads integer literals beyond 64 bits as floats, so the session re-reads the frame
    exactly before answering: a huge integer is an integer (out of range), not ill-typed.
    """


class UnknownType(Refusal):
    """`type` is not one of the protocol's client message types."""

    code = "UNKNOWN_TYPE"


class Unauthenticated(Refusal):
    """No, invalid or expired token, or a message before `CONNECT`."""

    code = "UNAUTHENTICATED"
    close_code = 4401


class Forbidden(Refusal):
    """A valid token without the right for this path, game or message."""

    code = "FORBIDDEN"
    close_code = 4403


class NotFound(Refusal):
    """The game does not exist (observer or admin opening it, admin `GET_STATE`)."""

    code = "NOT_FOUND"
    close_code = 4404


class Conflict(Refusal):
    """`expected_version` differs from the game's version."""

    code = "CONFLICT"

    def __init__(self, message: str, version: int) -> None:
        super().__init__(message)
        self.version = version

    def extra(self) -> dict[str, Any]:
        return {"version": self.version}


class InvalidState(Refusal):
    """The change would break a state rule (transition, range, membership, settings)."""

    code = "INVALID_STATE"


class RateLimited(Refusal):
    """Over the connection's message rate; the message was not processed."""

    code = "RATE_LIMITED"

    def __init__(self, message: str, retry_after_ms: int) -> None:
        super().__init__(message)
        self.retry_after_ms = retry_after_ms

    def extra(self) -> dict[str, Any]:
        return {"retry_after_ms": self.retry_after_ms}


class Internal(Refusal):
    """The server failed (the log could not be written); nothing was applied."""

    code = "INTERNAL"


class JournalError(LegacyError):
    """The append-only log cannot be opened, read or written."""


class JournalCorrupt(JournalError):
    """A complete (so possibly acknowledged) record cannot be replayed: refuse to serve."""


class ConfigError(LegacyError):
    """The command line or environment cannot configure a server."""
