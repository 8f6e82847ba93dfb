"""vLLM's /metrics: names, labels, exact counters after a known workload; aborts on disconnect."""

from __future__ import annotations

import asyncio
import time

import httpx
import pytest

from .helpers import HI, MODEL, chat, metric, samples

REQUIRED = [
    "vllm:num_requests_running",
    "vllm:num_requests_waiting",
    "vllm:kv_cache_usage_perc",
    "vllm:prompt_tokens_total",
    "vllm:generation_tokens_total",
    "vllm:request_success_total",
    "vllm:time_to_first_token_seconds_bucket",
    "vllm:inter_token_latency_seconds_bucket",
    "vllm:e2e_request_latency_seconds_bucket",
    "vllm:num_preemptions_total",
    "vllm:request_prompt_tokens_bucket",
    "vllm:request_generation_tokens_bucket",
]


def wait_for(predicate, timeout: float = 1.0) -> float:
    """Seconds until ``predicate()`` holds; fails after ``timeout``."""
    start = time.monotonic()
    while not predicate():
        assert time.monotonic() - start < timeout, "condition not met in time"
        time.sleep(0.005)
    return time.monotonic() - start


@pytest.fixture(scope="module")
def fresh(start):
    return start("--speed", "50")


def test_every_metric_has_vllm_names_and_labels(fresh):
    found = samples(httpx.get(fresh.url + "/metrics").text)
    names = {name for name, _ in found}
    assert set(REQUIRED) <= names
    for (name, labels), _ in found.items():
        if name.startswith("vllm:") and name != "vllm:cache_config_info":  # its labels are the cache config
            assert dict(labels)["model_name"] == MODEL and dict(labels)["engine"] == "0", name
    reasons = {dict(labels)["finished_reason"] for name, labels in found if name == "vllm:request_success_total"}
    assert reasons == {"stop", "length", "abort"}
    assert (
        "vllm:e2e_request_latency_seconds_bucket",
        frozenset({("model_name", MODEL), ("engine", "0"), ("le", "7680.0")}),
    ) in found


def test_counters_are_exact_after_a_known_workload(fresh):
    before = {
        n: metric(fresh, n)
        for n in (
            "vllm:prompt_tokens_total",
            "vllm:generation_tokens_total",
            "vllm:e2e_request_latency_seconds_count",
            "vllm:time_to_first_token_seconds_count",
            "vllm:inter_token_latency_seconds_count",
        )
    }
    length_before = metric(fresh, "vllm:request_success_total", finished_reason="length")
    stop_before = metric(fresh, "vllm:request_success_total", finished_reason="stop")

    async def run():
        async with httpx.AsyncClient(base_url=fresh.url, timeout=30) as client:
            bodies = [
                {"messages": [{"role": "user", "content": f"question {i}" * (i + 1)}], "max_tokens": 5 + i}
                for i in range(8)
            ]
            bodies.append({"messages": HI, "max_tokens": 2000})  # ends by itself (stop)
            responses = await asyncio.gather(*(client.post("/v1/chat/completions", json=b) for b in bodies))
            return [r.json() for r in responses]

    results = asyncio.run(run())
    prompt = sum(r["usage"]["prompt_tokens"] for r in results)
    generated = sum(r["usage"]["completion_tokens"] for r in results)
    assert metric(fresh, "vllm:prompt_tokens_total") - before["vllm:prompt_tokens_total"] == prompt
    assert metric(fresh, "vllm:generation_tokens_total") - before["vllm:generation_tokens_total"] == generated
    assert metric(fresh, "vllm:request_success_total", finished_reason="length") - length_before == 8
    assert metric(fresh, "vllm:request_success_total", finished_reason="stop") - stop_before == 1
    assert (
        metric(fresh, "vllm:e2e_request_latency_seconds_count") - before["vllm:e2e_request_latency_seconds_count"] == 9
    )
    assert (
        metric(fresh, "vllm:time_to_first_token_seconds_count") - before["vllm:time_to_first_token_seconds_count"] == 9
    )
    itl = metric(fresh, "vllm:inter_token_latency_seconds_count") - before["vllm:inter_token_latency_seconds_count"]
    assert itl == generated - 9  # every token after the first of each request
    assert metric(fresh, "vllm:num_requests_running") == 0 and metric(fresh, "vllm:kv_cache_usage_perc") == 0


def test_running_and_waiting_follow_the_scheduler(start):
    sim = start("--speed", "realistic", "--max-num-seqs", "2")

    async def run():
        async with httpx.AsyncClient(base_url=sim.url, timeout=30) as client:
            tasks = [
                asyncio.create_task(client.post("/v1/chat/completions", json={"messages": HI, "max_tokens": 500}))
                for _ in range(5)
            ]
            await asyncio.sleep(0.2)
            gauges = (
                metric(sim, "vllm:num_requests_running"),
                metric(sim, "vllm:num_requests_waiting"),
                metric(sim, "vllm:kv_cache_usage_perc"),
            )
            for task in tasks:  # the clients leave: every request is aborted
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            return gauges

    running, waiting, usage = asyncio.run(run())
    assert (running, waiting) == (2, 3) and usage > 0
    wait_for(lambda: metric(sim, "vllm:request_success_total", finished_reason="abort") == 5)
    assert metric(sim, "vllm:num_requests_running") == metric(sim, "vllm:num_requests_waiting") == 0


def test_a_closed_stream_is_aborted_within_a_step(start):
    sim = start("--speed", "realistic")
    aborts = metric(sim, "vllm:request_success_total", finished_reason="abort")
    with httpx.stream(
        "POST",
        sim.url + "/v1/chat/completions",
        headers={"X-Request-Id": "gone-stream"},
        json={"messages": HI, "stream": True},
    ) as r:
        chunks = r.iter_raw()
        next(chunks)
        assert metric(sim, "vllm:num_requests_running") == 1
        running = sim.energy()["requests"]["gone-stream"]
        assert running["finished_reason"] is None and running["end"] is None and running["joules"] > 0
    waited = wait_for(lambda: metric(sim, "vllm:request_success_total", finished_reason="abort") == aborts + 1)
    assert waited < 1.0 and metric(sim, "vllm:num_requests_running") == 0
    truth = sim.energy()["requests"]["gone-stream"]
    assert truth["finished_reason"] == "abort" and truth["joules"] > 0


def test_a_client_that_leaves_a_non_streaming_request_aborts_it(start):
    sim = start("--speed", "realistic")
    aborts = metric(sim, "vllm:request_success_total", finished_reason="abort")
    with pytest.raises(httpx.ReadTimeout):
        chat_timeout = httpx.Timeout(10, read=0.3)
        httpx.post(
            sim.url + "/v1/chat/completions",
            json={"messages": HI},
            headers={"X-Request-Id": "gone"},
            timeout=chat_timeout,
        )
    wait_for(lambda: metric(sim, "vllm:request_success_total", finished_reason="abort") == aborts + 1)
    assert metric(sim, "vllm:num_requests_running") == 0
    truth = sim.energy()["requests"]["gone"]
    assert truth["finished_reason"] == "abort" and 0 < truth["completion_tokens"] < 1000
    assert chat(sim, {"messages": HI, "max_tokens": 3}).status_code == 200  # the slot is free again
