"""``service_tier: "flex"``: a chat or completions request that may wait for the valleys.

As OpenAI's flex processing: the request is answered like any other, but only when the backends
have room for deferrable work (``BackendPool.has_room``: nothing waiting anywhere, a replica of
every model with its KV cache below ``batch.kv_cache_limit``, the same gate as the Batch API's);
until then it waits here, in a bounded queue (``batch.max_flex_waiting``). A full queue, or no
room within ``batch.flex_max_wait_s``, is a 429 ``resource_unavailable`` with ``retry-after``: the client may
retry later or send it without ``flex``. The request waits after its admission (a stranger never
holds a place) and before routing. ``service_tier`` is not forwarded to vLLM.
"""

from __future__ import annotations

import asyncio
import time

from gateway.config import BatchConfig
from gateway.errors import GatewayError
from gateway.proxy.backends import BackendPool

_POLL_S = 0.05


class FlexGate:
    def __init__(self, pool: BackendPool, config: BatchConfig) -> None:
        self.pool = pool
        self.config = config
        self.waiting = 0

    async def wait(self) -> None:
        """Return once the backends have room; 429 if the queue is full or the wait too long."""
        config = self.config
        if self.pool.has_room():
            return
        if self.waiting >= config.max_flex_waiting:
            raise _unavailable(f"{self.waiting} flex requests are already waiting for capacity")
        self.waiting += 1
        try:
            deadline = time.monotonic() + config.flex_max_wait_s
            while not self.pool.has_room():
                if time.monotonic() > deadline:
                    raise _unavailable(f"no capacity for flex processing within {config.flex_max_wait_s:g} s")
                await asyncio.sleep(_POLL_S)
        finally:
            self.waiting -= 1


def _unavailable(why: str) -> GatewayError:
    return GatewayError(
        429, f"Flex processing is unavailable right now ({why}); retry later, or send the request with "
        "service_tier 'default'.", code="resource_unavailable", type="rate_limit_exceeded",
        headers={"retry-after": "30"},
    )  # fmt: skip
