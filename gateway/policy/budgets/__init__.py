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

from gateway.config import BudgetStoreConfig
from gateway.policy.budgets.memory import MemoryBudgetStore
from gateway.policy.budgets.redis_store import RedisBudgetStore
from gateway.policy.budgets.store import (
    BudgetState,
    BudgetStore,
    Period,
    Reservation,
    StoreUnavailable,
    Unit,
    period_window,
)

__all__ = [
    "BudgetState", "BudgetStore", "MemoryBudgetStore", "Period", "RedisBudgetStore", "Reservation",
    "StoreUnavailable", "Unit", "make_budget_store", "period_window",
]  # fmt: skip


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
