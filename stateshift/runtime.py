"""Running an asyncio service from a typer command: uvloop when available, signals handled."""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any


def run(main: Coroutine[Any, Any, int]) -> int:
    """Run `main` to completion on uvloop when it is installed, else on asyncio's loop."""
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a dependency on POSIX
        return asyncio.run(main)
    return uvloop.run(main)


async def serve_until_signalled(
    start: Callable[[], Awaitable[None]],
    stop: Callable[[], Awaitable[None]],
    on_ready: Callable[[], None],
) -> int:
    """Start a service, call `on_ready`, wait for SIGTERM or SIGINT, then stop it gracefully."""
    loop = asyncio.get_running_loop()
    stopping = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stopping.set)
    await start()
    on_ready()
    try:
        await stopping.wait()
    finally:
        await stop()
    return 0


def bound_port(server: Any) -> int:
    """The TCP port an asyncio (or websockets) server listens on, useful with port 0.

    `server` is `Any` on purpose: typeshed says `sockets` is a tuple, uvloop returns a list,
    and compiled modules (`stateshift.native`) check the declared types at run time.
    """
    return int(server.sockets[0].getsockname()[1])
