"""Whether an upstream can be reached, shared by every client's connection to it.

A shadow that goes down under thousands of clients loses all their connections at once. Each
connection used to retry on its own, with its own backoff: thousands of connection attempts
a second, each with its handshake objects, a task and an exception, and the garbage
collector walking the whole heap after them. The proxy's one event loop went to that, and
the clients' round trips grew from a millisecond to a second
(`benchmarks/shadow_loss_bench.py`, BENCHMARKS.md "Shadow loss under many clients").

Now the first connection that cannot be opened (refused, unreachable, timed out) marks the
upstream down. While it is down, the connections make no attempt of their own (`wait`): one
probe at a time, with backoff, asks the upstream's address for any HTTP answer (`GET
/healthz`) and marks it back when one comes. Connections reopened after a loss then go at
most `rate` a second (`reopen`), so that the way back does not take the loop either.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from urllib.parse import urlsplit

log = logging.getLogger(__name__)

#: the first probe's delay after an upstream is found down, doubled up to `retry_max`
FIRST_PROBE = 0.1


class Reachability:
    """One upstream's reachability (see the module's docstring)."""

    def __init__(
        self,
        url: str,
        *,
        rate: float,
        retry_max: float,
        open_timeout: float,
        on_probe_failed: Callable[[], None] | None = None,
    ) -> None:
        parts = urlsplit(url)
        self.host = parts.hostname or "127.0.0.1"
        self.port = parts.port or (443 if parts.scheme == "wss" else 80)
        self.tls = parts.scheme == "wss"
        self.rate = rate
        self.retry_max = retry_max
        self.open_timeout = open_timeout
        self.on_probe_failed = on_probe_failed
        #: known unreachable: connections wait for the probe instead of trying
        self.down = False
        self._back = asyncio.Event()
        self._prober: asyncio.Task[None] | None = None
        #: when the next reopening may start (loop time)
        self._next_reopen = 0.0
        #: probes that found it still down
        self.probes_failed = 0

    def failed(self) -> None:
        """A connection to the upstream could not be opened: it is down until a probe
        reaches it (or a connection opens meanwhile)."""
        if self.down:
            return
        self.down = True
        self._back = asyncio.Event()
        self._prober = asyncio.create_task(self._probe(), name=f"probe {self.host}:{self.port}")
        log.warning(
            "upstream %s:%d unreachable: its connections wait for it to answer again",
            self.host,
            self.port,
        )

    def reached(self) -> None:
        """A connection to the upstream opened: it is back."""
        if not self.down:
            return
        self.down = False
        self._back.set()
        prober, self._prober = self._prober, None
        if prober is not None and prober is not asyncio.current_task():
            prober.cancel()
        log.info("upstream %s:%d reachable again", self.host, self.port)

    async def wait(self, at_most: float) -> None:
        """Until the upstream is back, `at_most` seconds at most (the caller then looks at
        its own connection again: whether its client is still there)."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(at_most):
                await self._back.wait()

    async def reopen(self) -> None:
        """Wait for this connection's turn to reopen after a loss: at most `rate` a second
        for all of them, first come first served."""
        loop = asyncio.get_running_loop()
        now = loop.time()
        turn = max(now, self._next_reopen)
        self._next_reopen = turn + 1 / self.rate
        if turn > now:
            await asyncio.sleep(turn - now)

    def close(self) -> None:
        """Stop probing (mirroring ended: the upstream is no one's shadow any more)."""
        prober, self._prober = self._prober, None
        if prober is not None:
            prober.cancel()

    async def stop(self) -> None:
        """Stop probing, and wait until the probe has ended (the proxy is stopping)."""
        prober = self._prober
        self.close()
        if prober is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await prober

    async def _probe(self) -> None:
        delay = FIRST_PROBE
        while self.down:
            await asyncio.sleep(delay)
            if await self._answers():
                self.reached()
                return
            self.probes_failed += 1
            if self.on_probe_failed is not None:
                self.on_probe_failed()
            delay = min(delay * 2, self.retry_max)

    async def _answers(self) -> bool:
        """Whether the upstream's address answers HTTP (any status: a server without
        `/healthz` answers 404, which is an answer)."""
        writer: asyncio.StreamWriter | None = None
        try:
            async with asyncio.timeout(self.open_timeout):
                reader, writer = await asyncio.open_connection(
                    self.host, self.port, ssl=True if self.tls else None
                )
                request = f"GET /healthz HTTP/1.1\r\nHost: {self.host}\r\nConnection: close\r\n\r\n"
                writer.write(request.encode())
                line = await reader.readline()
            return line.startswith(b"HTTP/")
        except (OSError, TimeoutError):
            return False
        finally:
            if writer is not None:
                writer.close()
