"""Virtual keys in Redis: admission, extension and settlement are single Lua scripts (atomic on the server).

Layout (``P`` is the prefix)::

    P keys:pepper          this store's random HMAC pepper (SET NX once)
    P keys                 set of key ids
    P key:<id>             hash: the key's fields; money in integer nano-dollars; reserved_nano (open
                           reservations) and tok_sum (the token window's total) kept by the scripts
    P keyhash:<hmac>       -> key id (lookup by the secret's peppered hash)
    P key:<id>:req         sorted set, request admissions in the window (member reservation id)
    P key:<id>:tok         sorted set, "<reservation id>|<tokens>" in the window
    P key:<id>:res         hash reservation id -> "<cost nano>:<estimated tokens>"
    P key:<id>:resexp      sorted set reservation id -> when it lapses (a crashed replica's)
    P settled:<rid>        a settlement already applied (so a replayed one is not counted twice)

The scripts read the clock with Redis ``TIME``, so replicas with skewed clocks still share one
window. Rules are those of :mod:`gateway.auth.limits` (kept in step with :func:`decide`).
"""

from __future__ import annotations

import orjson
import redis.asyncio as aioredis
from redis.exceptions import RedisError
from redis.typing import EncodableT

from gateway.auth.keys import KeySpec, VirtualKey, hash_secret, new_key_id, new_pepper, new_secret, same_hash
from gateway.auth.limits import OK, RESERVATION_TTL_S, WINDOW_S, Admission, LimitState
from gateway.core.errors import GatewayError, RateLimitError, UpstreamUnavailableError
from gateway.redis_pool import RedisPoolSettings, pool_exhausted, redis_client

_PRELUDE = """
if redis.replicate_commands then pcall(redis.replicate_commands) end
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1e6
local function int(x) return string.format('%.0f', x) end
local function tokens_of(member) return tonumber(string.match(member, '|(%d+)$')) end
"""

# KEYS: key, req, tok, res, resexp.  ARGV: window, reservation id, cost nano, tokens, reservation ttl.
# O(log n) per admission: the window's token total is kept in the key hash (``tok_sum``) and
# adjusted as entries enter, settle and leave; the log is only walked to price a TPM refusal.
_ADMIT = _PRELUDE + """
local key, window, rid = KEYS[1], tonumber(ARGV[1]), ARGV[2]
local cost, tokens = tonumber(ARGV[3]), tonumber(ARGV[4])
if redis.call('EXISTS', key) == 0 then return {'unknown'} end
local f = redis.call('HMGET', key, 'revoked', 'expires_at', 'rpm', 'tpm', 'budget_nano', 'spent_nano',
                     'reserved_nano', 'tok_sum')
if f[1] == '1' then return {'revoked'} end
local expires = tonumber(f[2])
if expires and expires <= now then return {'expired'} end
local reserved = tonumber(f[7]) or 0
for _, lapsed in ipairs(redis.call('ZRANGEBYSCORE', KEYS[5], '-inf', now)) do
  local v = redis.call('HGET', KEYS[4], lapsed)
  if v then
    reserved = reserved - tonumber(string.match(v, '^(%d+):'))
    redis.call('HDEL', KEYS[4], lapsed)
  end
  redis.call('ZREM', KEYS[5], lapsed)
end
if reserved < 0 then reserved = 0 end
local cutoff = now - window
local used = tonumber(f[8]) or 0
if redis.call('EXISTS', KEYS[3]) == 0 then used = 0 end
local leaving = redis.call('ZRANGEBYSCORE', KEYS[3], '-inf', cutoff)
for _, member in ipairs(leaving) do used = used - tokens_of(member) end
if #leaving > 0 then redis.call('ZREMRANGEBYSCORE', KEYS[3], '-inf', cutoff) end
if used < 0 then used = 0 end
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', cutoff)
redis.call('HSET', key, 'reserved_nano', int(reserved), 'tok_sum', int(used))
local rpm, tpm, budget = tonumber(f[3]), tonumber(f[4]), tonumber(f[5])
local spent = tonumber(f[6]) or 0
local count = redis.call('ZCARD', KEYS[2])
if rpm and count >= rpm then
  local last_to_leave = redis.call('ZRANGE', KEYS[2], count - rpm, count - rpm, 'WITHSCORES')
  return {'rpm', tostring(tonumber(last_to_leave[2]) + window - now)}
end
if tpm and tokens > tpm then return {'tpm_too_large'} end
if tpm and used + tokens > tpm then
  local left = used
  local events = redis.call('ZRANGE', KEYS[3], 0, -1, 'WITHSCORES')
  for i = 1, #events, 2 do
    left = left - tokens_of(events[i])
    if left + tokens <= tpm then return {'tpm', tostring(tonumber(events[i + 1]) + window - now)} end
  end
  return {'tpm', '0'}
end
if budget and spent + cost > budget then return {'budget'} end
if budget and spent + reserved + cost > budget then return {'budget_busy', '1'} end
local oldest_req = redis.call('ZRANGE', KEYS[2], 0, 0, 'WITHSCORES')
local oldest_tok = redis.call('ZRANGE', KEYS[3], 0, 0, 'WITHSCORES')
redis.call('ZADD', KEYS[2], now, rid)
redis.call('ZADD', KEYS[3], now, rid .. '|' .. ARGV[4])
redis.call('HSET', KEYS[4], rid, ARGV[3] .. ':' .. ARGV[4])
redis.call('ZADD', KEYS[5], now + tonumber(ARGV[5]), rid)
redis.call('HSET', key, 'reserved_nano', int(reserved + cost), 'tok_sum', int(used + tokens))
for i = 2, 3 do redis.call('EXPIRE', KEYS[i], math.ceil(window) * 2) end
for i = 4, 5 do redis.call('EXPIRE', KEYS[i], math.ceil(tonumber(ARGV[5])) * 2) end
local reset_req, reset_tok = window, window
if #oldest_req > 0 then reset_req = tonumber(oldest_req[2]) + window - now end
if #oldest_tok > 0 then reset_tok = tonumber(oldest_tok[2]) + window - now end
return {'ok', '0', f[3] or '', tostring(count + 1), tostring(reset_req), f[4] or '',
        int(used + tokens), tostring(reset_tok), f[5] or '', int(spent), int(reserved + cost)}
"""

# KEYS: key, res, resexp.  ARGV: reservation id, extra nano, reservation ttl.
# One more upstream call than the admission foresaw (a fallback, a hand-off, a verify round):
# grow the request's reservation by ``extra`` if the budget still holds it with every other
# open reservation, else refuse ('budget': it cannot fit even alone; 'budget_busy': in-flight
# requests hold the rest). A reservation that lapsed (a request running past the TTL) is re-made.
_EXTEND = _PRELUDE + """
local key, rid, extra = KEYS[1], ARGV[1], tonumber(ARGV[2])
if redis.call('EXISTS', key) == 0 then return {'unknown'} end
local f = redis.call('HMGET', key, 'revoked', 'expires_at', 'budget_nano', 'spent_nano', 'reserved_nano')
if f[1] == '1' then return {'revoked'} end
local expires = tonumber(f[2])
if expires and expires <= now then return {'expired'} end
local amount, estimate = 0, '0'
local v = redis.call('HGET', KEYS[2], rid)
if v then
  local a, e = string.match(v, '^(%d+):(%d+)$')
  amount, estimate = tonumber(a), e
end
local budget, spent, reserved = tonumber(f[3]), tonumber(f[4]) or 0, tonumber(f[5]) or 0
if budget and spent + amount + extra > budget then return {'budget'} end
if budget and spent + reserved + extra > budget then return {'budget_busy', '1'} end
redis.call('HSET', KEYS[2], rid, int(amount + extra) .. ':' .. estimate)
if not v then
  redis.call('ZADD', KEYS[3], now + tonumber(ARGV[3]), rid)
  for i = 2, 3 do redis.call('EXPIRE', KEYS[i], math.ceil(tonumber(ARGV[3])) * 2) end
end
redis.call('HSET', key, 'reserved_nano', int(reserved + extra))
return {'ok', int(amount + extra)}
"""

# KEYS: key, req, tok, res, resexp, settled guard.  ARGV: reservation id, real cost nano, real
# tokens, guard ttl. Idempotent: the guard makes a settlement replayed from the journal (or
# retried after an ambiguous failure) count once.
_SETTLE = _PRELUDE + """
local rid = ARGV[1]
if not redis.call('SET', KEYS[6], '1', 'NX', 'EX', ARGV[4]) then return 0 end
local alive = redis.call('EXISTS', KEYS[1]) == 1
local v = redis.call('HGET', KEYS[4], rid)
if v then
  local amount, estimate = string.match(v, '^(%d+):(%d+)$')
  redis.call('HDEL', KEYS[4], rid)
  redis.call('ZREM', KEYS[5], rid)
  local member = rid .. '|' .. estimate
  local at = redis.call('ZSCORE', KEYS[3], member)
  if at then
    redis.call('ZREM', KEYS[3], member)
    redis.call('ZADD', KEYS[3], at, rid .. '|' .. ARGV[3])
  end
  if alive then
    local reserved = (tonumber(redis.call('HGET', KEYS[1], 'reserved_nano')) or 0) - tonumber(amount)
    if reserved < 0 then reserved = 0 end
    redis.call('HSET', KEYS[1], 'reserved_nano', int(reserved))
    if at then
      local used = (tonumber(redis.call('HGET', KEYS[1], 'tok_sum')) or 0) - tonumber(estimate) + tonumber(ARGV[3])
      if used < 0 then used = 0 end
      redis.call('HSET', KEYS[1], 'tok_sum', int(used))
    end
  end
end
if alive then redis.call('HINCRBY', KEYS[1], 'spent_nano', ARGV[2]) end
return 1
"""

# KEYS: keyhash:<hmac>.  ARGV: prefix. One round trip for the per-request lookup; it reads the key
# hash named by the index (standalone Redis, like the rest of this store; not Redis Cluster).
_FIND = """
local key_id = redis.call('GET', KEYS[1])
if not key_id then return {} end
return redis.call('HGETALL', ARGV[1] .. 'key:' .. key_id)
"""


def _opt_int(text: str | None) -> int | None:
    return int(text) if text else None


def _decode(fields: dict[str, str]) -> VirtualKey:
    return VirtualKey(
        id=fields["id"], name=fields["name"], hash=fields["hash"], budget_nano=_opt_int(fields.get("budget_nano")),
        spent_nano=int(fields.get("spent_nano") or 0), reserved_nano=int(fields.get("reserved_nano") or 0),
        rpm=_opt_int(fields.get("rpm")), tpm=_opt_int(fields.get("tpm")),
        models=tuple(orjson.loads(fields.get("models") or "[]")), tags=tuple(orjson.loads(fields.get("tags") or "[]")),
        expires_at=float(fields["expires_at"]) if fields.get("expires_at") else None,
        revoked=fields.get("revoked") == "1", created_at=float(fields.get("created_at") or 0),
    )


def _encode(key: VirtualKey) -> dict[EncodableT, EncodableT]:
    def text(value: int | float | None) -> str:
        return "" if value is None else str(value)

    return {
        "id": key.id, "name": key.name, "hash": key.hash, "budget_nano": text(key.budget_nano),
        "spent_nano": str(key.spent_nano), "reserved_nano": str(key.reserved_nano), "rpm": text(key.rpm),
        "tpm": text(key.tpm), "models": orjson.dumps(list(key.models)).decode(),
        "tags": orjson.dumps(list(key.tags)).decode(), "expires_at": text(key.expires_at),
        "revoked": "1" if key.revoked else "0", "created_at": str(key.created_at),
    }


SETTLED_TTL_S = 7 * 86_400  # how long a settlement is remembered (journal replays happen well within it)


class RedisKeyStore:
    def __init__(self, url: str, *, prefix: str = "slmgw:", pool: RedisPoolSettings | None = None) -> None:
        self.prefix = prefix
        self._client: aioredis.Redis = redis_client(url, pool or RedisPoolSettings(), connect_timeout_s=3.0,
                                                    socket_timeout_s=5.0)
        self._admit = self._client.register_script(_ADMIT)
        self._extend = self._client.register_script(_EXTEND)
        self._settle = self._client.register_script(_SETTLE)
        self._find = self._client.register_script(_FIND)
        self._pepper: str | None = None  # immutable once created, so caching it is safe

    def _key(self, key_id: str) -> str:
        return f"{self.prefix}key:{key_id}"

    def _script_keys(self, key_id: str) -> list[str]:
        base = self._key(key_id)
        return [base, f"{base}:req", f"{base}:tok", f"{base}:res", f"{base}:resexp"]

    async def pepper(self) -> str:
        if self._pepper is None:
            name = f"{self.prefix}keys:pepper"
            try:
                await self._client.set(name, new_pepper(), nx=True)
                stored = await self._client.get(name)
                self._pepper = str(stored) if stored else None
            except (RedisError, OSError) as exc:
                raise _unavailable(exc) from exc
            if not self._pepper:
                raise UpstreamUnavailableError("the key store has no pepper", code="key_store_unavailable")
        return self._pepper

    async def create(self, spec: KeySpec) -> tuple[VirtualKey, str]:
        secret = new_secret()
        key = spec.build(new_key_id(), hash_secret(await self.pepper(), secret))
        try:
            async with self._client.pipeline(transaction=True) as pipe:
                pipe.hset(self._key(key.id), mapping=_encode(key))
                pipe.set(f"{self.prefix}keyhash:{key.hash}", key.id)
                pipe.sadd(f"{self.prefix}keys", key.id)
                await pipe.execute()
        except (RedisError, OSError) as exc:
            raise _unavailable(exc) from exc
        return key, secret

    async def list_keys(self) -> list[VirtualKey]:
        try:
            ids = sorted(await self._client.smembers(f"{self.prefix}keys"))
            async with self._client.pipeline(transaction=False) as pipe:
                for key_id in ids:
                    pipe.hgetall(self._key(str(key_id)))
                rows = await pipe.execute()
        except (RedisError, OSError) as exc:
            raise _unavailable(exc) from exc
        keys = [_decode({str(k): str(v) for k, v in row.items()}) for row in rows if row]
        return sorted(keys, key=lambda k: k.created_at)

    async def get(self, key_id: str) -> VirtualKey | None:
        try:
            fields = await self._client.hgetall(self._key(key_id))
        except (RedisError, OSError) as exc:
            raise _unavailable(exc) from exc
        return _decode({str(k): str(v) for k, v in fields.items()}) if fields else None

    async def find(self, secret: str) -> VirtualKey | None:
        digest = hash_secret(await self.pepper(), secret)
        try:
            flat = await self._find(keys=[f"{self.prefix}keyhash:{digest}"], args=[self.prefix])
        except (RedisError, OSError) as exc:
            raise _unavailable(exc) from exc
        if not flat:
            return None
        key = _decode({str(flat[i]): str(flat[i + 1]) for i in range(0, len(flat), 2)})
        return key if same_hash(key.hash, digest) else None

    async def revoke(self, key_id: str) -> bool:
        try:
            if not await self._client.exists(self._key(key_id)):
                return False
            await self._client.hset(self._key(key_id), "revoked", "1")
        except (RedisError, OSError) as exc:
            raise _unavailable(exc) from exc
        return True

    async def admit(self, key_id: str, reservation_id: str, cost_nano: int, tokens: int) -> Admission:
        args: list[str | int | float] = [WINDOW_S, reservation_id, cost_nano, tokens, RESERVATION_TTL_S]
        try:
            reply = await self._admit(keys=self._script_keys(key_id), args=args)
        except (RedisError, OSError) as exc:
            raise _unavailable(exc) from exc
        outcome = str(reply[0])
        if outcome != OK:
            return Admission(outcome, float(reply[1]) if len(reply) > 1 else None)
        limit = [str(item) for item in reply]
        return Admission(OK, limits=LimitState(
            rpm=_opt_int(limit[2]), requests_in_window=int(limit[3]), reset_requests_s=float(limit[4]),
            tpm=_opt_int(limit[5]), tokens_in_window=int(limit[6]), reset_tokens_s=float(limit[7]),
            budget_nano=_opt_int(limit[8]), spent_nano=int(limit[9]), reserved_nano=int(limit[10]),
        ))

    async def extend(self, key_id: str, reservation_id: str, extra_nano: int) -> Admission:
        base = self._key(key_id)
        try:
            reply = await self._extend(keys=[base, f"{base}:res", f"{base}:resexp"],
                                       args=[reservation_id, extra_nano, RESERVATION_TTL_S])
        except (RedisError, OSError) as exc:
            raise _unavailable(exc) from exc
        outcome = str(reply[0])
        return Admission(outcome, float(reply[1]) if outcome != OK and len(reply) > 1 else None)

    async def settle(self, key_id: str, reservation_id: str, cost_nano: int, tokens: int) -> None:
        keys = [*self._script_keys(key_id), f"{self.prefix}settled:{reservation_id}"]
        try:
            await self._settle(keys=keys, args=[reservation_id, cost_nano, tokens, SETTLED_TTL_S])
        except (RedisError, OSError) as exc:
            raise _unavailable(exc) from exc

    async def delete_all(self) -> None:
        """Remove every key of this prefix (tests)."""
        names = [name async for name in self._client.scan_iter(match=f"{self.prefix}key*")]
        if names:
            await self._client.delete(*names)

    async def close(self) -> None:
        await self._client.aclose()


def _unavailable(exc: BaseException) -> GatewayError:
    if pool_exhausted(exc):  # Redis is fine, this process is out of connections: over capacity
        return RateLimitError("The gateway is over capacity right now; retry shortly.", retry_after_s=1.0,
                              code="gateway_overloaded")
    return UpstreamUnavailableError(f"the key store (redis) is unavailable: {type(exc).__name__}",
                                    code="key_store_unavailable")
