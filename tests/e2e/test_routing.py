"""Right-sizing end to end: simulators of three sizes behind one gateway."""

from __future__ import annotations

import time

import httpx
import pytest

from gateway.sim.process import start_sim
from tests.support import LARGE, MEDIUM, SMALL, backend_entry, base_config
from tests.support import GatewayProcess, wait_until, write_config

TRIVIAL = "What is 2+2?"
TRIVIAL_PROMPTS = ("hi there", TRIVIAL, "What is the capital of France?")
HARD = (
    "Prove that for every integer n >= 1 the sum of the first n odd numbers is n^2, then generalise: derive a "
    "closed form for the sum of the first n k-th powers for k = 1, 2, 3 using Faulhaber's formula, prove each "
    "step by induction, and finally analyse the asymptotic error of approximating the sum by an integral, with a "
    "rigorous bound. Show every step of the derivation and check each result numerically for n = 10. " * 3
)
HARD_PROMPTS = (
    HARD,
    "Prove that there are infinitely many primes of the form 4k + 3, then show that the sum of the reciprocals of "
    "the primes diverges. Give complete proofs, state every lemma you use and justify each step.",
    "Write a thread-safe LRU cache in C++ with O(1) get and put, templated on key and value types, with a "
    "configurable capacity and an eviction callback. Explain the locking strategy, prove that get and put are O(1), "
    "and write unit tests that exercise concurrent access from several threads.",
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


def test_trivial_prompts_go_small_and_hard_prompts_go_large(three_sizes):
    tmp, sims = three_sizes
    with gateway_for(tmp, sims, "default") as gw:
        for prompt in TRIVIAL_PROMPTS:
            assert ask(gw, prompt).headers["x-gateway-routed-model"] == SMALL, prompt
        for prompt in HARD_PROMPTS:
            assert ask(gw, prompt).headers["x-gateway-routed-model"] == LARGE, prompt[:40]


def test_an_unfamiliar_request_goes_up(three_sizes):
    # the router has never seen a request with tools and a response schema: it is less sure what is
    # at stake, so the same words go to a larger tier, not a smaller one
    tmp, sims = three_sizes
    text = "Suggest three names for a grey cat."
    tools = [{"type": "function", "function": {"name": "search_restaurants", "parameters": {
        "type": "object", "properties": {"query": {"type": "string"}}}}}]
    schema = {"type": "json_schema", "json_schema": {"name": "booking", "schema": {"type": "object"}}}
    order = {SMALL: 0, MEDIUM: 1, LARGE: 2}
    with gateway_for(tmp, sims, "unsure") as gw:
        plain = ask(gw, text)
        unsure = ask(gw, text, response_format=schema, tools=tools, tool_choice="none")
        assert plain.status_code == unsure.status_code == 200
        a, b = plain.headers["x-gateway-routed-model"], unsure.headers["x-gateway-routed-model"]
        assert order[b] > order[a], (a, b)
        assert float(unsure.headers["x-gateway-adequacy"]) < float(plain.headers["x-gateway-adequacy"]) or order[b] == 2


def test_a_configured_ability_changes_the_choice(three_sizes):
    # a prompt the default sends to the 32B; tell the gateway the 8B answers like a 30B model and
    # the same prompt stays on the 8B, which is still 3x cheaper per token
    tmp, sims = three_sizes
    prompt = HARD_PROMPTS[2]
    with gateway_for(tmp, sims, "plain") as gw:
        assert ask(gw, prompt).headers["x-gateway-routed-model"] == LARGE
    backends = [backend_entry(n.split("/")[-1].lower(), s) for n, s in sims.items()]
    config = base_config(tmp, backends, models={MEDIUM: {"ability": 30}},
                         server={"health_interval_s": 0.2, "load_interval_s": 0.1})
    with GatewayProcess(write_config(tmp, config, "able.yaml")) as gw:
        r = ask(gw, prompt)
        assert r.headers["x-gateway-routed-model"] == MEDIUM, r.headers["x-gateway-route-reason"]
        card = next(m for m in httpx.get(f"{gw.url}/v1/models").json()["data"] if m["id"] == MEDIUM)
        assert card["ability_b"] == 30


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
                             routing={"threshold": -1000}, server={"health_interval_s": 0.2})
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
    with gateway_for(tmp, sims, "context", threshold=-1000) as gw:  # everything would go small...
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
                             routing={"threshold": -1000, "saturated_waiting": 2},
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


def test_a_refitted_artefact_is_picked_up_from_the_config(three_sizes):
    # an operator whose labels say the small model is as good as the large one on everything: the
    # refit makes 'auto' send a prompt the shipped model keeps on the 32B to the 1.7B
    pytest.importorskip("scipy")
    import json

    from gateway.routing.adequacy import AdequacyModel
    from gateway.routing.refit import run

    tmp, sims = three_sizes
    data = tmp / "labels.jsonl"
    with data.open("w") as f:
        for i in range(120):
            text = HARD_PROMPTS[i % len(HARD_PROMPTS)] + f" (variant {i})"
            f.write(json.dumps({"prompt": text, "scores": {SMALL: 0.9, MEDIUM: 0.9, LARGE: 0.9}}) + "\n")
    artefact = tmp / "my-router.json"
    run(data, artefact, {}, mode="calibrate", holdout=0.0, log=lambda *_: None)
    version = AdequacyModel.load(artefact).version
    with gateway_for(tmp, sims, "default-model") as gw:
        assert ask(gw, HARD_PROMPTS[2]).headers["x-gateway-routed-model"] == LARGE
    with gateway_for(tmp, sims, "refitted", model=str(artefact)) as gw:
        assert ask(gw, HARD_PROMPTS[2]).headers["x-gateway-routed-model"] == SMALL
        assert f'gateway_router_info{{quality_target="0.96",version="{version}"}} 1.0' in httpx.get(f"{gw.url}/metrics").text


def test_a_bad_artefact_path_is_a_clear_start_up_error(tmp_path):
    import subprocess
    import sys

    config = base_config(tmp_path, [{"name": "b", "url": "http://127.0.0.1:9"}], routing={"model": "missing.json"})
    path = write_config(tmp_path, config)
    out = subprocess.run([sys.executable, "-m", "gateway.cli", "serve", "--config", str(path)],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 2 and "routing.model: cannot load" in out.stderr


def test_a_unary_answer_cut_by_its_backend_is_rerouted_to_another_tier(tmp_path):
    # health checks far apart: the gateway learns of the failure only from the request itself
    with start_sim(["--model", SMALL, "--params-b", "1.7", "--speed", "instant"]) as small, \
            start_sim(["--model", MEDIUM, "--params-b", "8", "--speed", "instant"]) as medium:
        config = base_config(tmp_path, [backend_entry("s", small), backend_entry("m", medium)],
                             routing={"threshold": -1000}, server={"health_interval_s": 30, "load_interval_s": 30})
        with GatewayProcess(write_config(tmp_path, config)) as gw:
            assert ask(gw, HARD).headers["x-gateway-routed-model"] == SMALL
            httpx.post(f"{small.url}/debug/fault", json={"mode": "die_midstream", "count": 1})
            r = ask(gw, HARD)  # small sends half an answer and drops the connection
            assert r.status_code == 200, r.text
            assert r.headers["x-gateway-routed-model"] == MEDIUM
            assert "unreachable" in r.headers["x-gateway-route-reason"]
