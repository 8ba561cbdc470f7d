"""The checks, one module per category; importing this package fills the registry."""

from conformance.checks import (
    admin,
    auth,
    envelope,
    idle,
    join,
    limits,
    messages,
    status,
    transport,
    update,
    validation,
)

__all__ = [
    "admin",
    "auth",
    "envelope",
    "idle",
    "join",
    "limits",
    "messages",
    "status",
    "transport",
    "update",
    "validation",
]
