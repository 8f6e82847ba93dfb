"""service_tier "flex": a request that waits for room on the backends, in a bounded queue."""

from __future__ import annotations

import asyncio

import pytest

from gateway.api.flex import FlexGate
from gateway.config import BatchConfig
from gateway.errors import GatewayError
from tests.api.test_batchrun import Pool


def test_flex_waits_while_interactive_work_queues_and_goes_when_there_is_room():
    async def scenario():
        pool = Pool()
        gate = FlexGate(pool, BatchConfig())  # type: ignore[arg-type]
        await asyncio.wait_for(gate.wait(), 1)  # room: no wait
        pool.backends[0].waiting = 3
        waiter = asyncio.create_task(gate.wait())
        await asyncio.sleep(0.3)
        assert not waiter.done() and gate.waiting == 1  # an interactive request queued: flex holds back
        pool.backends[0].waiting = 0
        await asyncio.wait_for(waiter, 1)
        assert gate.waiting == 0

    asyncio.run(scenario())


def test_a_full_flex_queue_or_a_long_wait_is_a_429_with_retry_after():
    async def scenario():
        pool = Pool()
        for b in pool.backends:  # no replica of the model has room
            b.kv_usage = 0.99
        gate = FlexGate(pool, BatchConfig(max_flex_waiting=1, flex_max_wait_s=0.2))  # type: ignore[arg-type]
        first = asyncio.create_task(gate.wait())
        await asyncio.sleep(0.05)
        with pytest.raises(GatewayError) as full:
            await gate.wait()
        assert full.value.status == 429 and full.value.code == "resource_unavailable"
        with pytest.raises(GatewayError) as late:
            await first
        assert late.value.headers == {"retry-after": "30"} and "within 0.2 s" in late.value.message

    asyncio.run(scenario())
