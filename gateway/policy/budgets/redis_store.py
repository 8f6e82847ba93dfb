"""The budget store shared by every replica through Redis: reserve and settle are Lua scripts."""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections import deque

from gateway.policy.budgets.store import PERIOD_S, BudgetState, BudgetStore, Reservation, StoreUnavailable

log = logging.getLogger("gateway.budgets")

# KEYS: counter (hash: used, reserved), leases (hash: id -> amount), deadlines (zset: id -> deadline), peak
# ARGV: limit, estimate, id, now, deadline, expire_at
_RESERVE = """
local counter, leases, deadlines, peakkey = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local limit, estimate, now = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[4])
local stale = redis.call('ZRANGEBYSCORE', deadlines, '-inf', now)
for _, sid in ipairs(stale) do
  local a = redis.call('HGET', leases, sid)
  if a then
    redis.call('HDEL', leases, sid)
    redis.call('HINCRBYFLOAT', counter, 'reserved', -tonumber(a))
  end
  redis.call('ZREM', deadlines, sid)
end
if redis.call('HLEN', leases) == 0 then redis.call('HSET', counter, 'reserved', 0) end
local used = tonumber(redis.call('HGET', counter, 'used') or '0')
local reserved = tonumber(redis.call('HGET', counter, 'reserved') or '0')
if used + reserved >= limit then
  return {0, tostring(used), tostring(reserved), '0'}
end
local amount = math.max(estimate, tonumber(redis.call('GET', peakkey) or '0'))
reserved = tonumber(redis.call('HINCRBYFLOAT', counter, 'reserved', amount))
redis.call('HSET', leases, ARGV[3], amount)
redis.call('ZADD', deadlines, ARGV[5], ARGV[3])
for _, k in ipairs({counter, leases, deadlines}) do redis.call('EXPIREAT', k, ARGV[6]) end
return {1, tostring(used), tostring(reserved), tostring(amount)}
"""

# KEYS: as above. ARGV: id ('' = none), amount, expire_at, count (1 = charge), peak ttl seconds
_SETTLE = """
local counter, leases, deadlines, peakkey = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local a = ARGV[1] ~= '' and redis.call('HGET', leases, ARGV[1])
if a then
  redis.call('HDEL', leases, ARGV[1])
  redis.call('ZREM', deadlines, ARGV[1])
  if redis.call('HLEN', leases) == 0 then redis.call('HSET', counter, 'reserved', 0)
  else redis.call('HINCRBYFLOAT', counter, 'reserved', -tonumber(a)) end
end
local amount = tonumber(ARGV[2])
if ARGV[4] == '1' then
  redis.call('HINCRBYFLOAT', counter, 'used', amount)
  if amount > tonumber(redis.call('GET', peakkey) or '0') then redis.call('SET', peakkey, amount, 'EX', ARGV[5]) end
end
-- a counter whose period is over is deleted right here (EXPIREAT in the past)
for _, k in ipairs({counter, leases, deadlines}) do redis.call('EXPIREAT', k, ARGV[3]) end
local used = redis.call('HGET', counter, 'used') or '0'
local reserved = redis.call('HGET', counter, 'reserved') or '0'
return {used, reserved}
"""


class RedisBudgetStore(BudgetStore):
    """Shared by every replica that points at the same Redis and prefix.

    Connections come from a blocking pool of ``pool_size``: a burst larger than the pool waits
    for a free connection (up to ``timeout_s``) instead of failing. Every call is bounded by
    ``timeout_s``; a failure raises ``StoreUnavailable`` and is logged once per outage (and once
    when the store is back). Writes that settle what a request used are queued when they fail
    (at most ``max_deferred``; beyond that they are dropped, counted and logged) and replayed in
    order once a call succeeds again.
    """

    def __init__(self, url: str = "redis://127.0.0.1:6379/0", prefix: str = "nudge:budget:", lease_s: float = 900.0,
                 *, pool_size: int = 100, timeout_s: float = 2.0, max_deferred: int = 100_000) -> None:  # fmt: skip
        super().__init__(prefix, lease_s)
        import redis.asyncio as aioredis  # imported here: a memory-only gateway never needs it
        from redis.exceptions import RedisError

        pool = aioredis.BlockingConnectionPool.from_url(
            url, max_connections=pool_size, timeout=timeout_s, socket_timeout=timeout_s,
            socket_connect_timeout=timeout_s, decode_responses=True,
        )  # fmt: skip
        self._redis = aioredis.Redis(connection_pool=pool)
        self._reserve = self._redis.register_script(_RESERVE)
        self._settle = self._redis.register_script(_SETTLE)
        self._errors = (RedisError, OSError, asyncio.TimeoutError)
        self._pending: deque[tuple[Reservation, str, float, bool]] = deque()
        self.max_deferred = max_deferred
        self.dropped = 0  # deferred writes lost because the queue was full
        self._healthy = True
        self._replaying: asyncio.Task | None = None

    @property
    def deferred(self) -> int:
        return len(self._pending)

    def _failed(self, exc: BaseException) -> StoreUnavailable:
        if self._healthy:
            self._healthy = False
            log.warning("budget store unreachable (%s: %s); budgets.on_store_error=%s until it is back",
                        type(exc).__name__, exc, "open" if self.fail_open else "closed")  # fmt: skip
        return StoreUnavailable(f"budget store unreachable: {type(exc).__name__}")

    def _ok(self) -> None:
        if not self._healthy:
            self._healthy = True
            log.warning("budget store reachable again; replaying %d deferred writes", len(self._pending))
        if self._pending and self._replaying is None:
            self._replaying = asyncio.get_running_loop().create_task(self._replay())

    async def _replay(self) -> None:
        try:
            while self._pending:
                r, lid, amount, count = self._pending[0]
                try:
                    await self._script_settle(r, lid, amount, count)
                except self._errors:
                    return  # still down: the next successful call starts again
                self._pending.popleft()
        finally:
            self._replaying = None

    def _defer(self, r: Reservation, lid: str, amount: float, count: bool) -> None:
        if len(self._pending) >= self.max_deferred:
            self.dropped += 1
            if self.dropped == 1 or self.dropped % 1000 == 0:
                log.error(
                    "budget store down and %d writes deferred: %d dropped so far", self.max_deferred, self.dropped
                )
            return
        self._pending.append((r, lid, amount, count))

    @staticmethod
    def _all(counter: str, peak: str) -> list[str]:
        return [counter, counter + ":leases", counter + ":deadlines", peak]

    async def check(self, scope, name, unit, limit, period="day", *, now=None):
        now = time.time() if now is None else now
        counter, _, end = self._keys(scope, name, unit, period, now)
        try:
            used, reserved = await self._redis.hmget(counter, "used", "reserved")
        except self._errors as exc:
            raise self._failed(exc) from None
        self._ok()
        return BudgetState.of(float(used or 0), limit, end, float(reserved or 0))

    async def reserve(self, scope, name, unit, limit, period="day", *, estimate=0.0, now=None):
        now = time.time() if now is None else now
        estimate = 1.0 if unit == "requests" else estimate
        counter, peak, end = self._keys(scope, name, unit, period, now)
        lid = uuid.uuid4().hex
        try:
            ok, used, reserved, amount = await self._reserve(
                keys=self._all(counter, peak),
                args=[repr(float(limit)), repr(float(estimate)), lid, repr(now), repr(now + self.lease_s), int(end)],
            )
        except self._errors as exc:
            raise self._failed(exc) from None
        self._ok()
        state = BudgetState.of(float(used), limit, end, float(reserved), admitted=bool(int(ok)))
        if not state.admitted:
            return None, state
        return Reservation(counter, lid, float(amount), limit, end, peak, int(2 * PERIOD_S[period])), state

    async def _script_settle(self, r: Reservation, lid: str, amount: float, count: bool) -> tuple[str, str]:
        return await self._settle(
            keys=self._all(r.key, r.peak_key),
            args=[lid, repr(float(amount)), int(r.resets_at), "1" if count else "0", r.peak_ttl_s],
        )

    async def _apply(self, r: Reservation, lid: str, amount: float, count: bool) -> BudgetState:
        try:
            used, reserved = await self._script_settle(r, lid, amount, count)
        except self._errors as exc:
            self._defer(r, lid, amount, count)
            err = self._failed(exc)
            err.deferred = True
            raise err from None
        self._ok()
        return BudgetState.of(float(used), r.limit, r.resets_at, float(reserved))

    async def settle(self, reservation, amount):
        return await self._apply(reservation, reservation.id, amount, True)

    async def release(self, reservation):
        await self._apply(reservation, reservation.id, 0.0, False)

    async def charge(self, scope, name, unit, amount, limit, period="day", *, now=None):
        now = time.time() if now is None else now
        counter, peak, end = self._keys(scope, name, unit, period, now)
        r = Reservation(counter, "", 0.0, limit, end, peak, int(2 * PERIOD_S[period]))
        return await self._apply(r, "", amount, True)

    async def close(self) -> None:
        if self._pending:
            await self._replay()
            if self._pending:
                log.error("budget store still unreachable at shutdown: %d deferred writes lost", len(self._pending))
        await self._redis.aclose()
