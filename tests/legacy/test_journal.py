"""The append-only log: records, replay, torn last lines, corruption, failed writes."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from legacy.errors import JournalCorrupt, JournalError
from legacy.journal import Journal, replay_into
from legacy.rules import merge_update
from legacy.store import Games, import_record, join_record, update_record

T1 = "2026-01-01T00:00:00.001Z"
T2 = "2026-01-01T00:00:00.002Z"
T3 = "2026-01-01T00:00:00.003Z"


def history() -> bytes:
    """A creation, a join, an update with a removed setting, then an import of another game."""
    games = Games()
    replay_into(games, join_record("g1", 1, T1, "alice", 60_000))
    state = games.get("g1")
    assert state is not None
    imported = merge_update(state, {"status": "paused"}, 7, T3)
    imported["game_id"] = "g2"
    return b"".join(
        [
            join_record("g1", 1, T1, "alice", 60_000),
            join_record("g1", 2, T2, "bob", 500),
            update_record(
                "g1", 3, T3, {"status": "active", "scores": {"bob": 4}, "settings": {"x": None}}
            ),
            import_record(imported),
        ]
    )


def test_replay_rebuilds_states_versions_and_timestamps_exactly() -> None:
    games = Games()
    replay = replay_into(games, history())
    assert replay.records == 4
    assert replay.torn_bytes == 0
    assert dict(games.get("g1") or {}) == {
        "game_id": "g1",
        "status": "active",
        "current_player": None,
        "scores": {"alice": 0, "bob": 4},
        "timer": {"alice": 60_000, "bob": 500},
        "settings": {},
        "version": 3,
        "updated_at": T3,
    }
    g2 = games.get("g2")
    assert g2 is not None
    assert (g2["version"], g2["status"], g2["updated_at"]) == (7, "paused", T3)


def test_a_torn_last_line_is_ignored() -> None:
    data = history()
    torn = data + b'{"op":"update","game_id":"g1","vers'
    games = Games()
    replay = replay_into(games, torn)
    assert replay.records == 4
    assert replay.torn_bytes == len(torn) - len(data)
    state = games.get("g1")
    assert state is not None
    assert state["version"] == 3


def test_a_complete_unreadable_line_refuses_to_start() -> None:
    with pytest.raises(JournalCorrupt, match=":2:"):
        replay_into(Games(), join_record("g1", 1, T1, "a", 1) + b"{not json}\n")


def test_a_version_gap_refuses_to_start() -> None:
    data = join_record("g1", 1, T1, "a", 1) + join_record("g1", 3, T1, "b", 1)
    with pytest.raises(JournalCorrupt, match="version 3 where 2 was due"):
        replay_into(Games(), data)


def test_an_update_of_a_missing_game_refuses_to_start() -> None:
    with pytest.raises(JournalCorrupt):
        replay_into(Games(), update_record("g1", 1, T1, {"status": "active"}))


def test_a_malformed_record_refuses_to_start() -> None:
    with pytest.raises(JournalCorrupt):
        replay_into(Games(), b'{"op":"join","game_id":"g1"}\n')


def test_games_page_in_byte_order() -> None:
    games = Games()
    for name in ("b", "a", "B", "c"):
        replay_into(games, join_record(name, 1, T1, "p", 1))
    states, cursor = games.page(None, 2)
    assert [s["game_id"] for s in states] == ["B", "a"]
    assert cursor == "a"
    states, cursor = games.page("a", 2)
    assert [s["game_id"] for s in states] == ["b", "c"]
    assert cursor is None
    assert games.page("c", 5) == ([], None)


def test_restore_undoes_a_creation_and_a_change() -> None:
    games = Games()
    replay_into(games, join_record("g1", 1, T1, "a", 1))
    before = games.get("g1")
    replay_into(games, join_record("g1", 2, T1, "b", 1))
    games.restore("g1", before)
    assert games.get("g1") is before
    games.restore("g1", None)
    assert games.get("g1") is None
    assert games.page(None, 10) == ([], None)


def test_journal_truncates_a_torn_tail_and_appends_after_it(tmp_path: Path) -> None:
    path = tmp_path / "log.jsonl"
    path.write_bytes(history() + b'{"op":"torn')
    journal, replay = Journal.open(path, Games())
    assert replay.torn_bytes == len(b'{"op":"torn')
    journal.append(update_record("g1", 4, T3, {"status": "paused"}))
    journal.close()
    games = Games()
    _, again = Journal.open(path, games)
    assert (again.records, again.torn_bytes) == (5, 0)
    state = games.get("g1")
    assert state is not None
    assert (state["version"], state["status"]) == (4, "paused")


def test_journal_in_a_directory_uses_its_default_name(tmp_path: Path) -> None:
    journal, _ = Journal.open(tmp_path, Games())
    journal.append(join_record("g1", 1, T1, "a", 1))
    journal.close()
    assert (tmp_path / "legacy-log.jsonl").read_bytes().count(b"\n") == 1


def test_two_servers_cannot_share_a_log(tmp_path: Path) -> None:
    path = tmp_path / "log.jsonl"
    first, _ = Journal.open(path, Games())
    try:
        with pytest.raises(JournalError, match="in use"):
            Journal.open(path, Games())
    finally:
        first.close()


def test_a_failed_write_is_cut_off_again(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "log.jsonl"
    journal, _ = Journal.open(path, Games())
    journal.append(join_record("g1", 1, T1, "a", 1))
    good = path.read_bytes()

    def failing_sync(fd: int) -> None:
        raise OSError(5, "Input/output error")

    monkeypatch.setattr("legacy.journal._sync", failing_sync)
    with pytest.raises(JournalError):
        journal.append(join_record("g1", 2, T1, "b", 1))
    assert journal.broken, "the repair needs a sync too, which fails here"
    monkeypatch.undo()
    assert path.read_bytes() == good
    journal.close()


def test_unopenable_log_is_a_journal_error(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(JournalError):
        Journal.open(blocker / "log.jsonl", Games())
    assert os.path.exists(blocker)
