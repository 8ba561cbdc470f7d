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

from websockets.datastructures import Headers
from websockets.http11 import Response

from stateshift.netloc import address

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
        self.url = url
        self.host, self.port = address(url)
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
        reachable, _ = await probe(self.url, self.open_timeout)
        return reachable


#: the most of an upstream's `/healthz` answer a probe reads
PROBE_LIMIT = 64 * 1024


async def http_get(url: str, path: str, limit: int, chunks: list[bytes] | None = None) -> bytes:
    """`GET path` from the upstream at `url` (`ws://` over plain HTTP, `wss://` over TLS),
    asked to close after its answer; everything it answered (also in `chunks` as it comes,
    when given: what came before a timeout). Raises OSError (cannot connect, lost),
    ValueError (an answer longer than `limit`); the caller bounds the wait."""
    target = urlsplit(url)
    tls = target.scheme == "wss"
    host, port = address(url)
    reader, writer = await asyncio.open_connection(host, port, ssl=True if tls else None)
    try:
        writer.write(
            f"GET {path} HTTP/1.1\r\nHost: {target.netloc}\r\nConnection: close\r\n\r\n".encode()
        )
        return await read_response(reader, limit, [] if chunks is None else chunks)
    finally:
        writer.close()


async def probe(url: str, within: float) -> tuple[bool, str]:
    """Ask the upstream at `url` for its `/healthz`: (reachable, what it answered or why
    not). Any HTTP answer is one (a server without `/healthz` answers 404), whatever comes
    after its status line."""
    chunks: list[bytes] = []
    try:
        async with asyncio.timeout(within):
            raw = await http_get(url, "/healthz", PROBE_LIMIT, chunks)
    except (OSError, TimeoutError, ValueError) as exc:  # ValueError: past PROBE_LIMIT
        if b"".join(chunks).startswith(b"HTTP/"):
            # it answered: what came after its status line (a reset, an endless or oversized
            # body, no close) does not make it unreachable
            return True, "answered HTTP (its answer not read to the end)"
        if isinstance(exc, TimeoutError):
            return False, f"no answer within {within:g} s"
        if isinstance(exc, ConnectionRefusedError):
            return False, "connection refused"
        return False, str(exc) or type(exc).__name__
    if not raw.startswith(b"HTTP/"):
        return False, "answered something that is not HTTP" if raw else "closed without answering"
    try:
        answer = plain_response(raw)
    except (ValueError, IndexError):
        return True, "answered HTTP"
    first = answer.body.decode("utf-8", "replace").strip().partition("\n")[0][:80]
    return True, f"its /healthz: {answer.status_code} {first}".rstrip()


async def read_response(reader: asyncio.StreamReader, limit: int, chunks: list[bytes]) -> bytes:
    """One HTTP response, read into `chunks`: up to the end its `Content-Length` gives, else
    until the peer closes (it was asked `Connection: close`; a server that keeps the
    connection open after a sized answer is not waited for). A response longer than
    `limit` is not one the proxy relays (ValueError)."""
    size = 0
    #: the response's whole size once its head says it (None: not known yet, or until EOF)
    end: int | None = None
    head_read = False
    while end is None or size < end:
        chunk = await reader.read(65_536)
        if not chunk:
            break
        size += len(chunk)
        if size > limit:
            raise ValueError("response too long")
        chunks.append(chunk)
        if not head_read:
            head, sep, _ = b"".join(chunks).partition(b"\r\n\r\n")
            if sep:
                head_read = True
                length = content_length(head)
                if length is not None:
                    end = len(head) + len(sep) + length
    return b"".join(chunks)


def content_length(head: bytes) -> int | None:
    """A response head's `Content-Length`, when it has one and no chunked body."""
    length: int | None = None
    for line in head.decode("latin-1").split("\r\n")[1:]:
        name, _, value = line.partition(":")
        name, value = name.strip().lower(), value.strip()
        if name == "transfer-encoding" and "chunked" in value.lower():
            return None
        if name == "content-length" and value.isdigit():
            length = int(value)
    return length


def plain_response(raw: bytes) -> Response:
    """An upstream's HTTP/1.1 response (read to the end) as the proxy's own answer: its
    status, reason, content type and body (cut at its `Content-Length`). ValueError when it
    is not a whole response."""
    head, sep, body = raw.partition(b"\r\n\r\n")
    if not sep:
        raise ValueError("no end of headers")
    status_line, *lines = head.decode("latin-1").split("\r\n")
    _, code, reason = ([*status_line.split(" ", 2), ""])[:3]
    fields = {
        name.strip().lower(): value.strip()
        for name, _, value in (line.partition(":") for line in lines)
    }
    if "chunked" in fields.get("transfer-encoding", "").lower():
        raise ValueError("chunked responses are not relayed")
    length = fields.get("content-length")
    if length is not None:
        if not length.isdigit() or int(length) > len(body):
            raise ValueError("body shorter than its Content-Length")
        body = body[: int(length)]
    headers = Headers(
        [
            ("Content-Type", fields.get("content-type", "text/plain")),
            ("Content-Length", str(len(body))),
        ]
    )
    return Response(int(code), reason, headers, body)
