"""Each nudge end to end: a gateway with a policy file in front of Qwen3-style simulators."""

from __future__ import annotations

import asyncio
import sqlite3
import threading
import time
import uuid

import httpx
import orjson
import pytest
import yaml

from gateway.policy.keys import hash_key
from tests.support import LARGE, SMALL, backend_entry, base_config
from tests.support import GatewayProcess, wait_until, write_config

ASK = [{"role": "user", "content": "Name three primary colours."}]


def policy_file(tmp_path, default: dict, sections: dict | None = None, name: str = "policy.yaml"):
    path = tmp_path / name
    path.write_text(yaml.safe_dump({"version": 1, "default": default, "sections": sections or {}}))
    return path


def gateway(sims, tmp_path, policy: dict, models=(SMALL, LARGE), **sections) -> GatewayProcess:
    path = policy_file(tmp_path, policy)
    backends = [backend_entry(m.split("/")[-1].lower(), sims[m]) for m in models]
    config = base_config(tmp_path, backends, policy={"path": str(path), "watch_interval_s": 0.2}, **sections)
    return GatewayProcess(write_config(tmp_path, config))


def chat(gw, model=LARGE, headers=None, **body) -> httpx.Response:
    payload = {"model": model, "messages": ASK, "max_tokens": 64, **body}
    return httpx.post(f"{gw.url}/v1/chat/completions", json=payload, headers=headers or {}, timeout=60)


def stream_events(gw, model=LARGE, headers=None, **body) -> list[dict]:
    payload = {"model": model, "messages": ASK, "max_tokens": 32, "stream": True, **body}
    with httpx.stream("POST", f"{gw.url}/v1/chat/completions", json=payload, headers=headers or {}, timeout=60) as r:
        assert r.status_code == 200
        return [orjson.loads(line[6:]) for line in r.iter_lines() if line.startswith("data: {")]


def test_reasoning_needs_the_header_when_the_policy_says_so(sims, tmp_path):
    with gateway(sims, tmp_path, {"reasoning": {"require_header": True}}) as gw:
        off = chat(gw)
        assert off.headers["x-gateway-reasoning"].startswith("off")
        assert off.json()["usage"]["completion_tokens_details"]["reasoning_tokens"] == 0
        assert not off.json()["choices"][0]["message"].get("reasoning")
        effort_only = chat(gw, reasoning_effort="high")  # not enough under this policy
        assert effort_only.json()["usage"]["completion_tokens_details"]["reasoning_tokens"] == 0
        on = chat(gw, headers={"x-gateway-reasoning": "on"}, max_tokens=400)
        assert on.headers["x-gateway-reasoning"].startswith("on")
        assert on.json()["choices"][0]["message"]["reasoning"]
        assert on.json()["usage"]["completion_tokens_details"]["reasoning_tokens"] > 0
        assert any(n["id"] == "reasoning_on" for n in on.json().get("nudges", []))


def test_explicit_large_model_is_warned_in_headers_body_and_stream(sims, tmp_path):
    with gateway(sims, tmp_path, {"right_sizing": {"explicit_large": "warn"}}, routing={"threshold": -1000}) as gw:
        r = chat(gw)
        assert r.headers["x-gateway-routed-model"] == LARGE  # honoured...
        nudges = {n["id"]: n for n in r.json()["nudges"]}
        assert SMALL in nudges["large_model"]["message"]  # ...naming the smaller model the router would pick
        assert set(nudges["large_model"]) == {"id", "level", "message", "saving_hint"}
        assert SMALL in r.headers["x-gateway-nudge"]
        events = stream_events(gw)
        finishes = [e for e in events if e.get("choices") and e["choices"][0].get("finish_reason")]
        assert any(n["id"] == "large_model" for n in finishes[-1]["nudges"])  # the last streamed chunk


def test_friction_serves_the_routers_pick_unless_overridden(sims, tmp_path):
    with gateway(sims, tmp_path, {"right_sizing": {"explicit_large": "friction"}}, routing={"threshold": -1000}) as gw:
        r = chat(gw)
        assert r.status_code == 200
        assert r.headers["x-gateway-routed-model"] == SMALL
        assert r.headers["x-gateway-route-reason"].startswith("friction")
        assert any(n["id"] == "friction" for n in r.json()["nudges"])
        forced = chat(gw, headers={"x-gateway-override": "1"})
        assert forced.headers["x-gateway-routed-model"] == LARGE


def test_energy_feedback_above_a_threshold(sims, tmp_path):
    policy = {"feedback": {"wh_above": 1e-9, "large_tier": False, "completion_tokens_above": 100000}}
    with gateway(sims, tmp_path, policy) as gw:
        r = chat(gw, model=SMALL)
        energy = r.json()["usage"]["energy"]
        nudge = next(n for n in r.json()["nudges"] if n["id"] == "energy")
        assert "Wh" in nudge["message"] and SMALL in nudge["message"]
        assert energy["joules"] > 0 and energy["co2e_g"] > 0


def test_budget_refuses_with_429_until_the_period_resets(sims, tmp_path):
    keys = {"required": True, "keys": [{"name": "ann", "team": "lab", "hash": hash_key("ann-key")}]}
    policy = {"budgets": [{"scope": "key", "period": "day", "unit": "requests", "limit": 2, "soft_limit_pct": 50,
                           "on_exceed": "refuse"}]}
    with gateway(sims, tmp_path, policy, keys=keys) as gw:
        auth = {"authorization": "Bearer ann-key"}
        first = chat(gw, model=SMALL, headers=auth)
        assert first.status_code == 200
        assert any(n["id"] == "budget_soft" for n in first.json()["nudges"])  # 1 of 2: the soft limit
        assert chat(gw, model=SMALL, headers=auth).status_code == 200
        refused = chat(gw, model=SMALL, headers=auth)
        assert refused.status_code == 429
        assert refused.json()["error"]["code"] == "rate_limit_exceeded"
        assert refused.headers["x-should-retry"] == "false"
        assert 0 < int(refused.headers["retry-after"]) <= 86400


def test_budget_downgrade_serves_a_smaller_tier(sims, tmp_path):
    policy = {"budgets": [{"scope": "team", "period": "day", "unit": "requests", "limit": 1,
                           "on_exceed": "downgrade", "downgrade_to": "small"}]}
    with gateway(sims, tmp_path, policy) as gw:
        assert chat(gw).headers["x-gateway-routed-model"] == LARGE
        later = chat(gw)
        assert later.status_code == 200
        assert later.headers["x-gateway-routed-model"] == SMALL
        assert "budget" in later.headers["x-gateway-route-reason"]


def test_hot_reload_under_load_drops_nothing(sims, tmp_path):
    with gateway(sims, tmp_path, {"reasoning": {"on_by_default": False}}) as gw:
        statuses: list[int] = []
        stop = threading.Event()

        def load():
            with httpx.Client(timeout=60) as client:
                while not stop.is_set():
                    r = client.post(f"{gw.url}/v1/chat/completions",
                                    json={"model": SMALL, "messages": ASK, "max_tokens": 8})
                    statuses.append(r.status_code)

        workers = [threading.Thread(target=load) for _ in range(4)]
        for w in workers:
            w.start()
        try:
            time.sleep(0.5)
            policy_file(tmp_path, {"reasoning": {"on_by_default": True}})  # a valid change
            wait_until(lambda: chat(gw, model=SMALL).headers["x-gateway-reasoning"].startswith("on"), 10,
                       what="the new policy")
            (tmp_path / "policy.yaml").write_text("version: 1\ndefault:\n  reasoning: {on_by_default: maybe}\n")
            wait_until(lambda: 'gateway_policy_reloads_total{result="invalid"} 1.0'
                       in httpx.get(f"{gw.url}/metrics").text, 10, what="the refused reload")
            time.sleep(0.5)
            assert chat(gw, model=SMALL).headers["x-gateway-reasoning"].startswith("on")  # the old one stays
        finally:
            stop.set()
            for w in workers:
                w.join()
        assert len(statuses) > 20 and set(statuses) == {200}


def test_two_gateways_share_a_redis_budget_without_overspending(sims, tmp_path):
    prefix = f"nudge-test-{uuid.uuid4().hex}:"
    policy = {"budgets": [{"scope": "team", "period": "day", "unit": "requests", "limit": 10, "on_exceed": "refuse"}]}
    path = policy_file(tmp_path, policy)
    backends = [backend_entry("small", sims[SMALL])]
    config = base_config(tmp_path, backends, policy={"path": str(path)},
                         budgets={"store": "redis", "redis_url": "redis://127.0.0.1:6379/0", "prefix": prefix})
    one, two = (GatewayProcess(write_config(tmp_path, {**config, "ledger": {"path": str(tmp_path / f"{n}.db")}},
                                            f"{n}.yaml")) for n in ("one", "two"))
    try:
        async def burst():
            async with httpx.AsyncClient(timeout=60) as client:
                async def one_request(i):
                    gw = (one, two)[i % 2]
                    r = await client.post(f"{gw.url}/v1/chat/completions",
                                          json={"model": SMALL, "messages": ASK, "max_tokens": 4})
                    return r.status_code
                return await asyncio.gather(*(one_request(i) for i in range(30)))

        statuses = asyncio.run(burst())
        assert statuses.count(200) == 10  # a request budget is never overspent, across replicas
        assert statuses.count(429) == 20
    finally:
        one.stop()
        two.stop()
        import redis

        client = redis.Redis.from_url("redis://127.0.0.1:6379/0")
        for key in client.scan_iter(f"{prefix}*"):
            client.delete(key)


@pytest.mark.parametrize("field", ["reasoning", "reasoning_content"])
def test_reasoning_of_earlier_turns_is_accepted_under_either_name(sims, tmp_path, field):
    with gateway(sims, tmp_path, {}) as gw:
        messages = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello", field: "thought"},
                    {"role": "user", "content": "and now?"}]
        r = httpx.post(f"{gw.url}/v1/chat/completions", json={"model": SMALL, "messages": messages, "max_tokens": 4},
                       timeout=30)
        assert r.status_code == 200


def _metric(gw, prefix: str, *parts: str) -> float:
    total = 0.0
    for line in httpx.get(f"{gw.url}/metrics").text.splitlines():
        if line.startswith(prefix) and all(p in line for p in parts):
            total += float(line.rsplit(" ", 1)[1])
    return total


def test_reasoning_off_credit_is_small_for_small_talk_and_learns_from_opted_in_requests(sims, tmp_path):
    # the credit for switching thinking off is what thinking costs on this deployment: a prior that
    # starts low, per kind of request, moving toward the reasoning the opted-in requests really did
    hard = [{"role": "user", "content": "Prove that the square root of 2 is irrational, step by step."}]
    credited = lambda gw: _metric(gw, "gateway_reasoning_credit_tokens_total{", f'"{SMALL}"')  # noqa: E731
    joules = lambda gw: _metric(gw, "gateway_energy_saved_joules_total{", 'lever="reasoning"', f'"{SMALL}"')  # noqa: E731
    finals = lambda gw: _metric(gw, "gateway_request_energy_joules_count{", f'"{SMALL}"')  # noqa: E731
    with gateway(sims, tmp_path, {}) as gw:
        sent = 0

        def settled():  # every request sent so far has its final energy (and so its credit)
            wait_until(lambda: finals(gw) >= sent, 15, what="the requests' final energy")

        def credit(messages, **body):
            nonlocal sent
            settled()
            before = credited(gw)
            r = chat(gw, model=SMALL, messages=messages, **body)
            sent += 1
            assert r.status_code == 200 and r.headers["x-gateway-reasoning"].startswith("off")
            settled()
            return credited(gw) - before

        small_talk = credit([{"role": "user", "content": "hi there"}], max_tokens=4000)
        hard_before = credit(hard, max_tokens=4000)
        for _ in range(8):  # opted in: these reason, and the gateway counts their reasoning tokens
            r = chat(gw, model=SMALL, messages=hard, headers={"x-gateway-reasoning": "on"}, max_tokens=2500)
            sent += 1
            assert r.json()["usage"]["completion_tokens_details"]["reasoning_tokens"] > 2000  # more than the prior
        hard_after = credit(hard, max_tokens=4000)
        assert 0 < small_talk < hard_before < hard_after
        assert credit(hard, max_tokens=70) == 0  # a cut-off answer left no room for reasoning
        assert joules(gw) > 0  # and the tokens are priced into the energy-saved lever


def test_a_team_defaulting_to_flex_runs_its_requests_deferred_and_the_ledger_says_so(sims, tmp_path):
    keys = {"required": True, "keys": [{"name": "ann", "team": "lab", "hash": hash_key("ann-key"), "admin": True},
                                       {"name": "ops", "team": "ops", "hash": hash_key("ops-key")}]}  # fmt: skip
    path = policy_file(tmp_path, {}, {"ops": {"deferral": {"default_tier": "flex"}}})
    config = base_config(tmp_path, [backend_entry("small", sims[SMALL])], keys=keys, policy={"path": str(path)})
    ops, ann = {"authorization": "Bearer ops-key"}, {"authorization": "Bearer ann-key"}
    with GatewayProcess(write_config(tmp_path, config)) as gw:
        deferred = chat(gw, model=SMALL, headers=ops)  # the team's default: flex (room now: served at once)
        opted_out = chat(gw, model=SMALL, headers=ops, service_tier="default")
        other = chat(gw, model=SMALL, headers=ann)
        assert [r.status_code for r in (deferred, opted_out, other)] == [200, 200, 200]
        for wrong in ("turbo", ["flex"], {"tier": "flex"}):
            bad = chat(gw, model=SMALL, headers=ann, service_tier=wrong)
            assert bad.status_code == 400 and bad.json()["error"]["param"] == "service_tier", wrong
        metrics = httpx.get(f"{gw.url}/metrics", headers=ann).text
        assert 'gateway_deferred_requests_total{tier="flex"} 1.0' in metrics
    with sqlite3.connect(tmp_path / "usage.db") as conn:
        tiers = dict(conn.execute("SELECT request_id, service_tier FROM requests"))
    assert [tiers[r.headers["x-request-id"]] for r in (deferred, opted_out, other)] == ["flex", "default", "default"]
