"""The self-calibration store in Redis (see ``selfcal_store.py`` for what it holds and promises).

Layout (``P`` is the prefix, ``T`` = ``<model>|<tier>``, ``D`` = ``<model>|<UTC day>``)::

    P selfcal:index          set of JSON [model, tier]: every tier with labels or a state
    P selfcal:labels:T       list of label JSON, oldest first, trimmed to the newest max_labels
    P selfcal:count:T        labels ever added
    P selfcal:state:T        hash {version, data}: the CalibrationState JSON and its version
    P selfcal:drift:T        states stored with reason "drift"
    P shadow:D               hash {spent, held}: the day's settled spend and open holds, nano-dollars
    P shadow:D:holds         hash hold id -> nano-dollars held
    P shadow:D:lapse         sorted set hold id -> when it lapses (Redis TIME), for crashed replicas

The version compare-and-set, the budget hold and the settlement are single Lua scripts (atomic
on the server); appending a label is one MULTI transaction.
"""

from __future__ import annotations

from collections.abc import Sequence

import orjson
import redis.asyncio as aioredis
from redis.exceptions import RedisError

from gateway.accounting.selfcal_settings import DEFAULT_HOLD_TTL_S, DEFAULT_MAX_LABELS
from gateway.accounting.selfcal_store import ShadowDay, StoreError
from gateway.core.selfcal import CalibrationState, Label
from gateway.redis_pool import RedisPoolSettings, redis_client

_DAY_TTL_S = 3 * 86_400  # a day's ledger outlives the day by enough for reports and late settlements

# KEYS: state, index, drift.  ARGV: new version, state JSON, index member, reason.
_PUT_STATE = """
local stored = tonumber(redis.call('HGET', KEYS[1], 'version') or '0')
if stored + 1 ~= tonumber(ARGV[1]) then return 0 end
redis.call('HSET', KEYS[1], 'version', ARGV[1], 'data', ARGV[2])
redis.call('SADD', KEYS[2], ARGV[3])
if ARGV[4] == 'drift' then redis.call('INCR', KEYS[3]) end
return 1
"""

_LAPSE = """
if redis.replicate_commands then pcall(redis.replicate_commands) end
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1e6
for _, id in ipairs(redis.call('ZRANGEBYSCORE', KEYS[3], '-inf', now)) do
  local held = redis.call('HGET', KEYS[2], id)
  if held then
    redis.call('HINCRBY', KEYS[1], 'held', -tonumber(held))
    redis.call('HDEL', KEYS[2], id)
  end
  redis.call('ZREM', KEYS[3], id)
end
"""

# KEYS: day, holds, lapse.  ARGV: hold id, nano, budget nano, hold ttl, day ttl.
_HOLD = _LAPSE + """
local f = redis.call('HMGET', KEYS[1], 'spent', 'held')
local spent, held = tonumber(f[1]) or 0, tonumber(f[2]) or 0
local nano = tonumber(ARGV[2])
if spent + held + nano > tonumber(ARGV[3]) then return 0 end
redis.call('HINCRBY', KEYS[1], 'held', nano)
redis.call('HINCRBY', KEYS[2], ARGV[1], nano)
redis.call('ZADD', KEYS[3], now + tonumber(ARGV[4]), ARGV[1])
for i = 1, 3 do redis.call('EXPIRE', KEYS[i], ARGV[5]) end
return 1
"""

# KEYS: day, holds, lapse.  ARGV: hold id, cost nano, day ttl.
_SETTLE = """
local held = redis.call('HGET', KEYS[2], ARGV[1])
if held then
  redis.call('HINCRBY', KEYS[1], 'held', -tonumber(held))
  redis.call('HDEL', KEYS[2], ARGV[1])
end
redis.call('ZREM', KEYS[3], ARGV[1])
redis.call('HINCRBY', KEYS[1], 'spent', tonumber(ARGV[2]))
redis.call('EXPIRE', KEYS[1], ARGV[3])
return 1
"""


class RedisSelfCalStore:
    def __init__(self, url: str, *, prefix: str = "slmgw:", max_labels: int = DEFAULT_MAX_LABELS,
                 hold_ttl_s: float = DEFAULT_HOLD_TTL_S, pool: RedisPoolSettings | None = None) -> None:
        self.prefix = prefix
        self.max_labels = max_labels
        self.hold_ttl_s = hold_ttl_s
        self._client: aioredis.Redis = redis_client(url, pool or RedisPoolSettings(max_connections=16),
                                                    connect_timeout_s=1.0, socket_timeout_s=5.0)
        self._put_state = self._client.register_script(_PUT_STATE)
        self._hold = self._client.register_script(_HOLD)
        self._settle = self._client.register_script(_SETTLE)
        self._lapse = self._client.register_script(_LAPSE)

    def _tier_key(self, kind: str, model: str, tier: int) -> str:
        return f"{self.prefix}selfcal:{kind}:{model}|{tier}"

    def _day_keys(self, model: str, day: str) -> list[str]:
        base = f"{self.prefix}shadow:{model}|{day}"
        return [base, f"{base}:holds", f"{base}:lapse"]

    @property
    def _index(self) -> str:
        return f"{self.prefix}selfcal:index"

    # --- labels and states ------------------------------------------------------------------------

    async def add_label(self, label: Label) -> int:
        labels = self._tier_key("labels", label.model, label.tier)
        try:
            async with self._client.pipeline(transaction=True) as pipe:
                pipe.rpush(labels, orjson.dumps(label.to_dict()))
                pipe.ltrim(labels, -self.max_labels, -1)
                pipe.incr(self._tier_key("count", label.model, label.tier))
                pipe.sadd(self._index, _member(label.model, label.tier))
                results = await pipe.execute()
        except (RedisError, OSError) as exc:
            raise StoreError(f"redis: {type(exc).__name__}: {exc}") from exc
        return int(results[2])

    async def labels(self, model: str, tier: int, limit: int) -> Sequence[Label]:
        if limit <= 0:
            return []
        try:
            rows = await self._client.lrange(self._tier_key("labels", model, tier), -limit, -1)
        except (RedisError, OSError) as exc:
            raise StoreError(f"redis: {type(exc).__name__}: {exc}") from exc
        return [Label.from_dict(orjson.loads(row)) for row in rows]

    async def get_state(self, model: str, tier: int) -> CalibrationState | None:
        try:
            data = await self._client.hget(self._tier_key("state", model, tier), "data")
        except (RedisError, OSError) as exc:
            raise StoreError(f"redis: {type(exc).__name__}: {exc}") from exc
        return None if data is None else CalibrationState.from_dict(orjson.loads(data))

    async def put_state(self, state: CalibrationState) -> bool:
        keys = [self._tier_key("state", state.model, state.tier), self._index,
                self._tier_key("drift", state.model, state.tier)]
        data = orjson.dumps(state.to_dict()).decode()
        args: list[str | int] = [state.version, data, _member(state.model, state.tier), state.reason]
        try:
            return int(await self._put_state(keys=keys, args=args)) == 1
        except (RedisError, OSError) as exc:
            raise StoreError(f"redis: {type(exc).__name__}: {exc}") from exc

    async def cascades(self) -> list[tuple[str, int]]:
        try:
            members = await self._client.smembers(self._index)
        except (RedisError, OSError) as exc:
            raise StoreError(f"redis: {type(exc).__name__}: {exc}") from exc
        pairs = [orjson.loads(member) for member in members]
        return sorted((str(model), int(tier)) for model, tier in pairs)

    async def label_count(self, model: str, tier: int) -> int:
        return await self._int(self._tier_key("count", model, tier))

    async def drift_alarms(self, model: str, tier: int) -> int:
        return await self._int(self._tier_key("drift", model, tier))

    async def _int(self, key: str) -> int:
        try:
            value = await self._client.get(key)
        except (RedisError, OSError) as exc:
            raise StoreError(f"redis: {type(exc).__name__}: {exc}") from exc
        return int(value or 0)

    # --- the shadow ledger ------------------------------------------------------------------------

    async def hold(self, model: str, day: str, hold_id: str, nano: int, budget_nano: int) -> bool:
        args: list[str | int | float] = [hold_id, nano, budget_nano, self.hold_ttl_s, _DAY_TTL_S]
        try:
            return int(await self._hold(keys=self._day_keys(model, day), args=args)) == 1
        except (RedisError, OSError) as exc:
            raise StoreError(f"redis: {type(exc).__name__}: {exc}") from exc

    async def settle(self, model: str, day: str, hold_id: str, cost_nano: int) -> None:
        try:
            await self._settle(keys=self._day_keys(model, day), args=[hold_id, cost_nano, _DAY_TTL_S])
        except (RedisError, OSError) as exc:
            raise StoreError(f"redis: {type(exc).__name__}: {exc}") from exc

    async def shadow_day(self, model: str, day: str) -> ShadowDay:
        keys = self._day_keys(model, day)
        try:
            await self._lapse(keys=keys, args=[])
            spent, held = await self._client.hmget(keys[0], ["spent", "held"])
        except (RedisError, OSError) as exc:
            raise StoreError(f"redis: {type(exc).__name__}: {exc}") from exc
        return ShadowDay(int(spent or 0), max(0, int(held or 0)))

    async def delete_all(self) -> None:
        """Remove every self-calibration and shadow key under the prefix (tests)."""
        for pattern in (f"{self.prefix}selfcal:*", f"{self.prefix}shadow:*"):
            async for key in self._client.scan_iter(match=pattern, count=500):
                await self._client.delete(key)

    async def close(self) -> None:
        await self._client.aclose()


def _member(model: str, tier: int) -> str:
    return orjson.dumps([model, tier]).decode()
