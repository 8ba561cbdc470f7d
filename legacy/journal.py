"""The append-only JSON-lines log that makes the legacy server's acknowledgements durable.

One line per accepted change (see `legacy.store` for the shapes). Lines are written in
batches with one `fdatasync` per batch (group commit); the service sends a change's `ACK`
only after the batch holding it is synced. At start the log is replayed; a trailing line
without its newline is a write torn by a crash: it was never synced as a whole, so it was
never acknowledged, and it is cut off. Every complete line must replay, or the server refuses
to start (`JournalCorrupt`): serving without an acknowledged change would break the contract.

The file is locked (`flock`) so that two servers never append to the same log.
"""

from __future__ import annotations

import fcntl
import os
from dataclasses import dataclass
from pathlib import Path

import orjson

from legacy.errors import JournalCorrupt, JournalError
from legacy.store import Games

DEFAULT_NAME = "legacy-log.jsonl"
_sync = getattr(os, "fdatasync", os.fsync)


@dataclass(frozen=True, slots=True)
class Replay:
    """What a replay found: records applied and bytes of a torn last line dropped."""

    records: int
    torn_bytes: int


def replay_into(games: Games, data: bytes, *, source: str = "log") -> Replay:
    """Replay log bytes into `games`; an incomplete trailing line is ignored (torn write)."""
    complete = data.rfind(b"\n") + 1
    count = 0
    for number, line in enumerate(data[:complete].split(b"\n")[:-1], start=1):
        if not line.strip():
            continue
        try:
            record = orjson.loads(line)
        except orjson.JSONDecodeError as exc:
            raise JournalCorrupt(f"{source}:{number}: unreadable record: {exc}") from exc
        if not isinstance(record, dict):
            raise JournalCorrupt(f"{source}:{number}: record is not an object")
        try:
            games.replay(record)
        except JournalCorrupt as exc:
            raise JournalCorrupt(f"{source}:{number}: {exc}") from exc
        count += 1
    return Replay(count, len(data) - complete)


class Journal:
    """The open log file: replayed on `open`, appended to with `append` (blocking)."""

    def __init__(self, path: Path, fd: int, size: int) -> None:
        self.path = path
        self._fd = fd
        self._size = size
        self._broken = False

    @classmethod
    def open(cls, path: Path, games: Games) -> tuple[Journal, Replay]:
        """Open (creating) the log at `path` (a directory gets `legacy-log.jsonl`) and replay it."""
        if path.is_dir():
            path = path / DEFAULT_NAME
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            created = not path.exists()
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o644)
        except OSError as exc:
            raise JournalError(f"cannot open the log {path}: {exc.strerror}") from exc
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError as exc:
                raise JournalError(f"the log {path} is in use by another server") from exc
            data = path.read_bytes()
            replay = replay_into(games, data, source=str(path))
            if replay.torn_bytes:
                os.ftruncate(fd, len(data) - replay.torn_bytes)
                os.fsync(fd)
            if created:
                _sync_directory(path.parent)
        except OSError as exc:
            os.close(fd)
            raise JournalError(f"cannot read the log {path}: {exc}") from exc
        except BaseException:
            os.close(fd)
            raise
        return cls(path, fd, len(data) - replay.torn_bytes), replay

    @property
    def broken(self) -> bool:
        """True after a failed write could not be cut off again: nothing more is accepted."""
        return self._broken

    def append(self, data: bytes) -> None:
        """Write `data` (whole lines) and sync it; on failure cut it off again and raise.

        Blocking: the service runs it in a worker thread.
        """
        if self._broken:
            raise JournalError("the log could not be repaired after a failed write")
        try:
            view = memoryview(data)
            while view:
                written = os.write(self._fd, view)
                view = view[written:]
            _sync(self._fd)
        except OSError as exc:
            try:
                # Nothing of a failed batch was acknowledged: remove what may have reached
                # the file, so a restart does not serve changes that were answered INTERNAL.
                os.ftruncate(self._fd, self._size)
                _sync(self._fd)
            except OSError:
                self._broken = True
            raise JournalError(f"cannot write the log {self.path}: {exc}") from exc
        self._size += len(data)

    def close(self) -> None:
        """Release the lock and the file."""
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1


def _sync_directory(directory: Path) -> None:
    """Make a newly created log file's directory entry durable."""
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
