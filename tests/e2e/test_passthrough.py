"""Embeddings pass through; upstream attempts carry fresh request ids."""

from __future__ import annotations

import httpx
import openai
import pytest

from gateway.sim.process import start_sim
from tests.support import MEDIUM, backend_entry, base_config, twin_backends
from tests.support import GatewayProcess, write_config

EMBED = "BAAI/bge-small-en-v1.5"


def test_embeddings_pass_through_to_the_embedding_backend(sims, tmp_path):
    with start_sim(["--model", EMBED, "--params-b", "0.03", "--task", "embed", "--speed", "instant"]) as embed:
        config = base_config(tmp_path, [backend_entry("chat", sims[MEDIUM]), backend_entry("embed", embed)])
        with GatewayProcess(write_config(tmp_path, config)) as gw:
            client = openai.OpenAI(base_url=f"{gw.url}/v1", api_key="x", max_retries=0)
            result = client.embeddings.create(model=EMBED, input=["one sentence", "another one"])
            assert len(result.data) == 2 and len(result.data[0].embedding) > 8
            assert result.usage.prompt_tokens > 0
            direct = httpx.post(f"{embed.url}/v1/embeddings", json={"model": EMBED, "input": ["one sentence"]}).json()
            # the SDK asks for base64 (float32): equal to float32 precision
            assert result.data[0].embedding == pytest.approx(direct["data"][0]["embedding"], rel=1e-6, abs=1e-7)
            r = httpx.post(f"{gw.url}/v1/embeddings", json={"input": "no model"})
            assert r.status_code == 400 and r.json()["error"]["param"] == "model"


def test_each_upstream_attempt_gets_a_fresh_request_id(tmp_path):
    with twin_backends(tmp_path) as (gw, a, b):
        httpx.post(f"{a.url}/debug/fault", json={"mode": "error_before_first_byte", "count": 1})
        r = httpx.post(f"{gw.url}/v1/chat/completions", timeout=30,
                       json={"model": MEDIUM, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4})
        assert r.status_code == 200
        rid = r.headers["x-request-id"]
        seen_a = set(httpx.get(f"{a.url}/debug/energy").json()["requests"])
        seen_b = set(httpx.get(f"{b.url}/debug/energy").json()["requests"])
        # vLLM uses the incoming X-Request-Id as its own: one id per attempt, both traceable to ours
        assert f"{rid}-2" in seen_b
        assert f"{rid}-1" not in seen_b
        assert r.json()["id"].endswith(f"{rid}-2")
        assert not seen_a or f"{rid}-1" in seen_a  # the refused attempt, if the sim booked it
