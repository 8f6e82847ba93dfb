"""Continuous batching on the simulated clock, the KV cache, and determinism of the answers."""

from __future__ import annotations

import asyncio

import httpx
import pytest

from gateway.sim.process import start_sim

from .helpers import HI, chat, metric


def mean(sim, name: str) -> tuple[float, float]:
    return metric(sim, name + "_sum"), metric(sim, name + "_count")


def mean_since(sim, name: str, before: tuple[float, float]) -> float:
    total, count = mean(sim, name)
    return (total - before[0]) / (count - before[1])


def concurrently(sim, bodies: list[dict]) -> list[dict]:
    async def run():
        async with httpx.AsyncClient(base_url=sim.url, timeout=60) as client:
            responses = await asyncio.gather(*(client.post("/v1/chat/completions", json=b) for b in bodies))
            return [r.json() for r in responses]

    return asyncio.run(run())


def test_inter_token_latency_grows_with_the_number_of_running_sequences(start):
    sim = start("--speed", "5")
    body = {"messages": HI, "max_tokens": 40}
    before = mean(sim, "vllm:inter_token_latency_seconds")
    chat(sim, body)
    alone = mean_since(sim, "vllm:inter_token_latency_seconds", before)
    before = mean(sim, "vllm:inter_token_latency_seconds")
    concurrently(sim, [body] * 96)
    crowded = mean_since(sim, "vllm:inter_token_latency_seconds", before)
    assert 0.004 < alone < 0.008  # an 8B model decodes one sequence every ~6 ms on an H200
    assert crowded > 1.4 * alone


def test_time_to_first_token_grows_with_prompt_length_and_queueing(start):
    sim = start("--speed", "20", "--max-num-seqs", "1")
    before = mean(sim, "vllm:time_to_first_token_seconds")
    chat(sim, {"messages": HI, "max_tokens": 1})
    short = mean_since(sim, "vllm:time_to_first_token_seconds", before)
    before = mean(sim, "vllm:time_to_first_token_seconds")
    chat(sim, {"messages": [{"role": "user", "content": "history " * 12000}], "max_tokens": 1})
    long = mean_since(sim, "vllm:time_to_first_token_seconds", before)
    assert long > 20 * short
    before = mean(sim, "vllm:time_to_first_token_seconds")
    concurrently(sim, [{"messages": HI, "max_tokens": 30}] * 4)  # one slot: each waits for the one before
    queued = mean_since(sim, "vllm:time_to_first_token_seconds", before)
    assert queued > 10 * short


def test_long_prompts_are_prefilled_in_chunks_under_the_token_budget(start):
    sim = start("--speed", "instant", "--max-num-batched-tokens", "2048")
    r = chat(sim, {"messages": [{"role": "user", "content": "word " * 9000}], "max_tokens": 2})
    assert r.json()["usage"]["prompt_tokens"] > 9000
    over = metric(sim, "vllm:iteration_tokens_total_count") - metric(
        sim, "vllm:iteration_tokens_total_bucket", le="2048.0"
    )
    assert over == 0 and metric(sim, "vllm:iteration_tokens_total_count") >= 5 + 1


def test_a_full_kv_cache_preempts_and_recomputes(start):
    sim = start("--speed", "50", "--max-model-len", "512", "--kv-cache-tokens", "600")  # requests must overlap
    bodies = [
        {"messages": [{"role": "user", "content": f"request {i} " * 40}], "max_tokens": 200, "ignore_eos": True}
        for i in range(4)
    ]
    results = concurrently(sim, bodies)
    assert [r["usage"]["completion_tokens"] for r in results] == [200] * 4
    assert metric(sim, "vllm:num_preemptions_total") > 0
    prompts = sum(r["usage"]["prompt_tokens"] for r in results)
    assert metric(sim, "vllm:prompt_tokens_total") == prompts  # recomputation is not counted twice


def test_without_max_tokens_generation_runs_to_the_context_window(start):
    sim = start("--speed", "instant", "--reasoning", "qwen3", "--max-model-len", "300")
    r = chat(sim, {"messages": HI}).json()
    assert r["usage"]["total_tokens"] == 300 and r["choices"][0]["finish_reason"] == "length"


def test_answers_are_deterministic_per_seed():
    body = {"messages": [{"role": "user", "content": "Describe the ocean."}], "max_tokens": 60}
    answers = []
    for seed in ("7", "7", "8"):
        with start_sim(["--model", "Qwen/Qwen3-1.7B", "--speed", "instant", "--seed", seed]) as sim:
            full = chat(sim, {"messages": body["messages"]}).json()
            answers.append((chat(sim, body).json()["choices"][0]["message"]["content"], full["usage"]))
            assert chat(sim, {**body, "seed": 1}).json()["choices"][0]["message"]["content"] != answers[-1][0]
    assert answers[0] == answers[1]
    assert answers[0][0] != answers[2][0]


def test_stop_strings_end_the_answer_like_vllm(instant):
    sim = instant
    full = chat(sim, {"messages": HI, "max_tokens": 200}).json()["choices"][0]["message"]["content"]
    stop = full.split()[5]
    r = chat(sim, {"messages": HI, "max_tokens": 200, "stop": [stop]}).json()["choices"][0]
    assert r["finish_reason"] == "stop" and r["stop_reason"] == stop
    assert r["message"]["content"] == full[: full.index(stop)]


@pytest.fixture(scope="module")
def instant(start):
    return start("--speed", "instant", "--seed", "3")


@pytest.mark.parametrize(
    "extra,expected",
    [({"ignore_eos": True, "max_tokens": 3000}, 3000), ({"min_tokens": 2500, "max_tokens": 5000}, 2501)],
)
def test_ignore_eos_and_min_tokens(instant, extra, expected):
    sim = instant
    natural = chat(sim, {"messages": HI}).json()["usage"]["completion_tokens"]
    assert natural < 2000
    r = chat(sim, {"messages": HI, **extra}).json()
    assert r["usage"]["completion_tokens"] == expected


def test_an_h200_decodes_faster_than_an_h100(start):
    itl = {}
    for gpu in ("h100", "h200"):
        sim = start("--speed", "instant", "--gpu", gpu)
        chat(sim, {"messages": HI, "max_tokens": 50})
        total, count = mean(sim, "vllm:inter_token_latency_seconds")
        itl[gpu] = total / count
    assert itl["h200"] < 0.9 * itl["h100"]  # same tensor cores, faster HBM: memory-bound decode gains
