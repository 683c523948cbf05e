"""Records in a Redis Stream, aggregates in per-minute hashes, written by one Lua script.

Layout (``P`` is the key prefix, ``M`` the minute, epoch seconds // 60)::

    P records               Stream, capped with XADD MAXLEN ~ (the policy's record_stream_maxlen)
    P req:<request_id>      the record's stream entry id; doubles as the idempotency guard
    P agg:<dimension>:<M>   hash "<group>|<metric>" -> sum; metrics are the counters and the
                            latency / TTFT bucket counts "lat:<i>" / "ttft:<i>" (see buckets.py)
    P minutes               sorted set of minutes that have aggregates (usage reads only those)

The script makes "check the guard, append, count" atomic: a record replayed from the spool,
or written twice after an ambiguous network failure, is counted once. Batches go through one
non-transactional pipeline (one round trip per batch).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import orjson
import redis.asyncio as aioredis
from redis.exceptions import RedisError

from gateway.accounting.buckets import bucket_of
from gateway.accounting.counters import COUNTER_FIELDS
from gateway.accounting.facts import DIMENSIONS, Contribution, contributions, minute_of
from gateway.accounting.store import GroupTotals, StoreUnavailableError
from gateway.redis_pool import RedisPoolSettings, redis_client

# KEYS: guard, stream, minutes, agg hash per dimension (in DIMENSIONS order).
# ARGV: guard_ttl, maxlen, request_id, record_json, agg_ttl, minute, minutes_cutoff,
#       then (key_index, field, kind, value) quadruples; kind "i" integer, "f" float.
_WRITE_SCRIPT = """
if not redis.call('SET', KEYS[1], '-', 'NX', 'EX', ARGV[1]) then
  return 0
end
local entry = redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[2], '*', 'id', ARGV[3], 'record', ARGV[4])
redis.call('SET', KEYS[1], entry, 'EX', ARGV[1])
for i = 8, #ARGV, 4 do
  local key = KEYS[tonumber(ARGV[i])]
  if ARGV[i + 2] == 'i' then
    redis.call('HINCRBY', key, ARGV[i + 1], ARGV[i + 3])
  else
    redis.call('HINCRBYFLOAT', key, ARGV[i + 1], ARGV[i + 3])
  end
end
for k = 4, #KEYS do
  redis.call('EXPIRE', KEYS[k], ARGV[5])
end
redis.call('ZADD', KEYS[3], ARGV[6], ARGV[6])
redis.call('ZREMRANGEBYSCORE', KEYS[3], '-inf', '(' .. ARGV[7])
return 1
"""



class RedisRecordStore:
    def __init__(
        self,
        url: str,
        *,
        prefix: str = "slmgw:",
        stream_maxlen: int = 1_000_000,
        guard_ttl_s: int = 3 * 86_400,
        aggregate_ttl_s: int = 35 * 86_400,
        pool: RedisPoolSettings | None = None,
    ) -> None:
        self.url = url
        self.prefix = prefix
        self.stream_maxlen = stream_maxlen
        self.guard_ttl_s = guard_ttl_s
        self.aggregate_ttl_s = aggregate_ttl_s
        # A blocking pool: a burst beyond its size waits for a connection instead of failing.
        self._client: aioredis.Redis = redis_client(url, pool or RedisPoolSettings(), connect_timeout_s=1.0,
                                                    socket_timeout_s=5.0)
        self._script = self._client.register_script(_WRITE_SCRIPT)

    @property
    def stream_key(self) -> str:
        return f"{self.prefix}records"

    async def open(self) -> None:
        """Nothing to do: connections are made on first use, so a down Redis never blocks start."""

    async def ping(self) -> bool:
        try:
            return bool(await self._client.ping())
        except (RedisError, OSError):
            return False

    async def write_batch(self, records: Sequence[Mapping[str, Any]]) -> int:
        if not records:
            return 0
        try:
            async with self._client.pipeline(transaction=False) as pipe:
                for record in records:
                    keys, args = self._script_call(record)
                    await self._script(keys=keys, args=args, client=pipe)
                results = await pipe.execute()
        except (RedisError, OSError) as exc:
            raise StoreUnavailableError(f"redis write failed: {type(exc).__name__}") from exc
        return sum(1 for result in results if int(result) == 1)

    def _script_call(self, record: Mapping[str, Any]) -> tuple[list[str], list[str | int | float]]:
        minute = minute_of(record)
        request_id = str(record["request_id"])
        keys = [f"{self.prefix}req:{request_id}", self.stream_key, f"{self.prefix}minutes"]
        keys += [f"{self.prefix}agg:{dimension}:{minute}" for dimension in DIMENSIONS]
        args: list[str | int | float] = [
            self.guard_ttl_s, self.stream_maxlen, request_id, orjson.dumps(record).decode(),
            self.aggregate_ttl_s, minute, minute - self.aggregate_ttl_s // 60,
        ]
        for dimension, groups in contributions(record).items():
            key_index = 4 + DIMENSIONS.index(dimension)  # 1-based KEYS index in Lua
            for group, item in groups.items():
                args += _increments(key_index, group, item)
        return keys, args

    async def totals(self, first_minute: int, last_minute: int, dimension: str) -> dict[str, GroupTotals]:
        try:
            found = await self._client.zrangebyscore(f"{self.prefix}minutes", first_minute, last_minute)
            minutes = [str(minute) for minute in found]
            async with self._client.pipeline(transaction=False) as pipe:
                for minute in minutes:
                    pipe.hgetall(f"{self.prefix}agg:{dimension}:{minute}")
                hashes: list[dict[str, str]] = await pipe.execute()
        except (RedisError, OSError) as exc:
            raise StoreUnavailableError(f"redis read failed: {type(exc).__name__}") from exc
        groups: dict[str, GroupTotals] = {}
        for fields in hashes:
            for name, value in fields.items():
                group, metric = name.rsplit("|", 1)
                totals = groups.setdefault(group, GroupTotals())
                if metric.startswith("lat:"):
                    index = int(metric[4:])
                    totals.latency_hist[index] = totals.latency_hist.get(index, 0) + int(value)
                elif metric.startswith("ttft:"):
                    index = int(metric[5:])
                    totals.ttft_hist[index] = totals.ttft_hist.get(index, 0) + int(value)
                else:
                    totals.add_counter(metric, float(value))
        return groups

    async def get_record(self, request_id: str) -> dict[str, Any] | None:
        try:
            entry = await self._client.get(f"{self.prefix}req:{request_id}")
            if not entry or entry == "-":
                return None
            rows = await self._client.xrange(self.stream_key, entry, entry)
        except (RedisError, OSError) as exc:
            raise StoreUnavailableError(f"redis read failed: {type(exc).__name__}") from exc
        if not rows:
            return None  # trimmed out of the capped stream
        fields = rows[0][1] or {}
        record: dict[str, Any] = orjson.loads(fields["record"])
        return record

    async def recent_records(self, limit: int) -> list[dict[str, Any]]:
        """The stream's last entries: appended in write order, which is submission order."""
        try:
            rows = await self._client.xrevrange(self.stream_key, "+", "-", count=limit)
        except (RedisError, OSError) as exc:
            raise StoreUnavailableError(f"redis read failed: {type(exc).__name__}") from exc
        return [orjson.loads(fields["record"]) for _entry, fields in rows or [] if fields and "record" in fields]

    async def count_records(self) -> int:
        """Entries in the stream (tests and the outage check)."""
        return int(await self._client.xlen(self.stream_key))

    async def delete_all(self) -> None:
        """Remove every key under the prefix (tests)."""
        async for key in self._client.scan_iter(match=f"{self.prefix}*", count=500):
            await self._client.delete(key)

    async def close(self) -> None:
        await self._client.aclose()


def _increments(key_index: int, group: str, item: Contribution) -> list[str | int | float]:
    out: list[str | int | float] = []
    for counter in COUNTER_FIELDS:  # zeros are skipped; requests (always >= 1) keeps the group
        value = getattr(item, counter.name)
        if not value:
            continue
        if counter.kind == "int":
            out += [key_index, f"{group}|{counter.name}", "i", int(value)]
        else:
            out += [key_index, f"{group}|{counter.name}", "f", repr(float(value))]
    if item.latency_ms is not None:
        out += [key_index, f"{group}|lat:{bucket_of(item.latency_ms)}", "i", 1]
    if item.ttft_ms is not None:
        out += [key_index, f"{group}|ttft:{bucket_of(item.ttft_ms)}", "i", 1]
    return out
