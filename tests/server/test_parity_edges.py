"""Where the new server differed from PROTOCOL.md, the protocol notes or the reference old
server (`legacy/`) on the same input: scores set then brought back in range by deltas,
numbers beyond a double, deep nesting beside a long number, non-ASCII digits in a
timestamp. Each test failed before its fix.

Where the old server decides, the same frames are sent to a `LegacyServer` started in the
same process (real sockets on 127.0.0.1, real files in tmp_path) and the answers compared.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from websockets.asyncio.client import connect

from legacy.service import Config, LegacyServer
from server.app import StateServer
from tests.server.conftest import Client, OpenClient
from tests.support import TEST_SECRET, timeout

#: answer fields that legitimately differ between two servers (or two runs)
VOLATILE = {"updated_at", "session_id", "server_time", "message"}


def _stable(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _stable(v) for k, v in value.items() if k not in VOLATILE}
    if isinstance(value, list):
        return [_stable(v) for v in value]
    return value


@pytest.fixture
async def legacy(tmp_path: Path) -> AsyncIterator[LegacyServer]:
    old = LegacyServer(Config(data=tmp_path / "legacy", secret=TEST_SECRET, port=0))
    await old.start()
    try:
        yield old
    finally:
        await old.stop()


async def _exchange(url: str, game: str, frames: list[str], answers: int) -> list[dict]:
    """CONNECT as player `alice` on `game`, send `frames` as text, return the CONNECTED
    and the next `answers` frames."""
    async with connect(f"{url}/v1/games/{game}", open_timeout=timeout()) as ws:
        client = Client(ws)
        got = [await client.connect("alice", games=(game,))]
        for frame in frames:
            await ws.send(frame)
        for _ in range(answers):
            got.append(await client.recv())
        return got


async def _same_as_legacy(
    server: StateServer, legacy: LegacyServer, game: str, frames: list[str], answers: int
) -> list[dict]:
    old = await _exchange(legacy.url, game, frames, answers)
    new = await _exchange(server.url, game, frames, answers)
    assert _stable(new) == _stable(old)
    return new


# --------------------------------------------------------------------------- rules


async def test_scores_are_range_checked_on_the_result_after_score_deltas_like_legacy(
    server: StateServer, legacy: LegacyServer
):
    """Note 20: effects are applied in order (`scores`, then `score_deltas`) and "every rule
    is checked on the result". A `scores` value out of range that the delta of the same update
    brings back into range gives a final score in range: the old server ACKs it (score
    500,000,000); the new one refuses INVALID_STATE (it range-checks the intermediate)."""
    update = {
        "type": "STATE_UPDATE",
        "id": "u",
        "updates": {
            "scores": {"alice": 2_000_000_000},
            "score_deltas": {"alice": -1_500_000_000},
        },
    }
    answers = await _same_as_legacy(server, legacy, "range", [json.dumps(update)], 1)
    assert answers[1] == {"type": "ACK", "re": "u", "version": 2}
    async with connect(f"{server.url}/v1/games/range", open_timeout=timeout()) as ws:
        shown = await Client(ws).connect("alice", games=("range",))
    assert shown["state"]["scores"] == {"alice": 500_000_000}


# --------------------------------------------------------------------------- JSON reading


async def test_a_number_beyond_a_double_in_an_ignored_field_is_json_like_legacy(
    server: StateServer, legacy: LegacyServer
):
    """`1e400` is valid JSON (RFC 8259's grammar; PROTOCOL.md sets no number range). orjson
    refuses it ("number is infinity"); the old server then reads the frame with the standard
    library (stateshift.exactjson) and answers it: an extra top-level field is ignored (note 4),
    so a HEARTBEAT carrying it gets HEARTBEAT_ACK. The new server calls the frame "not JSON":
    BAD_MESSAGE with `re: null` (and it does read the very same frame once a 19-digit run
    appears anywhere in it, so its own answer depends on an unrelated string)."""
    frames = ['{"type": "HEARTBEAT", "id": "h", "extra": 1e400}']
    answers = await _same_as_legacy(server, legacy, "inf1", frames, 1)
    assert answers[1]["type"] == "HEARTBEAT_ACK"


async def test_a_score_beyond_a_double_is_bad_message_with_its_re_like_legacy(
    server: StateServer, legacy: LegacyServer
):
    """A score written `1e400` is a number that is not an integer (note 7): BAD_MESSAGE with
    the message's readable id in `re` (note 2), as the old server answers. The new server
    answers `re: null` (not JSON), so a client cannot tell which of its requests failed, and
    the comparator pairs nothing (an unpaired answer on each side)."""
    frame = '{"type": "STATE_UPDATE", "id": "u", "updates": {"scores": {"alice": 1e400}}}'
    answers = await _same_as_legacy(server, legacy, "inf2", [frame], 1)
    assert answers[1]["code"] == "BAD_MESSAGE"
    assert answers[1]["re"] == "u"


async def test_nesting_orjson_reads_is_read_even_beside_a_19_digit_run_like_legacy(
    server: StateServer, legacy: LegacyServer
):
    """A 19-digit run anywhere in a frame (here: a nanosecond-timestamp request id) sends the
    new server to `json.loads` *instead of* orjson; the standard library's recursion limit
    (~1000 with the stack in use) is below orjson's 1024, so a frame nested 980 deep that
    both orjson and the old server read (HEARTBEAT_ACK) is "not JSON" (BAD_MESSAGE, `re:
    null`) on the new server. The same frame with a 5-character id is answered."""
    nested = "[" * 980 + "]" * 980
    frame = '{"type": "HEARTBEAT", "id": "1732616400123456789", "x": ' + nested + "}"
    answers = await _same_as_legacy(server, legacy, "deep", [frame], 1)
    assert answers[1]["type"] == "HEARTBEAT_ACK"
    assert answers[1]["re"] == "1732616400123456789"


# --------------------------------------------------------------------------- admin


async def test_import_replaces_an_updated_at_written_with_non_ascii_digits(
    server: StateServer, open_client: OpenClient
):
    """Note 24: an imported `updated_at` is kept only when it is an RFC 3339 UTC timestamp
    with milliseconds, else set to now; PROTOCOL.md: `updated_at` is RFC 3339 (whose DIGIT is
    ASCII 0-9). `is_timestamp` uses `\\d`, which matches any Unicode digit (and `strptime`
    reads them), so `٢٠٢٦-11-26T10:00:00.123Z` is kept, stored and served to every client of
    the game, whose RFC 3339 parsers then fail. (The old server had the same bug.)"""
    admin = await open_client("/v1/admin")
    assert (await admin.connect("ops", "admin"))["type"] == "CONNECTED"
    stamp = "\u0662\u0660\u0662\u0666-11-26T10:00:00.123Z"
    state: dict[str, Any] = {
        "game_id": "stamp",
        "status": "waiting",
        "current_player": None,
        "scores": {},
        "timer": {},
        "settings": {},
        "version": 5,
        "updated_at": stamp,
    }
    ack = await admin.request(type="IMPORT_STATE", id="i", state=state)
    assert ack == {"type": "ACK", "re": "i", "version": 5}
    shown = await admin.request(type="GET_STATE", id="g", game_id="stamp")
    served = shown["state"]["updated_at"]
    assert served.isascii(), f"updated_at served as {served!r}"
