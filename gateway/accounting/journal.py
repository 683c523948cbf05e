"""The request journal: a request's record (and its key settlement) is on local disk before its
answer completes, and stays there until the stores confirmed them.

One append-only JSON-lines segment per process in ``<data dir>/journal/``, held under an
exclusive ``flock`` for the process's lifetime (several workers share a data dir; a segment
whose lock is free belongs to a process that died). Two kinds of line::

    {"op": "add", "id": <request id>, "record": {...}, "settle": {...} | null, "duties": [...]}
    {"op": "done", "id": <request id>, "duty": "record" | "settle"}

An entry is *pending* until every duty it names is done: ``record`` (written to the record store,
or to the fsynced spool) and ``settle`` (the key's reservation replaced by the real cost).

**Group commit.** :meth:`Journal.append` returns once its line is written *and* fsynced. One
committer task writes whatever lines are waiting in one ``write`` and fsyncs them in a worker
thread; lines appended meanwhile go out together in the next round, so under load one fsync
serves many requests and a request waits for at most about one fsync more than its own. A
SIGKILL loses nothing that ``write`` handed to the kernel; the fsync is for power loss.
``done`` lines are not waited for: they go out with the next durable round (or at the latest
with :meth:`Journal.flush_done`, which the sweeper calls every second); losing one in a crash
only means an idempotent duty is done again after the restart.

**Replay.** :meth:`Journal.open` adopts orphan segments: their pending entries are copied into
this process's segment (fsynced) and the orphan is deleted; they come back from :meth:`open`
for the caller to finish. A torn last line (a crash mid-write) is skipped.

**Compaction.** When the segment grows past ``max_segment_bytes`` the still-pending entries are
copied into a fresh segment, which replaces it.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import logging
import os
import time
import uuid
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import orjson

from gateway.accounting.file_lock import try_lock

logger = logging.getLogger(__name__)

RECORD = "record"
SETTLE = "settle"


@dataclass(frozen=True, slots=True)
class Settlement:
    """What the key store must apply for one request: its reservation replaced by the real cost."""

    key_id: str
    reservation_id: str
    cost_nano: int
    tokens: int

    def to_dict(self) -> dict[str, Any]:
        return {"key_id": self.key_id, "reservation_id": self.reservation_id, "cost_nano": self.cost_nano,
                "tokens": self.tokens}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Settlement:
        return cls(str(data["key_id"]), str(data["reservation_id"]), int(data["cost_nano"]), int(data["tokens"]))


@dataclass(slots=True)
class JournalEntry:
    id: str
    record: dict[str, Any]
    settle: Settlement | None
    duties: set[str]
    added_at: float = field(default_factory=time.monotonic)

    def add_line(self) -> bytes:
        return orjson.dumps({"op": "add", "id": self.id, "record": self.record,
                             "settle": self.settle.to_dict() if self.settle else None,
                             "duties": sorted(self.duties)}) + b"\n"


class Journal:
    def __init__(self, directory: Path, *, fsync: bool = True, max_segment_bytes: int = 16 << 20) -> None:
        self.directory = directory
        self.fsync = fsync
        self.max_segment_bytes = max_segment_bytes
        self.entries: dict[str, JournalEntry] = {}  # pending only
        self.commits = 0  # fsync rounds (benchmarks: lines per round = appends / commits)
        self.failures = 0
        self._file: IO[bytes] | None = None
        self._path: Path | None = None
        self._size = 0
        self._buffer: list[bytes] = []
        self._buffer_durable = False  # the waiting lines include an "add" (worth an fsync)
        self._round: asyncio.Future[None] | None = None
        self._committer: asyncio.Task[None] | None = None

    # --- lifecycle ---------------------------------------------------------------------------

    async def open(self) -> list[JournalEntry]:
        """Open this process's segment and adopt orphans; return the adopted pending entries."""
        self.directory.mkdir(parents=True, exist_ok=True)
        self._open_segment()
        return await self.adopt_orphans()

    async def adopt_orphans(self) -> list[JournalEntry]:
        adopted: list[JournalEntry] = []
        for path in sorted(self.directory.glob("journal-*.jsonl")):
            if path == self._path:
                continue
            handle = try_lock(path)
            if handle is None:
                continue  # a live process owns it
            try:
                found = [e for e in read_entries(path) if e.id not in self.entries]
                if found:
                    for entry in found:
                        self.entries[entry.id] = entry
                    await self._write_round([entry.add_line() for entry in found], durable=True)
                path.unlink()
            finally:
                handle.close()
            adopted.extend(found)
        if adopted:
            logger.info("journal: adopted %d unfinished request(s) from a previous process", len(adopted))
        return adopted

    async def close(self) -> None:
        """Write what is waiting; keep the segment only if entries are still pending."""
        if self._committer is not None:
            await asyncio.shield(self._committer)
        if self._buffer:
            await self._write_round(self._take_buffer(), durable=True)
        if self._file is not None:
            self._file.close()
            self._file = None
            if self._path is not None and not self.entries:
                with contextlib.suppress(FileNotFoundError):
                    self._path.unlink()

    # --- the request path --------------------------------------------------------------------

    async def append(self, entry_id: str, record: dict[str, Any], settle: Settlement | None) -> JournalEntry:
        """Journal one finished request; durable (written and fsynced) when this returns."""
        duties = {RECORD, SETTLE} if settle is not None else {RECORD}
        entry = JournalEntry(entry_id, record, settle, duties)
        self.entries[entry_id] = entry
        await self._enqueue(entry.add_line(), durable=True)
        return entry

    def done(self, entry_id: str, duty: str) -> None:
        entry = self.entries.get(entry_id)
        if entry is None or duty not in entry.duties:
            return
        entry.duties.discard(duty)
        if not entry.duties:
            del self.entries[entry_id]
        self._buffer.append(orjson.dumps({"op": "done", "id": entry_id, "duty": duty}) + b"\n")

    def flush_done(self) -> None:
        """Write waiting acknowledgements now (no fsync)."""
        if self._buffer:
            self._start_committer()

    def pending(self, duty: str, older_than_s: float = 0.0) -> list[JournalEntry]:
        cutoff = time.monotonic() - older_than_s
        return [e for e in self.entries.values() if duty in e.duties and e.added_at <= cutoff]

    # --- group commit ------------------------------------------------------------------------

    async def _enqueue(self, line: bytes, *, durable: bool) -> None:
        self._buffer.append(line)
        self._buffer_durable = self._buffer_durable or durable
        if self._round is None:
            self._round = asyncio.get_running_loop().create_future()
        waiting = self._round
        self._start_committer()
        # Shielded: a request cancelled while it waits (client gone) must not cancel a round
        # other requests wait on; the line is written either way.
        await asyncio.shield(waiting)

    def _start_committer(self) -> None:
        if self._committer is None or self._committer.done():
            self._committer = asyncio.ensure_future(self._commit_loop())

    def _take_buffer(self) -> list[bytes]:
        lines, self._buffer = self._buffer, []
        return lines

    async def _commit_loop(self) -> None:
        while self._buffer:
            durable, self._buffer_durable = self._buffer_durable, False
            waiting, self._round = self._round, None
            try:
                await self._write_round(self._take_buffer(), durable=durable)
            except OSError:
                # A full or failing disk must not fail answers already produced: the records
                # still go to the stores from memory; only crash-safety is lost (and logged).
                self.failures += 1
                logger.exception("journal write failed; records are not crash-safe until it recovers")
            finally:
                if waiting is not None and not waiting.done():
                    waiting.set_result(None)
            if self._size > self.max_segment_bytes:
                await self._compact()

    async def _write_round(self, lines: Iterable[bytes], *, durable: bool) -> None:
        handle = self._require_file()
        data = b"".join(lines)
        handle.write(data)
        handle.flush()  # in the kernel now: a SIGKILL from here on loses nothing
        self._size += len(data)
        if durable and self.fsync:
            await asyncio.to_thread(os.fsync, handle.fileno())
            self.commits += 1

    async def _compact(self) -> None:
        old_file, old_path = self._file, self._path
        self._file = None
        self._open_segment()
        await self._write_round([entry.add_line() for entry in self.entries.values()], durable=True)
        if old_file is not None:
            old_file.close()
        if old_path is not None:
            with contextlib.suppress(FileNotFoundError):
                old_path.unlink()

    # --- files -------------------------------------------------------------------------------

    def _open_segment(self) -> None:
        self._path = self.directory / f"journal-{os.getpid()}-{uuid.uuid4().hex[:8]}.jsonl"
        handle = open(self._path, "ab")  # noqa: SIM115 - held open (and locked) for the process's lifetime
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        self._file = handle
        self._size = 0

    def _require_file(self) -> IO[bytes]:
        if self._file is None:
            raise OSError("the journal is not open")
        return self._file


def read_entries(path: Path) -> list[JournalEntry]:
    """The pending entries of one segment, in order (a torn or unreadable line is skipped)."""
    entries: dict[str, JournalEntry] = {}
    with open(path, "rb") as handle:
        for number, line in enumerate(handle, start=1):
            try:
                item = orjson.loads(line)
            except orjson.JSONDecodeError:
                logger.warning("journal %s: skipping unreadable line %d", path.name, number)
                continue
            entry_id = str(item.get("id"))
            if item.get("op") == "add":
                settle = Settlement.from_dict(item["settle"]) if item.get("settle") else None
                entries[entry_id] = JournalEntry(entry_id, item["record"], settle, set(item.get("duties") or ()))
            elif item.get("op") == "done" and entry_id in entries:
                entries[entry_id].duties.discard(str(item.get("duty")))
    return [entry for entry in entries.values() if entry.duties]
