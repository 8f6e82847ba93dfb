"""service_tier "flex" through the gateway: answered like any request when the backend has room,
and overtaken by an interactive request that arrives after it while the backend has a queue."""

from __future__ import annotations

import asyncio
import sqlite3
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


def test_flex_work_packs_onto_one_replica_and_interactive_requests_take_the_other(tmp_path):
    """Two replicas of one model: the deferred requests fill one replica's batch, so an interactive
    request arriving meanwhile finds the other idle (it would otherwise wait for a batch step)."""
    one, two = (start_sim(["--model", MEDIUM, "--params-b", "8", "--speed", "2", "--seed", str(s)]) for s in (1, 2))
    try:
        config = base_config(tmp_path, [backend_entry("a", one), backend_entry("b", two)])
        with InProcessGateway(load_config(write_config(tmp_path, config))) as gw:
            wait_until(lambda: httpx.get(f"{gw.url}/readyz").status_code == 200, 10, what="backends discovered")

            def body(tokens: int, **extra) -> dict:
                return {"model": MEDIUM, "messages": [{"role": "user", "content": "Go on."}], "max_tokens": tokens,
                        "min_tokens": tokens, **extra}  # fmt: skip

            async def scenario() -> None:
                async with httpx.AsyncClient(timeout=120) as client:
                    async def interactive() -> None:
                        await asyncio.sleep(0.3)  # the flex requests are running by now
                        for _ in range(4):
                            r = await client.post(f"{gw.url}/v1/chat/completions", json=body(4))
                            assert r.status_code == 200, r.text

                    flex = [client.post(f"{gw.url}/v1/chat/completions", json=body(256, service_tier="flex"))
                            for _ in range(6)]  # fmt: skip
                    *answers, _ = await asyncio.gather(*flex, interactive())
                    assert all(r.status_code == 200 for r in answers), [r.text for r in answers]

            asyncio.run(scenario())
            wait_until(lambda: _rows(tmp_path) >= 10, 10, what="ledger rows")
            assert [(b.inflight, b.deferred) for b in gw.gateway.pool.backends] == [(0, 0), (0, 0)]
        with sqlite3.connect(tmp_path / "usage.db") as conn:
            rows = conn.execute("SELECT service_tier, backend FROM requests").fetchall()
        flex_on = {backend for tier, backend in rows if tier == "flex"}
        interactive_on = {backend for tier, backend in rows if tier != "flex"}
        assert len(flex_on) == 1, rows  # packed: one batch of 6, not two of 3
        assert interactive_on and not interactive_on & flex_on, rows
    finally:
        one.stop()
        two.stop()


def _rows(tmp_path) -> int:
    with sqlite3.connect(tmp_path / "usage.db") as conn:
        return conn.execute("SELECT count(*) FROM requests").fetchone()[0]
