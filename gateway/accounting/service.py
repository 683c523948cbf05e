"""The accounting service: a bounded queue in front of a background writer.

``submit`` is what the request path pays: one ``put_nowait`` (and a dict insert so the record
can be read back before it is flushed). A single writer task drains the queue in batches and
writes them to the store. When the store is unavailable, batches go to the spool and every
later batch follows them there (so order is kept), until a replay — retried with backoff —
empties the spool; then direct writes resume. When the queue is full, ``submit`` appends the
record to the spool itself (no drop, no wait). ``close`` drains the queue and flushes: what
cannot reach the store stays in the spool for the next start, which replays it.

With a :class:`~gateway.accounting.journal.Journal` (the gateway's default), ``submit`` first
journals the record — and the key settlement that goes with it — and returns only once that is
fsynced, so a record is durable before its answer completes. The journal entry is done when
the record reached the store or the (fsynced) spool and the settlement reached the key store;
a sweeper retries what is still pending (settlements that failed, records the writer never
saw) and adopts the journals of processes that died, so spend and records always converge.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from gateway.accounting.facts import DIMENSIONS, record_to_dict
from gateway.accounting.journal import RECORD, SETTLE, Journal, Settlement
from gateway.accounting.redis_store import RedisRecordStore
from gateway.accounting.spool import Spool
from gateway.accounting.sqlite_store import SQLiteRecordStore
from gateway.accounting.store import GroupTotals, RecordStore, StoreUnavailableError, usage_body
from gateway.accounting.window import minute_window
from gateway.core.errors import InvalidRequestError
from gateway.core.record import RequestRecord
from gateway.redis_pool import RedisPoolSettings

logger = logging.getLogger(__name__)

TimeArg = str | float | datetime | None
Settler = Callable[[Settlement], Awaitable[None]]


@dataclass(slots=True)
class AccountingStats:
    submitted: int = 0
    written: int = 0  # new records the store confirmed
    spooled: int = 0  # records appended to the spool (writer side and queue-full spills)
    spilled: int = 0  # of those, spilled by submit because the queue was full
    replayed: int = 0  # new records written from the spool
    swept_records: int = 0  # records the sweeper wrote from the journal
    swept_settlements: int = 0  # settlements the sweeper applied from the journal


class AccountingService:
    def __init__(
        self,
        store: RecordStore,
        spool: Spool,
        *,
        queue_size: int = 10_000,
        batch_size: int = 256,
        retry_initial_s: float = 0.5,
        retry_max_s: float = 5.0,
        linger_s: float = 0.002,
        journal: Journal | None = None,
        sweep_interval_s: float = 1.0,
    ) -> None:
        self.store = store
        self.spool = spool
        self.journal = journal
        self.sweep_interval_s = sweep_interval_s
        self._settler: Settler | None = None
        self._sweeper: asyncio.Task[None] | None = None
        self._sweep_delay = sweep_interval_s
        self.batch_size = batch_size
        self.retry_initial_s = retry_initial_s
        self.retry_max_s = retry_max_s
        self.linger_s = linger_s
        self.stats = AccountingStats()
        self._queue: asyncio.Queue[RequestRecord | None] = asyncio.Queue(maxsize=queue_size)
        self._unflushed: dict[str, RequestRecord] = {}
        self._dicts: dict[str, dict[str, Any]] = {}  # stored form of journaled records not yet written
        self._writer: asyncio.Task[None] | None = None
        self._spool_pending = False
        self._retry_delay = retry_initial_s
        self._next_retry_at = 0.0
        self._closed = False

    # --- lifecycle -------------------------------------------------------------------------

    async def start(self) -> None:
        try:
            await self.store.open()
        except StoreUnavailableError as exc:
            logger.warning("accounting store not reachable at start, spooling until it is: %s", exc)
        self._spool_pending = self.spool.has_pending()  # orphans left by an earlier process
        self._writer = asyncio.create_task(self._write_loop(), name="accounting-writer")
        if self.journal is not None:
            for entry in await self.journal.open():
                entry.added_at = 0.0  # a dead process's unfinished work: due at the first sweep
            self._sweeper = asyncio.create_task(self._sweep_loop(), name="accounting-journal-sweeper")

    def attach_settler(self, settler: Settler) -> None:
        """How journaled settlements are applied (the key store's ``settle``); set by the auth layer."""
        self._settler = settler

    def settled(self, request_id: str) -> None:
        """The request path applied the settlement itself."""
        if self.journal is not None:
            self.journal.done(request_id, SETTLE)

    async def close(self) -> None:
        """Flush the queue (and the spool, if the store is back) and release the store."""
        if self._closed:
            return
        self._closed = True
        if self._sweeper is not None:
            self._sweeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._sweeper
            self._sweeper = None
        if self._writer is not None:
            await self._queue.put(None)  # the writer stops after everything before it
            await self._writer
            self._writer = None
        if self.journal is not None:
            try:  # one last attempt; what still fails stays journaled for the next start
                await asyncio.wait_for(self.sweep(older_than_s=0.0), timeout=10.0)
            except Exception:
                logger.warning("journal: unfinished entries stay for the next start", exc_info=True)
            await self.journal.close()
        self.spool.close()
        await self.store.close()

    # --- request path ------------------------------------------------------------------------

    async def submit(self, record: RequestRecord, settle: Settlement | None = None) -> None:
        """Hand a finished record over; never drops. With a journal, returns once it is durable."""
        self.stats.submitted += 1
        journaled = False
        if self.journal is not None and not self._closed:
            entry = await self.journal.append(record.request_id, record_to_dict(record), settle)
            self._dicts[record.request_id] = entry.record  # the writer reuses it: one conversion
            journaled = True
        if self._closed or self._writer is None:
            self._spill(record)
            return
        try:
            self._queue.put_nowait(record)
        except asyncio.QueueFull:
            if not journaled:
                self._spill(record)
            return  # journaled: the sweeper writes it (the queue is full; nothing waits for it)
        self._unflushed[record.request_id] = record

    def _spill(self, record: RequestRecord) -> None:
        # No fsync here: this runs on the request path; flush() puts it in the OS's hands.
        self.spool.fsync, durable = False, self.spool.fsync
        try:
            self.spool.append([record_to_dict(record)])
        finally:
            self.spool.fsync = durable
        self.stats.spooled += 1
        self.stats.spilled += 1
        self._spool_pending = True
        self._next_retry_at = 0.0

    # --- writer ------------------------------------------------------------------------------

    async def _write_loop(self) -> None:
        stopping = False
        while not stopping:
            timeout = max(0.0, self._next_retry_at - time.monotonic()) if self._spool_pending else None
            batch: list[RequestRecord] = []
            try:
                first = await asyncio.wait_for(self._queue.get(), timeout=timeout)
            except TimeoutError:
                first = None
                if self._spool_pending:
                    await self._try_replay()
                continue
            if first is None:
                stopping = True
            else:
                batch.append(first)
                if self.linger_s > 0 and self._queue.qsize() < self.batch_size:
                    # Under load, a short wait turns many one-record round trips into one batch.
                    await asyncio.sleep(self.linger_s)
            while len(batch) < self.batch_size and not stopping:
                try:
                    item = self._queue.get_nowait()
                except asyncio.QueueEmpty:
                    break
                if item is None:
                    stopping = True
                else:
                    batch.append(item)
            try:
                await self._flush(batch)
            except Exception:  # the writer must survive anything a batch throws at it
                logger.exception("accounting writer failed on a batch; spooling it")
                self._spool_batch([self._as_dict(record) for record in batch])
            finally:
                for record in batch:
                    self._unflushed.pop(record.request_id, None)
                    self._dicts.pop(record.request_id, None)
        if self._spool_pending:
            self._next_retry_at = 0.0
            await self._try_replay()

    async def _flush(self, batch: list[RequestRecord]) -> None:
        if self._spool_pending and time.monotonic() >= self._next_retry_at:
            await self._try_replay()
        if not batch:
            return
        records = [self._as_dict(record) for record in batch]
        if self._spool_pending:  # older records wait in the spool: keep the order
            self._spool_batch(records)
            return
        try:
            self.stats.written += await self.store.write_batch(records)
        except StoreUnavailableError as exc:
            logger.warning("accounting store unavailable (%s); spooling records until it is back", exc)
            self._spool_batch(records)
            self._next_retry_at = time.monotonic() + self._retry_delay
            return
        self._recorded(records)

    def _as_dict(self, record: RequestRecord) -> dict[str, Any]:
        journaled = self._dicts.get(record.request_id)
        return journaled if journaled is not None else record_to_dict(record)

    def _spool_batch(self, records: list[dict[str, Any]]) -> None:
        self.stats.spooled += self.spool.append(records)  # fsynced: the spool now answers for them
        self._spool_pending = True
        self._recorded(records)

    def _recorded(self, records: list[dict[str, Any]]) -> None:
        if self.journal is not None:
            for record in records:
                self.journal.done(str(record["request_id"]), RECORD)

    # --- journal sweeper ---------------------------------------------------------------------

    async def _sweep_loop(self) -> None:
        while True:
            await asyncio.sleep(self._sweep_delay)
            try:
                progressed = await self.sweep()
            except Exception:  # the sweeper must outlive any one failure
                logger.exception("journal sweep failed")
                progressed = False
            self._sweep_delay = self.sweep_interval_s if progressed else min(5.0, self._sweep_delay * 2)

    async def _write_one_by_one(self, records: list[dict[str, Any]]) -> None:
        for record in records:
            try:
                self.stats.written += await self.store.write_batch([record])
            except StoreUnavailableError:
                return
            except Exception:
                logger.exception("journal: record %s cannot be stored; dropped from the journal",
                                 record.get("request_id"))
            self._recorded([record])

    async def sweep(self, older_than_s: float = 2.0) -> bool:
        """Finish journaled work nobody else is doing; True unless a store refused."""
        journal = self.journal
        if journal is None:
            return True
        journal.flush_done()  # acknowledgements wait for a round; write them at least this often
        await journal.adopt_orphans()  # a worker or replica on this data dir that died
        ok = True
        stale = journal.pending(RECORD, older_than_s)
        for start in range(0, len(stale), 500):
            chunk = stale[start:start + 500]
            try:
                self.stats.written += await self.store.write_batch([entry.record for entry in chunk])
            except StoreUnavailableError:
                ok = False
                break
            except Exception:  # a record the store cannot take must not block every later one
                await self._write_one_by_one([entry.record for entry in chunk])
                continue
            self.stats.swept_records += len(chunk)
            self._recorded([entry.record for entry in chunk])
        if self._settler is None:
            return ok
        for entry in journal.pending(SETTLE, older_than_s):
            assert entry.settle is not None
            try:
                await self._settler(entry.settle)
            except Exception as exc:  # the key store is down: retried at the next sweep
                logger.warning("journal: settlement of %s still pending (%s)", entry.id, type(exc).__name__)
                return False
            journal.done(entry.id, SETTLE)
            self.stats.swept_settlements += 1
        return ok

    async def _try_replay(self) -> None:
        try:
            new = await self.spool.replay(self.store.write_batch, batch_size=max(self.batch_size, 500))
        except StoreUnavailableError:
            self._next_retry_at = time.monotonic() + self._retry_delay
            self._retry_delay = min(self.retry_max_s, self._retry_delay * 2)
            return
        self.stats.replayed += new
        self.stats.written += new
        self._spool_pending = self.spool.has_pending()
        self._retry_delay = self.retry_initial_s
        if new:
            logger.info("accounting store back: replayed %d spooled records", new)

    async def wait_idle(self, timeout_s: float = 30.0) -> bool:
        """Wait until the queue is empty and the spool replayed (tests, benchmarks, report)."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            journal_idle = self.journal is None or not self.journal.entries
            if not self._unflushed and self._queue.empty() and not self._spool_pending and journal_idle:
                return True
            await asyncio.sleep(0.01)
        return False

    # --- read side ---------------------------------------------------------------------------

    async def totals(self, since: TimeArg, until: TimeArg, group_by: str) -> dict[str, GroupTotals]:
        if group_by not in DIMENSIONS:
            raise InvalidRequestError(f"group_by must be one of {', '.join(DIMENSIONS)}", param="group_by")
        first, last = minute_window(since, until)
        return await self.store.totals(first, last, group_by)

    async def usage(
        self, since: TimeArg = None, until: TimeArg = None, group_by: str = "route"
    ) -> dict[str, Any]:
        """The ``/v1/gateway/usage`` body. Raises StoreUnavailableError when the store is down."""
        return usage_body(await self.totals(since, until, group_by))

    async def get_record(self, request_id: str) -> dict[str, Any] | None:
        pending = self._unflushed.get(request_id)
        if pending is not None:
            return record_to_dict(pending)
        return await self.store.get_record(request_id)


def build_accounting(
    redis_url: str | None,
    data_dir: Path,
    stream_maxlen: int = 1_000_000,
    *,
    redis_prefix: str = "slmgw:",
    queue_size: int = 10_000,
    redis_pool: RedisPoolSettings | None = None,
    journal: bool = False,
) -> AccountingService:
    """Redis when ``redis_url`` is set, else the SQLite file ``<data_dir>/accounting.sqlite3``.

    ``journal``: keep the request journal in ``<data_dir>/journal`` (the gateway does; offline
    tools that only read must not adopt a dead gateway's journal, so it is off by default)."""
    store: RecordStore
    if redis_url:
        store = RedisRecordStore(redis_url, prefix=redis_prefix, stream_maxlen=stream_maxlen, pool=redis_pool)
    else:
        store = SQLiteRecordStore(data_dir / "accounting.sqlite3")
    return AccountingService(store, Spool(data_dir / "accounting-spool"), queue_size=queue_size,
                             journal=Journal(data_dir / "journal") if journal else None)


@contextlib.asynccontextmanager
async def running_accounting(service: AccountingService) -> Any:
    """``async with running_accounting(service):`` start, then always close (CLI, tests)."""
    await service.start()
    try:
        yield service
    finally:
        await service.close()
