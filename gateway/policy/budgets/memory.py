"""The budget store of a single gateway process."""

from __future__ import annotations

import time
import uuid

from gateway.policy.budgets.store import PERIOD_S, BudgetState, BudgetStore, Reservation


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
        ttl = int(2 * PERIOD_S[period])
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
        used, reserved = self._apply(key, "", amount, True, peak_key, int(2 * PERIOD_S[period]), end, now)
        return BudgetState.of(used, limit, end, reserved)
