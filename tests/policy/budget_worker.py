"""One 'gateway replica' for the two-process budget test: draw on a shared Redis budget.

Run as a script: budget_worker.py URL PREFIX UNIT LIMIT MAX_AMOUNT ESTIMATE START_AT TASKS
Prints one JSON line: how many requests it got admitted and what it charged.
"""

from __future__ import annotations

import asyncio
import json
import random
import sys
import time

from gateway.policy.budgets import RedisBudgetStore


async def main(url: str, prefix: str, unit: str, limit: float, max_amount: float, estimate: float, start_at: float, tasks: int):
    store = RedisBudgetStore(url, prefix)
    admitted, charged, refused_in_flight = 0, 0.0, 0
    largest = 0.0

    async def one_client() -> None:
        nonlocal admitted, charged, refused_in_flight, largest
        while True:
            reservation, state = await store.reserve("team", "shared", unit, limit, "day", estimate=estimate)
            if reservation is None:
                if state.exhausted:
                    return
                refused_in_flight += 1  # only reservations hold the rest: retry shortly
                await asyncio.sleep(0.001)
                continue
            await asyncio.sleep(random.uniform(0.0, 0.003))  # the request runs
            amount = 1.0 if unit == "requests" else random.uniform(0.3 * max_amount, max_amount)
            await store.settle(reservation, amount)
            admitted += 1
            charged += amount
            largest = max(largest, amount)

    while time.time() < start_at:  # both processes start together
        await asyncio.sleep(0.0005)
    await asyncio.gather(*(one_client() for _ in range(tasks)))
    await store.close()
    print(json.dumps({"admitted": admitted, "charged": charged, "largest": largest, "refused_in_flight": refused_in_flight}))


if __name__ == "__main__":
    url, prefix, unit = sys.argv[1:4]
    limit, max_amount, estimate, start_at = map(float, sys.argv[4:8])
    asyncio.run(main(url, prefix, unit, limit, max_amount, estimate, start_at, int(sys.argv[8])))
