"""The request journal on real files: group commit, replay after a crash, torn lines, compaction,
and the accounting service finishing journaled work (records and settlements) after a restart.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import orjson

from gateway.accounting.facts import record_to_dict
from gateway.accounting.journal import RECORD, SETTLE, Journal, Settlement, read_entries
from gateway.accounting.service import AccountingService
from gateway.accounting.spool import Spool
from gateway.accounting.sqlite_store import SQLiteRecordStore
from gateway.core.record import RequestRecord

SETTLE_ONE = Settlement("key_1", "rsv-1", 1234, 20)


def _record(request_id: str, cost: float = 0.001) -> dict[str, Any]:
    return record_to_dict(RequestRecord(request_id=request_id, public_model="m", endpoint="chat", stream=False,
                                        cost_usd=cost, created_at=time.time()))


async def test_group_commit_batches_concurrent_appends(tmp_path: Path) -> None:
    journal = Journal(tmp_path)
    await journal.open()
    await asyncio.gather(*(journal.append(f"req-{i}", _record(f"req-{i}"), None) for i in range(200)))
    assert 1 <= journal.commits < 200  # many appends per fsync
    assert len(journal.entries) == 200
    for i in range(200):
        journal.done(f"req-{i}", RECORD)
    assert not journal.entries
    await journal.close()
    assert list(tmp_path.glob("journal-*.jsonl")) == []  # nothing pending: the segment is gone


def test_a_killed_process_leaves_its_appended_entries_on_disk(tmp_path: Path) -> None:
    # A child appends (awaiting each append) and prints, then is SIGKILLed: what it printed is on disk.
    script = (
        "import asyncio, sys\n"
        "from pathlib import Path\n"
        "from gateway.accounting.journal import Journal, Settlement\n"
        "async def main():\n"
        f"    journal = Journal(Path({str(tmp_path)!r}))\n"
        "    await journal.open()\n"
        "    for i in range(50):\n"
        "        await journal.append(f'req-{i}', {'request_id': f'req-{i}'}, Settlement('k', f'r{i}', i, i))\n"
        "        print(i, flush=True)\n"
        "    journal.done('req-0', 'record')\n"
        "    journal.flush_done()\n"
        "    await asyncio.sleep(0.2)\n"
        "    print('acked', flush=True)\n"
        "    await asyncio.sleep(60)\n"
        "asyncio.run(main())\n"
    )
    child = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True,
                             cwd=Path(__file__).resolve().parent.parent)
    assert child.stdout is not None
    lines = [child.stdout.readline().strip() for _ in range(51)]
    child.kill()
    child.wait(timeout=10)
    assert lines[-1] == "acked"
    (segment,) = tmp_path.glob("journal-*.jsonl")
    entries = {entry.id: entry for entry in read_entries(segment)}
    assert len(entries) == 50
    assert entries["req-0"].duties == {SETTLE} and entries["req-1"].duties == {RECORD, SETTLE}
    assert entries["req-7"].settle == Settlement("k", "r7", 7, 7)


async def test_orphans_are_adopted_once_and_a_torn_line_is_skipped(tmp_path: Path) -> None:
    orphan = tmp_path / "journal-999999-dead.jsonl"
    good = {"op": "add", "id": "req-a", "record": _record("req-a"), "settle": SETTLE_ONE.to_dict(),
            "duties": [RECORD, SETTLE]}
    done = {"op": "done", "id": "req-a", "duty": RECORD}
    orphan.write_bytes(orjson.dumps(good) + b"\n" + orjson.dumps(done) + b"\n" + b'{"op": "add", "id": "req-b", "rec')
    journal = Journal(tmp_path)
    adopted = await journal.open()
    assert [(e.id, e.duties, e.settle) for e in adopted] == [("req-a", {SETTLE}, SETTLE_ONE)]
    assert not orphan.exists()
    await journal.close()  # still pending: its own segment stays for the next process
    second = Journal(tmp_path)
    assert [e.id for e in await second.open()] == ["req-a"]
    second.done("req-a", SETTLE)
    await second.close()
    third = Journal(tmp_path)
    assert await third.open() == []
    await third.close()


async def test_compaction_keeps_only_pending_entries(tmp_path: Path) -> None:
    journal = Journal(tmp_path, max_segment_bytes=20_000)
    await journal.open()
    for i in range(300):
        await journal.append(f"req-{i}", _record(f"req-{i}"), None)
        if i % 10:
            journal.done(f"req-{i}", RECORD)
    await journal.append("req-last", _record("req-last"), None)  # a round after the last acknowledgements
    segments = list(tmp_path.glob("journal-*.jsonl"))
    assert len(segments) == 1 and os.path.getsize(segments[0]) < 40_000
    assert sorted(e.id for e in read_entries(segments[0])) == sorted(
        [f"req-{i}" for i in range(0, 300, 10)] + ["req-last"])
    await journal.close()


async def test_the_service_finishes_a_dead_process_journal(tmp_path: Path) -> None:
    """Records and settlements journaled by a process that died reach the stores after a restart."""
    journal_dir = tmp_path / "journal"
    first = Journal(journal_dir)
    await first.open()
    for i in range(5):
        await first.append(f"req-{i}", _record(f"req-{i}"), Settlement("key_1", f"rsv-{i}", 1000 + i, 10))
    assert first._file is not None
    first._file.close()  # the process "dies": its lock goes, its segment stays (no Journal.close)
    settled: list[Settlement] = []

    async def settle(settlement: Settlement) -> None:
        settled.append(settlement)

    store = SQLiteRecordStore(tmp_path / "accounting.sqlite3")
    service = AccountingService(store, Spool(tmp_path / "spool"), journal=Journal(journal_dir), sweep_interval_s=0.05)
    await service.start()
    service.attach_settler(settle)
    try:
        assert await service.wait_idle(timeout_s=15)
        for i in range(5):
            assert await service.get_record(f"req-{i}") is not None
        assert sorted(s.reservation_id for s in settled) == [f"rsv-{i}" for i in range(5)]
        record = RequestRecord(request_id="req-live", public_model="m", endpoint="chat", stream=False)
        await service.submit(record, Settlement("key_1", "rsv-live", 1, 1))  # the request path
        service.settled("req-live")
        assert await service.wait_idle(timeout_s=15)
    finally:
        await service.close()
    assert len(settled) == 5  # the live one was settled by the request path, not swept again
