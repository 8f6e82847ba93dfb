"""Budget periods, results and the store interface (see the package docstring for the guarantees)."""

from __future__ import annotations

import math
import time
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Literal

Period = Literal["day", "week", "month"]
Unit = Literal["wh", "tokens", "requests", "usd"]

PERIOD_S = {"day": 86400.0, "week": 7 * 86400.0, "month": 31 * 86400.0}


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
