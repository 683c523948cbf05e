"""Append-only local spool: where records go when the store cannot take them.

Each process appends to its own JSONL file in ``<data dir>/accounting-spool/`` and holds an
exclusive ``flock`` on it for its lifetime, so several gateway workers never interleave lines,
and files left by a process that died (its lock is gone) are found and replayed by the next
one. Replay reads files oldest first and lines in order, hands them to the store in batches
(the store's writes are idempotent by request id, so replaying a line twice — e.g. after a
crash between "written" and "truncated" — changes nothing), and only then truncates or
deletes the file. A torn last line (a crash mid-write) is skipped with a warning.
"""

from __future__ import annotations

import fcntl
import logging
import os
import uuid
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import IO, Any

import orjson

from gateway.accounting.file_lock import try_lock

logger = logging.getLogger(__name__)

WriteBatch = Callable[[Sequence[Mapping[str, Any]]], Awaitable[int]]


class Spool:
    def __init__(self, directory: Path, *, fsync: bool = True) -> None:
        self.directory = directory
        self.fsync = fsync
        self._file: IO[bytes] | None = None
        self._path: Path | None = None
        self._own_lines = 0

    @property
    def own_path(self) -> Path | None:
        return self._path

    def _open_own(self) -> IO[bytes]:
        if self._file is None:
            self.directory.mkdir(parents=True, exist_ok=True)
            self._path = self.directory / f"spool-{os.getpid()}-{uuid.uuid4().hex[:8]}.jsonl"
            handle = open(self._path, "ab")  # noqa: SIM115 - held open (and locked) for the process's lifetime
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
            self._file = handle
        return self._file

    def append(self, records: Iterable[Mapping[str, Any]]) -> int:
        """Append records durably (flush, and fsync unless disabled); return how many."""
        handle = self._open_own()
        payload = b"".join(orjson.dumps(record) + b"\n" for record in records)
        if not payload:
            return 0
        handle.write(payload)
        handle.flush()
        if self.fsync:
            os.fsync(handle.fileno())
        count = payload.count(b"\n")
        self._own_lines += count
        return count

    def has_pending(self) -> bool:
        """Whether any spool file (ours or an orphan) has records waiting."""
        if self._own_lines:
            return True
        return any(path.stat().st_size > 0 for path in self._files() if path != self._path)

    def _files(self) -> list[Path]:
        if not self.directory.is_dir():
            return []
        return sorted(self.directory.glob("spool-*.jsonl"), key=lambda path: path.stat().st_mtime)

    async def replay(self, write_batch: WriteBatch, batch_size: int = 500) -> int:
        """Write every spooled record to the store, in order; return how many were new.

        Raises what ``write_batch`` raises (the store went away again); whatever was not
        confirmed stays spooled for the next attempt.
        """
        new = 0
        for path in self._files():
            if path == self._path:
                continue
            orphan = try_lock(path)
            if orphan is None:
                continue  # a live process owns it
            try:
                new += await _replay_lines(path, write_batch, batch_size)
                path.unlink()
            finally:
                orphan.close()
        if self._file is not None and self._path is not None and self._own_lines:
            new += await _replay_lines(self._path, write_batch, batch_size)
            self._file.truncate(0)
            self._file.seek(0)
            self._own_lines = 0
        return new

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            if self._path is not None and self._path.exists() and self._path.stat().st_size == 0:
                self._path.unlink()
            self._file = None


async def _replay_lines(path: Path, write_batch: WriteBatch, batch_size: int) -> int:
    new = 0
    batch: list[dict[str, Any]] = []
    with open(path, "rb") as handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                batch.append(orjson.loads(line))
            except orjson.JSONDecodeError:
                logger.warning("accounting spool %s: skipping unreadable line %d", path.name, number)
                continue
            if len(batch) >= batch_size:
                new += await write_batch(batch)
                batch = []
    if batch:
        new += await write_batch(batch)
    return new
