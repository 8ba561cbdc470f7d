"""Running an asyncio service from a typer command: uvloop when available, signals handled."""

from __future__ import annotations

import asyncio
import logging
import signal
from collections.abc import Awaitable, Callable, Coroutine, Iterable
from typing import Any

log = logging.getLogger("stateshift.runtime")


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
    drain: Callable[[], Awaitable[None]] | None = None,
) -> int:
    """Start a service, call `on_ready`, wait for SIGTERM or SIGINT, then stop it gracefully.

    With `drain`, a signal first runs it (a service letting its clients leave while it still
    serves them); `stop` follows when it returns, or at once on a second signal.

    `stop` also runs when `start` fails part-way (an address in use, after the database was
    opened): it must be safe then, and what `start` raised is raised here afterwards."""
    loop = asyncio.get_running_loop()
    stopping = asyncio.Event()
    again = asyncio.Event()  # a second signal (both may be read in one loop turn)

    def signalled() -> None:
        (again if stopping.is_set() else stopping).set()

    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, signalled)
    try:
        await start()
        on_ready()
        await stopping.wait()
        if drain is not None and not again.is_set():
            await first_of(drain(), again.wait())
    finally:
        await stop()
    return 0


async def first_of(*awaitables: Awaitable[Any]) -> None:
    """Wait until one of `awaitables` ends, then cancel the others (and wait for them); a
    failure is logged."""
    for failure in await settle(awaitables, asyncio.FIRST_COMPLETED):
        log.error("%s failed", type(failure).__name__, exc_info=failure)


async def settle(awaitables: Iterable[Awaitable[Any]], return_when: str) -> list[BaseException]:
    """Run `awaitables` concurrently until `return_when` (as `asyncio.wait` takes it), then
    cancel those still running and wait for them (none outlives the caller's resources);
    the exceptions of those that failed, in their order."""
    tasks = [asyncio.ensure_future(awaitable) for awaitable in awaitables]
    if not tasks:
        return []
    try:
        await asyncio.wait(tasks, return_when=return_when)
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    return [
        failure
        for task in tasks
        if not task.cancelled() and (failure := task.exception()) is not None
    ]


def bound_port(server: Any) -> int:
    """The TCP port an asyncio (or websockets) server listens on, useful with port 0.

    `server` is `Any` on purpose: typeshed says `sockets` is a tuple, uvloop returns a list,
    and compiled modules (`stateshift.native`) check the declared types at run time.
    """
    return int(server.sockets[0].getsockname()[1])
