"""service_tier "flex" through the gateway: answered like any request when the backend has room,
and overtaken by an interactive request that arrives after it while the backend has a queue."""

from __future__ import annotations

import asyncio
import time

import httpx

from gateway.config import load_config
from gateway.sim.process import start_sim
from tests.support import MEDIUM, InProcessGateway, backend_entry, base_config, wait_until, write_config


def test_an_interactive_request_overtakes_a_flex_one_that_arrived_first(tmp_path):
    sim = start_sim(["--model", MEDIUM, "--params-b", "8", "--speed", "2", "--max-num-seqs", "1"])
    try:
        config = base_config(tmp_path, [backend_entry("m", sim)])
        with InProcessGateway(load_config(write_config(tmp_path, config))) as gw:
            wait_until(lambda: httpx.get(f"{gw.url}/readyz").status_code == 200, 10, what="backend discovered")

            def body(tokens: int, **extra) -> dict:
                return {"model": MEDIUM, "messages": [{"role": "user", "content": "Go on."}], "max_tokens": tokens,
                        "min_tokens": tokens, **extra}  # fmt: skip

            done: dict[str, float] = {}

            async def send(client: httpx.AsyncClient, name: str, payload: dict, after: float) -> None:
                await asyncio.sleep(after)
                r = await client.post(f"{gw.url}/v1/chat/completions", json=payload)
                assert r.status_code == 200, r.text
                done[name] = time.monotonic()

            async def scenario() -> None:
                async with httpx.AsyncClient(timeout=120) as client:
                    # one sequence at a time: a runs, b and c queue in vLLM behind it, and the queue
                    # stays non-empty until the short request starts (no gap for flex to slip into)
                    await asyncio.gather(
                        send(client, "long-a", body(192), 0.0),
                        send(client, "long-b", body(192), 0.1),
                        send(client, "long-c", body(192), 0.2),
                        send(client, "flex", body(8, service_tier="flex"), 0.6),  # sees the queue: holds back
                        send(client, "short", body(8), 0.9),  # arrives later, goes straight to vLLM's queue
                    )

            asyncio.run(scenario())
            assert done["short"] < done["flex"]  # without the gate the flex request, sent first, would finish first
    finally:
        sim.stop()


def test_a_flex_request_with_room_is_answered_at_once(sims, tmp_path):
    config = base_config(tmp_path, [backend_entry("m", sims[MEDIUM])])
    with InProcessGateway(load_config(write_config(tmp_path, config))) as gw:
        wait_until(lambda: httpx.get(f"{gw.url}/readyz").status_code == 200, 10, what="backend discovered")
        r = httpx.post(f"{gw.url}/v1/chat/completions", timeout=30,
                       json={"model": MEDIUM, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4,
                             "service_tier": "flex"})  # fmt: skip
        assert r.status_code == 200 and r.json()["usage"]["energy"]["joules"] >= 0
        metrics = httpx.get(f"{gw.url}/metrics").text
        assert "gateway_flex_waiting 0.0" in metrics and "gateway_batch_requests_inflight 0.0" in metrics
