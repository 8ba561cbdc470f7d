"""A client for a state server's admin path (`ws://H:P/v1/admin`): list games, read and
import states. Used by `sweep`, `backfill` and the comparator's resync.

Errors, drawn where they are defined:

    AdminError(code, message)     an ERROR answer from the server (its wire code), or:
      AdminUnreachable            cannot connect, connection lost, no answer in time
                                  (code UNREACHABLE or TIMEOUT)

`RATE_LIMITED` answers are not errors to the caller: admin tools legitimately make many
requests on one connection, so after the first refusal the client sends one request at a
time, each after the server's `retry_after_ms` (a refused request is retried a bounded
number of times), and paces the next ones by the time the server said it needs for one
message (longer after each refusal, a little shorter after each answer): past the burst a
long read (a sweep) is refused about once in 15 requests, not once per request (every
refusal is an ERROR in the server's metrics, and 200 in 10 s close the connection 4429).

A lost connection is reopened on the next request, and the requests lost with it are sent
once more, one at a time from then on (admin requests are idempotent: reads, and imports
that replace exactly), so one game whose import closes the connection (a state larger than
a frame, say) fails alone.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from types import TracebackType
from typing import Any, Final, Self

from stateshift.control import DEFAULT_TIMEOUT, Channel, ControlError, with_path

ADMIN_PATH: Final = "/v1/admin"
#: the protocol's largest LIST_GAMES page
MAX_PAGE: Final = 1000
#: how many times one request is retried after RATE_LIMITED
RATE_LIMIT_RETRIES: Final = 20
#: the longest pause kept between paced requests (a server's refill time for one message)
MAX_SPACING: Final = 1.0


class AdminError(Exception):
    """The server refused a request (`code`: its wire code) or could not be asked."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message


class AdminUnreachable(AdminError, ConnectionError):
    """No answer: cannot connect, the connection was lost, or the answer timed out (a
    `ConnectionError` too: callers that retry a server they cannot reach see it as one)."""


def _convert(exc: ControlError) -> AdminError:
    if exc.code in ("UNREACHABLE", "TIMEOUT"):
        return AdminUnreachable(exc.code, exc.message)
    return AdminError(exc.code, exc.message)


class AdminClient:
    """`async with AdminClient("ws://h:p", admin_token) as admin: …` (requests may be issued
    concurrently; they share one connection and are answered in order)."""

    def __init__(self, url: str, token: str, *, timeout: float = DEFAULT_TIMEOUT) -> None:
        self.url = with_path(url, ADMIN_PATH)
        self.token = token
        self.timeout = timeout
        self._channel: Channel | None = None
        self._opening: asyncio.Lock | None = None
        #: set after the first RATE_LIMITED answer or lost connection: requests then go one
        #: at a time
        self._throttle: asyncio.Lock | None = None
        self._resume_at = 0.0
        #: seconds between requests once throttled: the longest time the server said it
        #: needs for one message (`retry_after_ms`), a little more
        self._spacing = 0.0

    async def __aenter__(self) -> Self:
        await self._open()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    def abandon(self) -> None:
        """Drop the connection at once, without a closing handshake (nothing awaited)."""
        channel, self._channel = self._channel, None
        if channel is not None:
            channel.abandon()

    async def close(self) -> None:
        """Close the connection."""
        channel, self._channel = self._channel, None
        if channel is not None:
            await channel.close()

    async def _open(self) -> Channel:
        if self._opening is None:
            self._opening = asyncio.Lock()
        async with self._opening:
            channel = self._channel
            if channel is not None and channel.is_open:
                return channel
            if channel is not None:
                await channel.close()
            channel = Channel(self.url, self.token, timeout=self.timeout)
            try:
                await channel.open()
            except ControlError as exc:
                raise _convert(exc) from exc
            self._channel = channel
            return channel

    async def request(self, kind: str, fields: dict[str, Any], expect: str) -> dict[str, Any]:
        """One admin request; its answer of type `expect`, else `AdminError`."""
        resent = False
        for _ in range(RATE_LIMIT_RETRIES):
            throttle = self._throttle
            try:
                if throttle is None:
                    answer = await self._attempt(kind, fields, expect)
                else:
                    # one request at a time, each after the server's delay: concurrent
                    # retries would all be refused again (and count as abuse, 4429), or all
                    # be lost again with a connection that one of them closes
                    async with throttle:
                        await asyncio.sleep(max(0.0, self._resume_at - time.monotonic()))
                        self._resume_at = time.monotonic() + self._spacing
                        answer = await self._attempt(kind, fields, expect)
                        if answer is not None:
                            self._spacing *= 0.99
            except AdminUnreachable as exc:
                # Admin requests are idempotent (reads; imports replace exactly), so a request
                # lost with its connection is sent once more, alone, on a new connection.
                if resent or exc.code != "UNREACHABLE":
                    raise
                resent = True
                if self._throttle is None:
                    self._throttle = asyncio.Lock()
                continue
            if answer is not None:
                return answer
        raise AdminError("RATE_LIMITED", f"{kind} still rate limited after retries")

    async def _attempt(
        self, kind: str, fields: dict[str, Any], expect: str
    ) -> dict[str, Any] | None:
        channel = await self._open()
        try:
            return await channel.request(kind, fields, expect)
        except ControlError as exc:
            if exc.code != "RATE_LIMITED":
                raise _convert(exc) from exc
            retry_ms = exc.extra.get("retry_after_ms")
            wait = retry_ms / 1000 if type(retry_ms) is int and retry_ms > 0 else 0.05
            self._resume_at = max(self._resume_at, time.monotonic() + min(wait, self.timeout))
            # refused although paced: the spacing was short of the server's rate (the wait it
            # says depends on what was left of its bucket), so it grows by a fifth as well
            self._spacing = min(max(self._spacing * 1.2, wait * 1.05 + 0.001), MAX_SPACING)
            if self._throttle is None:
                self._throttle = asyncio.Lock()
            return None

    async def list_games(
        self, after: str | None = None, limit: int = MAX_PAGE
    ) -> tuple[list[tuple[str, int]], str | None]:
        """One page of `(game_id, version)` after `after`, and the `next` cursor (None: last)."""
        fields: dict[str, Any] = {"limit": limit}
        if after is not None:
            fields["after"] = after
        answer = await self.request("LIST_GAMES", fields, "GAMES")
        games = answer.get("games")
        following = answer.get("next")
        if not isinstance(games, list) or not (following is None or isinstance(following, str)):
            raise AdminError("BAD_ANSWER", f"GAMES is not the protocol's shape: {answer!r:.200}")
        page: list[tuple[str, int]] = []
        for entry in games:
            game_id = entry.get("game_id") if isinstance(entry, dict) else None
            version = entry.get("version") if isinstance(entry, dict) else None
            if not isinstance(game_id, str) or type(version) is not int:
                raise AdminError(
                    "BAD_ANSWER", f"GAMES entry is not {{game_id, version}}: {entry!r}"
                )
            page.append((game_id, version))
        return page, following

    async def all_games(
        self, after: str | None = None, page_size: int = MAX_PAGE
    ) -> AsyncIterator[list[tuple[str, int]]]:
        """Every page of games after `after` (all games by default), in `game_id` order."""
        while True:
            page, after = await self.list_games(after, page_size)
            if page:
                yield page
            if after is None:
                return

    async def listing(self) -> dict[str, int]:
        """Every game and its version."""
        games: dict[str, int] = {}
        async for page in self.all_games():
            games.update(page)
        return games

    async def get_state(self, game_id: str) -> dict[str, Any] | None:
        """The game's full state, or None when the server does not have the game."""
        try:
            answer = await self.request("GET_STATE", {"game_id": game_id}, "STATE")
        except AdminError as exc:
            if exc.code == "NOT_FOUND":
                return None
            raise
        state = answer.get("state")
        if not isinstance(state, dict):
            raise AdminError("BAD_ANSWER", f"STATE of {game_id} carries no state object")
        return state

    async def import_state(self, state: dict[str, Any]) -> int:
        """Replace a game's state and version exactly (creating it); the version acknowledged."""
        answer = await self.request("IMPORT_STATE", {"state": state}, "ACK")
        version = answer.get("version")
        if type(version) is not int:
            raise AdminError("BAD_ANSWER", f"ACK without an integer version: {answer!r:.200}")
        return version
