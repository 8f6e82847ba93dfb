"""Precision as right-sizing end to end: a model served twice, in bf16 and quantized to FP8 (the
simulator streams and stores FP8 weights in their own bytes); the router sends the large tier's
requests to the FP8 deployment, /v1/models says each deployment's precision, and once models have
answered enough, their energy rating (Wh per 1,000 answers, stars among the models served)."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import httpx

from gateway.config import load_config
from gateway.sim.process import start_sim
from tests.support import InProcessGateway, backend_entry, base_config, wait_until, write_config

SMALL, LARGE, LARGE_FP8 = "Qwen/Qwen3-1.7B", "Qwen/Qwen3-32B", "Qwen/Qwen3-32B-FP8"
HARD = ("Prove that there are infinitely many primes of the form 4k + 3, then show that the sum of the reciprocals "
        "of the primes diverges. Give complete proofs, state every lemma you use and justify each step.")  # fmt: skip


def test_the_fp8_deployment_takes_the_large_tier_and_models_are_rated(tmp_path):
    sims = {}
    try:
        for key, name, params, extra in (("small", SMALL, 1.7, []), ("large", LARGE, 32, []),
                                         ("fp8", LARGE_FP8, 32, ["--quantization", "fp8"])):  # fmt: skip
            # in real time: a sped-up clock under-attributes short requests (the README's simulator notes)
            sims[key] = start_sim(["--model", name, "--params-b", str(params), "--speed", "realistic", *extra])
        config = base_config(tmp_path, [backend_entry(k, s) for k, s in sims.items()])
        with InProcessGateway(load_config(write_config(tmp_path, config))) as gw:
            wait_until(lambda: len(httpx.get(f"{gw.url}/v1/models").json()["data"]) >= 3, 10, what="models")
            cards = {m["id"]: m for m in httpx.get(f"{gw.url}/v1/models").json()["data"]}
            assert cards[LARGE_FP8]["precision"] == "fp8" and cards[LARGE]["precision"] == "bf16"
            assert cards[LARGE_FP8]["tier"] == cards[LARGE]["tier"] == "large"
            assert cards[LARGE]["energy_rating"] is None  # nothing answered yet

            def chat(model: str, text: str = "Name a colour.", tokens: int = 16) -> httpx.Response:
                body = {"model": model, "messages": [{"role": "user", "content": text}], "max_tokens": tokens}
                r = httpx.post(f"{gw.url}/v1/chat/completions", json=body, timeout=60)
                assert r.status_code == 200, r.text
                return r

            hard = chat("auto", HARD, 64)
            assert hard.headers["x-gateway-routed-model"] == LARGE_FP8, hard.headers["x-gateway-route-reason"]
            with ThreadPoolExecutor(8) as pool:  # enough answers on two models for a rating with stars
                list(pool.map(chat, [SMALL, LARGE] * 20))

            def rated():
                cards = {m["id"]: m for m in httpx.get(f"{gw.url}/v1/models").json()["data"]}
                ok = all((cards[m]["energy_rating"] or {}).get("answers", 0) >= 20 for m in (SMALL, LARGE))
                return ok and cards

            cards = wait_until(rated, 20, what="both models rated")
            small, large = cards[SMALL]["energy_rating"], cards[LARGE]["energy_rating"]
            assert small["wh_per_1k_answers"] < large["wh_per_1k_answers"]
            assert (small["stars"], large["stars"]) == (5, 1)
            assert cards[LARGE_FP8]["energy_rating"] is None  # one answer: not rated yet
    finally:
        for sim in sims.values():
            sim.stop()
