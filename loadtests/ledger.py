"""Read back what the stores hold after a fault run: records per request, spend per key.

"Spend equals records" is checked in integer nano-dollars, exactly as the gateway settles:
a key's ``spent_nano`` must equal the sum over its records of ``round(cost_usd * 1e9)``.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

import orjson
import redis

NANO_PER_USD = 1_000_000_000


@dataclass
class Ledger:
    records: Counter[str] = field(default_factory=Counter)  # request id -> records in the stream
    record_nano: Counter[str] = field(default_factory=Counter)  # key id -> sum of its records' cost
    spent_nano: dict[str, int] = field(default_factory=dict)  # key id -> the key store's spend
    reserved_nano: dict[str, int] = field(default_factory=dict)

    def missing(self, request_ids: list[str]) -> list[str]:
        return [request_id for request_id in request_ids if self.records[request_id] == 0]

    def duplicated(self) -> list[str]:
        return [request_id for request_id, count in self.records.items() if count > 1]

    def spend_matches(self, key_id: str) -> bool:
        return self.spent_nano.get(key_id, 0) == self.record_nano.get(key_id, 0)


def read_ledger(redis_url: str, key_ids: list[str], prefix: str = "slmgw:") -> Ledger:
    client = redis.Redis.from_url(redis_url, decode_responses=True)
    ledger = Ledger()
    try:
        last = "-"
        while True:
            rows = [(str(entry_id), fields or {})
                    for entry_id, fields in client.xrange(f"{prefix}records", min=last, max="+", count=1000) or []
                    if str(entry_id) != last]
            if not rows:
                break
            for entry_id, fields in rows:
                record = orjson.loads(str(fields["record"]))
                ledger.records[str(record["request_id"])] += 1
                if record.get("key_id"):
                    ledger.record_nano[str(record["key_id"])] += round(float(record["cost_usd"]) * NANO_PER_USD)
                last = entry_id
        for key_id in key_ids:
            ledger.spent_nano[key_id] = int(client.hget(f"{prefix}key:{key_id}", "spent_nano") or 0)
            ledger.reserved_nano[key_id] = int(client.hget(f"{prefix}key:{key_id}", "reserved_nano") or 0)
    finally:
        client.close()
    return ledger
