"""Budget counters: in-process for one gateway, in Redis when several replicas share them.

A counter is kept per (scope, name, unit, period instance): e.g. team "physics", Wh, the
UTC day 2026-11-28. Periods are calendar periods in UTC (weeks start on Monday); a counter
expires at its period's end, and the next period starts from zero under a new key.

**Reserve, then settle.** A request is admitted with ``reserve()``, which atomically
(one Lua script in Redis; no await in between in memory)

1. drops leases of requests whose holder never settled (a crashed replica) after
   ``lease_s``,
2. refuses if ``used + reserved >= limit``,
3. otherwise adds a reservation for the request: the caller's estimate, or the largest
   amount one request has used lately if that is larger (so that Wh and money, unknown
   before a request runs, still reserve something realistic).

After the answer, ``settle()`` replaces the reservation with the actual amount.

**The guarantee.** Every admission sees ``used + reserved < limit`` at that instant, across
all replicas. So when every in-flight request's actual amount is at most its reservation,
the period's total never exceeds ``limit + (the amount of one request)``: the last one
admitted. Exactly:

- ``requests``: never over the limit (each reserves exactly 1 and uses exactly 1);
- ``tokens``: at most one request over when the caller reserves the request's upper bound
  (prompt + max_tokens), as the policy engine does;
- ``wh`` and ``usd``: at most one request over as long as no in-flight request exceeds the
  largest request seen in the last two periods; a request larger than any before can add
  its excess over that.

A request refused because of reservations alone (``used < limit``) is a temporary state:
``BudgetState.exhausted`` is False then, and a retry a moment later may be admitted.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
import uuid
from abc import ABC, abstractmethod
from collections import deque
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Literal

from gateway.config import BudgetStoreConfig

Period = Literal["day", "week", "month"]
Unit = Literal["wh", "tokens", "requests", "usd"]

log = logging.getLogger("gateway.budgets")

_PERIOD_S = {"day": 86400.0, "week": 7 * 86400.0, "month": 31 * 86400.0}


# ---------------------------------------------------------------- periods


def period_window(period: str, now: float) -> tuple[str, float, float]:
    """``(id, start, end)`` of the UTC calendar period containing ``now`` (epoch seconds)."""
    d = datetime.fromtimestamp(now, UTC)
    midnight = d.replace(hour=0, minute=0, second=0, microsecond=0)
    if period == "day":
        start, end = midnight, midnight + timedelta(days=1)
        pid = start.strftime("%Y-%m-%d")
    elif period == "week":
        start = midnight - timedelta(days=d.weekday())
        end = start + timedelta(days=7)
        year, week, _ = start.isocalendar()
        pid = f"{year}-W{week:02d}"
    elif period == "month":
        start = midnight.replace(day=1)
        end = (start + timedelta(days=32)).replace(day=1)
        pid = start.strftime("%Y-%m")
    else:
        raise ValueError(f"unknown budget period {period!r}")
    return pid, start.timestamp(), end.timestamp()


class _PeriodCache:
    """Period boundaries fall on whole minutes, so one lookup per period and minute is exact."""

    def __init__(self) -> None:
        self._cache: dict[tuple[str, int], tuple[str, float, float]] = {}

    def get(self, period: str, now: float) -> tuple[str, float, float]:
        k = (period, int(now // 60))
        hit = self._cache.get(k)
        if hit is None:
            if len(self._cache) > 16:
                self._cache.clear()
            hit = self._cache[k] = period_window(period, now)
        return hit


# ---------------------------------------------------------------- results


@dataclass(frozen=True, slots=True)
class BudgetState:
    used: float  # settled amount this period
    limit: float
    ratio: float  # used / limit
    resets_at: float  # epoch seconds of the period's end (UTC)
    reserved: float = 0.0  # held by requests in flight
    admitted: bool = True  # reserve(): whether the request got a reservation

    @classmethod
    def of(
        cls, used: float, limit: float, resets_at: float, reserved: float = 0.0, admitted: bool = True
    ) -> BudgetState:
        used = max(0.0, used)
        return cls(used, limit, used / limit if limit > 0 else 0.0, resets_at, max(0.0, reserved), admitted)

    @property
    def exhausted(self) -> bool:
        """The settled usage alone reached the limit: nothing helps until the period resets."""
        return self.used >= self.limit

    def retry_after_s(self, now: float | None = None) -> int:
        return max(1, math.ceil(self.resets_at - (time.time() if now is None else now)))


@dataclass(frozen=True, slots=True)
class Reservation:
    key: str  # the period counter it belongs to (settled there, even after the period ended)
    id: str
    amount: float
    limit: float
    resets_at: float
    peak_key: str = field(default="", repr=False)
    peak_ttl_s: int = 0


def _counter_key(prefix: str, scope: str, name: str, unit: str, period: str, pid: str) -> tuple[str, str]:
    # One hash tag per budget keeps all its keys in one Redis Cluster slot (scripts need that).
    tag = f"{prefix}{{{scope}:{name}:{unit}:{period}}}"
    return f"{tag}:{pid}", f"{tag}:peak"


# ---------------------------------------------------------------- the interface


class StoreUnavailable(Exception):
    """The budget store could not be reached (Redis down, or slower than its timeout).

    Raised by ``check`` and ``reserve`` (the caller decides: ``budgets.on_store_error``) and by
    ``settle``, ``release`` and ``charge`` once the store has queued the write to replay when it
    is reachable again (``deferred``): what a request used is never dropped for an outage.
    """

    def __init__(self, message: str, deferred: bool = False) -> None:
        super().__init__(message)
        self.deferred = deferred


class BudgetStore(ABC):
    fail_open = False  # budgets.on_store_error: open (serve when the store is down) or closed (503)

    def __init__(self, prefix: str = "nudge:budget:", lease_s: float = 900.0):
        self.prefix = prefix
        self.lease_s = lease_s  # a reservation not settled by then is dropped (its holder died)
        self._periods = _PeriodCache()

    @property
    def deferred(self) -> int:
        """Writes waiting for the store to come back (0 for a store that cannot fail)."""
        return 0

    def _keys(self, scope: str, name: str, unit: str, period: str, now: float) -> tuple[str, str, float]:
        pid, _, end = self._periods.get(period, now)
        counter, peak = _counter_key(self.prefix, scope, name, unit, period, pid)
        return counter, peak, end

    @abstractmethod
    async def check(
        self, scope: str, name: str, unit: str, limit: float, period: str = "day", *, now: float | None = None
    ) -> BudgetState:
        """The state of a budget now, without reserving anything."""

    @abstractmethod
    async def reserve(
        self,
        scope: str,
        name: str,
        unit: str,
        limit: float,
        period: str = "day",
        *,
        estimate: float = 0.0,
        now: float | None = None,
    ) -> tuple[Reservation | None, BudgetState]:
        """Admit one request: a reservation, or None when ``used + reserved >= limit``.

        ``estimate``: what the request may use at most, if known (a ``requests`` budget
        always reserves 1); the store reserves the larger of it and the largest recent request.
        """

    @abstractmethod
    async def settle(self, reservation: Reservation, amount: float) -> BudgetState:
        """Replace a reservation with the request's actual amount."""

    @abstractmethod
    async def release(self, reservation: Reservation) -> None:
        """Drop a reservation without charging (the request was refused or never ran)."""

    @abstractmethod
    async def charge(
        self,
        scope: str,
        name: str,
        unit: str,
        amount: float,
        limit: float,
        period: str = "day",
        *,
        now: float | None = None,
    ) -> BudgetState:
        """Add an amount without a reservation (e.g. a request served downgraded over the limit)."""

    async def close(self) -> None:  # noqa: B027 - a store with nothing to close needs no override
        return None


# ---------------------------------------------------------------- in memory


class _Counter:
    __slots__ = ("used", "reserved", "leases", "expires_at")

    def __init__(self, expires_at: float):
        self.used = 0.0
        self.reserved = 0.0
        self.leases: dict[str, tuple[float, float]] = {}  # id -> (amount, deadline)
        self.expires_at = expires_at


class MemoryBudgetStore(BudgetStore):
    """For a single gateway process. Atomic because nothing in it awaits."""

    def __init__(self, prefix: str = "nudge:budget:", lease_s: float = 900.0):
        super().__init__(prefix, lease_s)
        self._counters: dict[str, _Counter] = {}
        self._peaks: dict[str, tuple[float, float]] = {}  # peak key -> (amount, expires_at)
        self._next_sweep = 0.0

    def _counter(self, key: str, end: float, now: float) -> _Counter:
        if now >= self._next_sweep:  # forget periods that ended
            self._next_sweep = now + 60.0
            for k in [k for k, c in self._counters.items() if c.expires_at <= now]:
                del self._counters[k]
            for k in [k for k, (_, exp) in self._peaks.items() if exp <= now]:
                del self._peaks[k]
        c = self._counters.get(key)
        if c is None or c.expires_at <= now:
            c = self._counters[key] = _Counter(end)
        return c

    async def check(self, scope, name, unit, limit, period="day", *, now=None):
        now = time.time() if now is None else now
        key, _, end = self._keys(scope, name, unit, period, now)
        c = self._counters.get(key)
        if c is None or c.expires_at <= now:
            return BudgetState.of(0.0, limit, end)
        return BudgetState.of(c.used, limit, end, c.reserved)

    async def reserve(self, scope, name, unit, limit, period="day", *, estimate=0.0, now=None):
        now = time.time() if now is None else now
        estimate = 1.0 if unit == "requests" else estimate
        key, peak_key, end = self._keys(scope, name, unit, period, now)
        c = self._counter(key, end, now)
        for lid in [lid for lid, (_, deadline) in c.leases.items() if deadline <= now]:
            c.reserved -= c.leases.pop(lid)[0]
        if not c.leases:
            c.reserved = 0.0
        if c.used + c.reserved >= limit:
            return None, BudgetState.of(c.used, limit, end, c.reserved, admitted=False)
        peak, peak_exp = self._peaks.get(peak_key, (0.0, 0.0))
        amount = max(estimate, peak if peak_exp > now else 0.0)
        lid = uuid.uuid4().hex
        c.leases[lid] = (amount, now + self.lease_s)
        c.reserved += amount
        ttl = int(2 * _PERIOD_S[period])
        return Reservation(key, lid, amount, limit, end, peak_key, ttl), BudgetState.of(c.used, limit, end, c.reserved)

    def _apply(self, key: str, lid: str, amount: float, count: bool, peak_key: str, ttl: int, end: float, now: float):
        c = self._counters.get(key)
        if c is None or c.expires_at <= now:
            if end <= now:  # the period is over: nothing left to charge
                return 0.0, 0.0
            c = self._counter(key, end, now)
        lease = c.leases.pop(lid, None)
        if lease is not None:
            c.reserved = c.reserved - lease[0] if c.leases else 0.0
        if count:
            c.used += amount
            peak, exp = self._peaks.get(peak_key, (0.0, 0.0))
            if amount > peak or exp <= now:
                self._peaks[peak_key] = (amount, now + ttl)
        return c.used, c.reserved

    async def settle(self, reservation, amount):
        now = time.time()
        r = reservation
        used, reserved = self._apply(r.key, r.id, amount, True, r.peak_key, r.peak_ttl_s, r.resets_at, now)
        return BudgetState.of(used, r.limit, r.resets_at, reserved)

    async def release(self, reservation):
        r = reservation
        self._apply(r.key, r.id, 0.0, False, r.peak_key, r.peak_ttl_s, r.resets_at, time.time())

    async def charge(self, scope, name, unit, amount, limit, period="day", *, now=None):
        now = time.time() if now is None else now
        key, peak_key, end = self._keys(scope, name, unit, period, now)
        used, reserved = self._apply(key, "", amount, True, peak_key, int(2 * _PERIOD_S[period]), end, now)
        return BudgetState.of(used, limit, end, reserved)


# ---------------------------------------------------------------- Redis

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
        return Reservation(counter, lid, float(amount), limit, end, peak, int(2 * _PERIOD_S[period])), state

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
        r = Reservation(counter, "", 0.0, limit, end, peak, int(2 * _PERIOD_S[period]))
        return await self._apply(r, "", amount, True)

    async def close(self) -> None:
        if self._pending:
            await self._replay()
            if self._pending:
                log.error("budget store still unreachable at shutdown: %d deferred writes lost", len(self._pending))
        await self._redis.aclose()


def make_budget_store(config: BudgetStoreConfig | None = None, *, lease_s: float = 900.0) -> BudgetStore:
    """The store the config's ``budgets`` section asks for (memory when none is given)."""
    config = config or BudgetStoreConfig()
    store: BudgetStore
    if config.store == "redis":
        store = RedisBudgetStore(config.redis_url, config.prefix, lease_s, pool_size=config.redis_pool_size,
                                 timeout_s=config.redis_timeout_s)  # fmt: skip
    else:
        store = MemoryBudgetStore(config.prefix, lease_s)
    store.fail_open = config.on_store_error == "open"
    return store
