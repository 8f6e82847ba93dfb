"""Energy: the DCGM-style counter, the GPU power model and the per-request ground truth."""

from __future__ import annotations

import asyncio
import time

import httpx
import pytest

from .helpers import HI, chat, dcgm, energy_counter_mj

IDLE_H200_W = 85.0


@pytest.fixture(scope="module")
def realistic(start):
    return start("--speed", "realistic")


@pytest.fixture(scope="module")
def fast(start):
    return start("--speed", "100", "--reasoning", "qwen3")


def run_concurrently(sim, bodies: list[dict], headers: list[dict] | None = None) -> list[dict]:
    async def run():
        async with httpx.AsyncClient(base_url=sim.url, timeout=60) as client:
            calls = [
                client.post("/v1/chat/completions", json=b, headers=(headers or [None] * len(bodies))[i])
                for i, b in enumerate(bodies)
            ]
            return [r.json() for r in await asyncio.gather(*calls)]

    return asyncio.run(run())


def test_counter_is_stepwise_every_100_ms_at_idle_power(realistic):
    values, changes, spans = [], [], []
    start = time.monotonic()
    while time.monotonic() - start < 0.65:
        sent = time.monotonic()
        value = energy_counter_mj(realistic)
        spans.append((sent, time.monotonic()))  # the reading was taken somewhere in this span
        if values and value != values[-1]:
            changes.append(time.monotonic())
        values.append(value)
        time.sleep(0.005)
    assert values == sorted(values) and len(changes) >= 2
    # idle: each 100 ms tick adds 85 W × 0.1 s = 8.5 J (floored to whole mJ), never a fraction of a tick
    for step in {b - a for a, b in zip(values, values[1:]) if b != a}:
        ticks = round(step / 8500)
        assert ticks >= 1 and abs(step - 8500 * ticks) <= ticks, step
    ticks = (values[-1] - values[0]) / 8500
    shortest, longest = spans[-1][0] - spans[0][1], spans[-1][1] - spans[0][0]
    assert shortest / 0.1 - 1.01 <= ticks <= longest / 0.1 + 1.01
    assert all(b - a > 0.05 for a, b in zip(changes, changes[1:]))
    (power,) = dcgm(realistic)["DCGM_FI_DEV_POWER_USAGE"]
    assert power[1] == pytest.approx(IDLE_H200_W, abs=0.01)


def test_counter_is_monotonic_under_load_and_power_rises(realistic):
    readings = []

    async def load():
        async with httpx.AsyncClient(base_url=realistic.url, timeout=60) as client:
            calls = [client.post("/v1/chat/completions", json={"messages": HI, "max_tokens": 150}) for _ in range(16)]
            task = asyncio.gather(*calls)
            while not task.done():
                readings.append(energy_counter_mj(realistic))
                await asyncio.sleep(0.02)
            await task
            return dcgm(realistic)["DCGM_FI_DEV_POWER_USAGE"][0][1]

    busy_power = asyncio.run(load())
    assert len(readings) >= 3 and readings == sorted(readings)
    assert busy_power > 2 * IDLE_H200_W


def test_total_is_idle_plus_every_request_and_matches_the_counter(fast):
    before = fast.energy()
    bodies = [
        {"messages": [{"role": "user", "content": f"topic {i} " * (3 * i + 1)}], "max_tokens": 20 + 10 * i}
        for i in range(12)
    ]
    run_concurrently(fast, bodies)
    truth = fast.energy()
    attributed = sum(r["joules"] for r in truth["requests"].values())
    assert truth["total_j"] == pytest.approx(truth["idle_j"] + attributed + truth["evicted"]["joules"], rel=1e-9)
    assert truth["idle_j"] > before["idle_j"] and attributed > 0
    # the counter, read at the same instant, lags by less than its 100 ms update period (≤ 700 W)
    assert 0 <= truth["total_j"] - truth["counter_j"] <= 0.1 * 700


def test_counter_deltas_match_the_ground_truth(realistic):
    counter_0, truth_0 = energy_counter_mj(realistic), realistic.energy()["total_j"]
    run_concurrently(realistic, [{"messages": HI, "max_tokens": 30}] * 8)
    counter_1, truth_1 = energy_counter_mj(realistic), realistic.energy()["total_j"]
    # each reading is at most one 100 ms step (≤ 700 W) behind the truth; the calls take a little wall time too
    assert (counter_1 - counter_0) / 1000 == pytest.approx(truth_1 - truth_0, abs=2 * 0.1 * 700 + 10)
    assert truth_1 - truth_0 > 50


def test_ground_truth_is_keyed_by_x_request_id_and_matches_usage(fast):
    r = chat(fast, {"messages": HI, "max_tokens": 12}, headers={"X-Request-Id": "truth-1"})
    row = fast.energy()["requests"]["truth-1"]
    assert r.json()["id"] == "chatcmpl-truth-1"
    assert row["prompt_tokens"] == r.json()["usage"]["prompt_tokens"] and row["completion_tokens"] == 12
    assert row["finished_reason"] == "length" and row["end"] > row["start"] and row["joules"] > 0
    chat(fast, {"messages": HI, "max_tokens": 3}, headers={"X-Request-Id": "truth-1"})  # a reused id keeps both rows
    rows = fast.energy()["requests"]
    assert rows["truth-1"]["completion_tokens"] == 12 and rows["truth-1#2"]["completion_tokens"] == 3


def test_energy_per_token_falls_with_batch_size(fast):
    body = {
        "messages": [{"role": "user", "content": "Same question."}],
        "max_tokens": 100,
        "chat_template_kwargs": {"enable_thinking": False},
    }
    chat(fast, body, headers={"X-Request-Id": "alone"})
    run_concurrently(fast, [body] * 32, [{"X-Request-Id": f"batched-{i}"} for i in range(32)])
    rows = fast.energy()["requests"]
    alone = rows["alone"]["joules"]
    batched = sum(rows[f"batched-{i}"]["joules"] for i in range(32)) / 32
    assert batched < alone / 5  # weights are streamed once per step for everybody in it


def test_a_long_context_costs_more_per_decoded_token(fast):
    short = {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 400}
    long = {"messages": [{"role": "user", "content": "context " * 6000}], "max_tokens": 400}
    run_concurrently(fast, [short, long], [{"X-Request-Id": "ctx-short"}, {"X-Request-Id": "ctx-long"}])
    rows = fast.energy()["requests"]
    # same steps, same tokens: the long one reads a bigger KV cache every step (and prefilled more)
    assert rows["ctx-long"]["joules"] > rows["ctx-short"]["joules"] * 1.2


def test_reasoning_answers_cost_many_times_more(fast):
    plain = think = 0.0
    for i, question in enumerate(("Solve x^2 - 5x + 6 = 0 step by step.", "Prove that the square root of 2 is irrational.",
                                  "Implement a function that merges two sorted lists.")):
        body = {"messages": [{"role": "user", "content": question}]}
        chat(fast, body, headers={"X-Request-Id": f"think-{i}"})
        chat(fast, {**body, "chat_template_kwargs": {"enable_thinking": False}}, headers={"X-Request-Id": f"plain-{i}"})
    rows = fast.energy()["requests"]
    plain = sum(rows[f"plain-{i}"]["joules"] for i in range(3))
    think = sum(rows[f"think-{i}"]["joules"] for i in range(3))
    assert think > 5 * plain


def test_a_bigger_model_spends_more_per_token(start):
    small, big = (
        start("--speed", "instant"),
        start("--model", "meta-llama/Llama-3.1-70B-Instruct", "--gpus", "4", "--speed", "instant"),
    )
    per_token = {}
    for name, sim in (("small", small), ("big", big)):
        chat(sim, {"messages": HI, "max_tokens": 64}, headers={"X-Request-Id": name})
        row = sim.energy()["requests"][name]
        per_token[name] = row["joules"] / row["completion_tokens"]
    assert per_token["big"] > 3 * per_token["small"]
    series = dcgm(big)["DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION"]
    assert [labels["gpu"] for labels, _ in series] == ["0", "1", "2", "3"]
    assert len({labels["UUID"] for labels, _ in series}) == 4


def test_dcgm_labels_and_an_h100_idles_lower(start):
    sim = start(
        "--speed",
        "realistic",
        "--gpu",
        "h100",
        "--gpus",
        "2",
        "--dcgm-pod",
        "vllm-0",
        "--dcgm-namespace",
        "llm",
        "--dcgm-container",
        "vllm",
    )
    time.sleep(0.25)
    series = dcgm(sim)
    for labels, _ in series["DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION"]:
        assert {"gpu", "UUID", "device", "modelName", "Hostname", "pod", "namespace", "container"} <= set(labels)
        assert labels["modelName"] == "NVIDIA H100 80GB HBM3" and labels["pod"] == "vllm-0"
        assert labels["device"] == f"nvidia{labels['gpu']}"
    power = sum(value for _, value in series["DCGM_FI_DEV_POWER_USAGE"])
    assert power == pytest.approx(2 * 75.0, abs=0.01)


def test_counter_reset_restarts_near_zero_and_truth_keeps_counting(realistic):
    before = realistic.energy()["total_j"]
    assert energy_counter_mj(realistic) > 1e8  # "since the driver loaded"
    realistic.reset_counter()
    assert energy_counter_mj(realistic) < 10_000
    chat(realistic, {"messages": HI, "max_tokens": 20})
    time.sleep(0.3)
    after_mj, truth = energy_counter_mj(realistic), realistic.energy()
    assert truth["total_j"] > before
    assert after_mj / 1000 == pytest.approx(truth["total_j"] - before, abs=2 * 0.1 * 700)


def test_the_roofline_model_prices_steps_differently_and_splits_them_by_marginal_energy():
    from gateway.sim.power import GPUS, CostModel
    from gateway.sim.roofline import RooflineModel, padded

    assert [padded(n) for n in (1, 3, 5, 9, 17, 600)] == [1, 4, 8, 16, 24, 600]
    roof = RooflineModel(8.0, 1, GPUS["h100"], "meta-llama/Llama-3.1-8B-Instruct", seed=1)
    t, energy, shares = roof.step([500, 500, 4000], [(256, 0)], now=0.0)
    assert sum(shares) == pytest.approx(energy) and all(s > 0 for s in shares)
    assert shares[2] > shares[0]  # a long context reads more KV cache: more of the step is its doing
    # 9 sequences run as a padded batch of 16: the padding's cost is shared, not charged to the ninth
    t8, e8, _ = roof.step([500] * 8, [], now=0.0)
    t9, e9, s9 = roof.step([500] * 9, [], now=0.0)
    assert t9 > t8 and max(s9) == pytest.approx(min(s9), rel=1e-9)
    # power depends on the model's geometry, not only on the batch: same size, different KV cache
    qwen = RooflineModel(8.0, 1, GPUS["h100"], "Qwen/Qwen3-8B", seed=1)
    gemma = RooflineModel(8.0, 1, GPUS["h100"], "google/gemma-3-12b-it", seed=1)
    w = [m.step([2000] * 64, [], now=0.0) for m in (roof, qwen, gemma)]
    assert len({round(e / t) for t, e, _ in w}) == 3
    # the additive model offers the same interface, with its own split
    add = CostModel(8.0, 1, GPUS["h100"])
    t_a, e_a, s_a = add.step([500, 500, 4000], [(256, 0)], now=0.0)
    assert sum(s_a) == pytest.approx(e_a)


def test_a_roofline_simulator_serves_and_books_its_own_ground_truth(start):
    sim = start("--power-model", "roofline", "--speed", "instant")
    chat(sim, {"messages": HI, "max_tokens": 64}, headers={"X-Request-Id": "roof-1"})
    row = sim.energy()["requests"]["roof-1"]
    assert row["joules"] > 0 and row["completion_tokens"] == 64
