"""The request pipeline (api/openai.py) driven in this process, where its state can be read.

Failover to another tier, a client leaving mid-stream (cancellation), and the cleanup path
(budgets given back, the row written, nothing left in flight) on a gateway running on uvicorn
in a thread of the test process, in front of instant simulators.
"""

from __future__ import annotations

import asyncio
import time

import httpx
import pytest

from gateway.config import (
    BackendConfig,
    Config,
    DcgmMeterConfig,
    LedgerConfig,
    PolicyRef,
    RoutingConfig,
    ServerConfig,
)
from gateway.sim.process import start_sim
from tests.support import MEDIUM, SMALL
from tests.e2e.test_nudges import policy_file
from tests.support import InProcessGateway, wait_until

ASK = [{"role": "user", "content": "Prove that the square root of 2 is irrational, with every step."}]


@pytest.fixture
def tier_sims():
    small = start_sim(["--model", SMALL, "--params-b", "1.7", "--speed", "instant"])
    medium = start_sim(["--model", MEDIUM, "--params-b", "8", "--speed", "5"])  # 2,000 tokens take ~5 s
    try:
        yield small, medium
    finally:
        small.stop()
        medium.stop()


def config_for(tmp_path, small, medium, **routing) -> Config:
    tmp_path.mkdir(exist_ok=True)
    policy = {"budgets": [{"scope": "team", "period": "day", "unit": "tokens", "limit": 10**9, "on_exceed": "refuse"}]}
    return Config(
        server=ServerConfig(health_interval_s=30, load_interval_s=30),  # failures learnt from requests
        backends=[
            BackendConfig(name=n, url=s.url, meter=DcgmMeterConfig(type="dcgm", url=f"{s.url}/dcgm/metrics"))
            for n, s in (("s", small), ("m", medium))
        ],
        routing=RoutingConfig(threshold=-1000, **routing),  # everything to the smallest tier
        policy=PolicyRef(path=str(policy_file(tmp_path, policy))),
        ledger=LedgerConfig(path=str(tmp_path / "usage.db")),
    )


@pytest.fixture
def two_tiers(tmp_path, tier_sims):
    small, medium = tier_sims
    with InProcessGateway(config_for(tmp_path, small, medium)) as gw:
        yield gw, small, medium


def sample(gw, name: str, **labels) -> float:
    return sum(
        s.value
        for metric in gw.gateway.metrics.registry.collect()
        for s in metric.samples
        if s.name == name and all(s.labels.get(k) == v for k, v in labels.items())
    )


def running(sim) -> float:
    text = httpx.get(f"{sim.url}/metrics").text
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith("vllm:num_requests_running"))


def test_failover_goes_to_the_next_tier_and_shapes_for_it(two_tiers):
    gw, small, _ = two_tiers
    body = {"model": "auto", "messages": ASK, "max_tokens": 8}
    assert httpx.post(f"{gw.url}/v1/chat/completions", json=body, timeout=30).headers["x-gateway-routed-model"] == SMALL
    small.kill()
    r = httpx.post(f"{gw.url}/v1/chat/completions", json=body, timeout=30)
    assert r.status_code == 200, r.text
    assert r.headers["x-gateway-routed-model"] == MEDIUM
    assert r.headers["x-gateway-route-reason"].startswith(f"{SMALL} unreachable;")
    # shaped once, for the model that answered: one policy header, no nudge twice
    nudges = [n["id"] for n in r.json().get("nudges", [])]
    assert len(nudges) == len(set(nudges))
    assert sample(gw, "gateway_upstream_attempts_total", backend="s", result="connect_error") == 1


def test_a_client_leaving_mid_stream_cancels_upstream_and_cleans_up(two_tiers):
    gw, small, medium = two_tiers
    small.kill()  # everything goes to the slower medium model, so the stream is still running when we leave
    body = {"model": MEDIUM, "messages": ASK, "max_tokens": 2000, "stream": True}

    async def leave_after(n: int) -> str:
        async with httpx.AsyncClient(timeout=30) as client:
            async with client.stream("POST", f"{gw.url}/v1/chat/completions", json=body) as r:
                rid = r.headers["x-request-id"]
                seen = 0
                async for line in r.aiter_lines():
                    seen += line.startswith("data: {")
                    if seen >= n:
                        return rid
        return rid

    left = time.monotonic()
    rid = asyncio.run(leave_after(10))
    # nothing left in flight, the backend stopped generating, budgets settled with what was made
    wait_until(lambda: sample(gw, "gateway_inflight_requests") == 0, 5, what="the request to end")
    wait_until(lambda: running(medium) == 0, 5, what="the backend to abort")
    assert time.monotonic() - left < 2.5  # aborted, not run to its end (~5 s)
    gw.gateway.ledger.flush(5)
    row = next(r for r in gw.gateway.ledger.query(limit=10)[0] if r["request_id"] == rid)
    assert row["outcome"] == "client_disconnect"
    assert 9 <= row["completion_tokens"] < 2000  # the ten events relayed: a role event and nine tokens
    used = sample(gw, "gateway_budget_used_ratio", scope="team", unit="tokens") * 10**9
    assert used >= row["completion_tokens"]


def test_when_every_backend_fails_the_reservation_is_given_back(two_tiers):
    gw, small, medium = two_tiers
    small.kill()
    medium.kill()
    started = time.monotonic()
    r = httpx.post(f"{gw.url}/v1/chat/completions", json={"model": "auto", "messages": ASK, "max_tokens": 8}, timeout=30)
    assert r.status_code == 503 and r.headers["retry-after"]
    assert time.monotonic() - started < 10
    wait_until(lambda: sample(gw, "gateway_inflight_requests") == 0, 5, what="the request to end")
    # nothing was generated: the budget is as it was (the reservation was released, not charged)
    assert sample(gw, "gateway_budget_used_ratio", scope="team", unit="tokens") == 0


def test_a_tier_whose_model_fails_falls_back_to_the_nearest_healthy_tier(two_tiers):
    gw, _, medium = two_tiers
    body = {"model": "large", "messages": ASK, "max_tokens": 8}
    assert httpx.post(f"{gw.url}/v1/chat/completions", json=body, timeout=30).headers["x-gateway-routed-model"] == MEDIUM
    medium.kill()
    r = httpx.post(f"{gw.url}/v1/chat/completions", json=body, timeout=30)
    assert r.status_code == 200, r.text
    assert r.headers["x-gateway-routed-model"] == SMALL
    assert r.headers["x-gateway-route-reason"].startswith(f"{MEDIUM} unreachable; no healthy large model; tier small")
    # the next request knows the backend is down and goes to the nearest tier at once
    r = httpx.post(f"{gw.url}/v1/chat/completions", json=body, timeout=30)
    assert r.status_code == 200 and r.headers["x-gateway-route-reason"].startswith("no healthy large model")


def test_a_named_model_falls_back_only_where_the_config_says(tmp_path, tier_sims):
    small, medium = tier_sims
    body = {"model": MEDIUM, "messages": ASK, "max_tokens": 8}
    fallbacks = {MEDIUM: ["tier:small"]}
    with InProcessGateway(config_for(tmp_path / "a", small, medium)) as plain, \
            InProcessGateway(config_for(tmp_path / "b", small, medium, fallbacks=fallbacks)) as listed:  # fmt: skip
        medium.kill()
        r = httpx.post(f"{plain.url}/v1/chat/completions", json=body, timeout=30)
        assert r.status_code == 503 and r.json()["error"]["code"] == "backend_unreachable"
        r = httpx.post(f"{listed.url}/v1/chat/completions", json=body, timeout=30)
        assert r.status_code == 200, r.text
        assert r.headers["x-gateway-routed-model"] == SMALL
        assert f"fallback for {MEDIUM}: tier:small" in r.headers["x-gateway-route-reason"]


def test_a_tier_does_not_fall_back_when_told_not_to(tmp_path, tier_sims):
    small, medium = tier_sims
    with InProcessGateway(config_for(tmp_path, small, medium, tier_fallback="none")) as gw:
        medium.kill()
        r = httpx.post(f"{gw.url}/v1/chat/completions", json={"model": "large", "messages": ASK, "max_tokens": 8},
                       timeout=30)  # fmt: skip
        assert r.status_code == 503
