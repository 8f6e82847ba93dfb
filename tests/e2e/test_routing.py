"""Right-sizing end to end: simulators of three sizes behind one gateway."""

from __future__ import annotations

import time

import httpx
import pytest

from gateway.sim.process import start_sim
from tests.e2e.conftest import LARGE, MEDIUM, SMALL, backend_entry, base_config
from tests.support import GatewayProcess, wait_until, write_config

TRIVIAL = "What is 2+2?"
HARD = (
    "Prove that for every integer n >= 1 the sum of the first n odd numbers is n^2, then generalise: derive a "
    "closed form for the sum of the first n k-th powers for k = 1, 2, 3 using Faulhaber's formula, prove each "
    "step by induction, and finally analyse the asymptotic error of approximating the sum by an integral, with a "
    "rigorous bound. Show every step of the derivation and check each result numerically for n = 10. " * 3
)


def ask(gw, content: str, model: str = "auto", **extra) -> httpx.Response:
    payload = {"model": model, "messages": [{"role": "user", "content": content}], "max_tokens": 8, **extra}
    return httpx.post(f"{gw.url}/v1/chat/completions", json=payload, timeout=60)


@pytest.fixture(scope="module")
def three_sizes(tmp_path_factory):
    """1.7B with a short 4k context, 8B and 32B with 32k."""
    tmp = tmp_path_factory.mktemp("routing")
    specs = ((SMALL, "1.7", "4096"), (MEDIUM, "8", "32768"), (LARGE, "32", "32768"))
    sims = [start_sim(["--model", n, "--params-b", p, "--max-model-len", ctx, "--speed", "instant"])
            for n, p, ctx in specs]
    try:
        yield tmp, dict(zip((SMALL, MEDIUM, LARGE), sims))
    finally:
        for sim in sims:
            sim.stop()


def gateway_for(tmp, sims, name, **routing):
    backends = [backend_entry(n.split("/")[-1].lower(), s) for n, s in sims.items()]
    config = base_config(tmp, backends, routing=routing, server={"health_interval_s": 0.2, "load_interval_s": 0.1})
    return GatewayProcess(write_config(tmp, config, f"{name}.yaml"))


@pytest.mark.xfail(strict=True, reason=(
    "the adequacy model, trained on MMLU-Pro and LLMRouter questions (no chat prompts), predicts about the same "
    "adequacy for a trivial question and a hard proof (docs/routing-eval.md, chat sanity table); this test starts "
    "passing when the model can tell them apart"))
def test_trivial_prompt_goes_small_and_hard_prompt_goes_large(three_sizes):
    tmp, sims = three_sizes
    with gateway_for(tmp, sims, "default") as gw:
        assert ask(gw, TRIVIAL).headers["x-gateway-routed-model"] == SMALL
        assert ask(gw, HARD).headers["x-gateway-routed-model"] == LARGE


def test_every_response_says_what_the_router_did(three_sizes):
    tmp, sims = three_sizes
    with gateway_for(tmp, sims, "explain") as gw:
        r = ask(gw, TRIVIAL)
        assert r.status_code == 200
        routed = r.headers["x-gateway-routed-model"]
        assert routed in (SMALL, MEDIUM, LARGE) and r.json()["model"] == routed
        assert "adequacy" in r.headers["x-gateway-route-reason"]
        assert 0 < float(r.headers["x-gateway-adequacy"]) <= 1
        explicit = ask(gw, TRIVIAL, model=MEDIUM)
        assert explicit.headers["x-gateway-routed-model"] == MEDIUM
        assert explicit.headers["x-gateway-route-reason"] == "model asked for by name"
        metrics = httpx.get(f"{gw.url}/metrics").text
        assert f'gateway_route_decisions_total{{model_name="{routed}",reason="tier ' in metrics.replace(
            'requested_model="auto",', "")


def test_low_threshold_sends_everything_small_and_a_dead_small_backend_spills_up(tmp_path):
    with start_sim(["--model", SMALL, "--params-b", "1.7", "--speed", "instant"]) as small, \
            start_sim(["--model", MEDIUM, "--params-b", "8", "--speed", "instant"]) as medium:
        config = base_config(tmp_path, [backend_entry("s", small), backend_entry("m", medium)],
                             routing={"threshold": 0.05}, server={"health_interval_s": 0.2})
        with GatewayProcess(write_config(tmp_path, config)) as gw:
            assert ask(gw, HARD).headers["x-gateway-routed-model"] == SMALL
            small.kill()
            # the first request after the kill fails over or finds the tier down: never an error
            r = ask(gw, HARD)
            assert r.status_code == 200 and r.headers["x-gateway-routed-model"] == MEDIUM
            wait_until(lambda: httpx.get(f"{gw.url}/readyz").json()["backends"]["s"]["healthy"] is False, 5)
            r = ask(gw, TRIVIAL)
            assert r.status_code == 200 and r.headers["x-gateway-routed-model"] == MEDIUM


def test_over_long_prompt_never_lands_on_a_small_context_model(three_sizes):
    tmp, sims = three_sizes
    with gateway_for(tmp, sims, "context", threshold=0.05) as gw:  # everything would go small...
        long_prompt = "lorem ipsum dolor sit amet " * 900  # ~6,000 tokens: more than the 1.7B's 4,096
        r = ask(gw, long_prompt)
        assert r.status_code == 200
        assert r.headers["x-gateway-routed-model"] == MEDIUM  # ...but this one cannot
        r = ask(gw, long_prompt, model=SMALL)  # asking for the small model by name is a clear 400
        assert r.status_code == 400 and r.json()["error"]["code"] == "context_length_exceeded"


def test_saturated_small_tier_spills_up(tmp_path):
    # one sequence at a time at real speed: a few direct requests fill its queue
    with start_sim(["--model", SMALL, "--params-b", "1.7", "--max-num-seqs", "1"]) as small, \
            start_sim(["--model", MEDIUM, "--params-b", "8", "--speed", "instant"]) as medium:
        config = base_config(tmp_path, [backend_entry("s", small), backend_entry("m", medium)],
                             routing={"threshold": 0.05, "saturated_waiting": 2},
                             server={"health_interval_s": 0.2, "load_interval_s": 0.1})
        with GatewayProcess(write_config(tmp_path, config)) as gw:
            assert ask(gw, TRIVIAL).headers["x-gateway-routed-model"] == SMALL
            busy = httpx.Client(timeout=60)
            import threading

            def hog():
                try:
                    busy.post(f"{small.url}/v1/chat/completions", json={
                        "model": SMALL, "messages": [{"role": "user", "content": "long"}], "max_tokens": 2000})
                except httpx.HTTPError:
                    pass

            threads = [threading.Thread(target=hog, daemon=True) for _ in range(4)]
            for t in threads:
                t.start()
            wait_until(lambda: httpx.get(f"{gw.url}/readyz").json()["backends"]["s"]["waiting"] >= 2, 10,
                       what="the small backend's queue")
            r = ask(gw, TRIVIAL)
            assert r.headers["x-gateway-routed-model"] == MEDIUM
            assert "saturated" in r.headers["x-gateway-route-reason"]
            busy.close()
            time.sleep(0)
