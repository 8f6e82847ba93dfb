"""PolicyEngine: admit -> shape -> feedback on real policies, stores and metrics."""

from __future__ import annotations

import logging
import sys
import time
from types import SimpleNamespace

import orjson
import pytest

from gateway.config import ApiKeyConfig, KeysConfig
from gateway.context import EnergyReport, RequestContext
from gateway.energy.costs import CloudPrices
from gateway.errors import GatewayError
from gateway.policy.keys import KeyRing, hash_key
from gateway.policy.budgets import MemoryBudgetStore
from gateway.policy.engine import PolicyEngine
from gateway.policy.plan import RouteFacts
from gateway.policy.store import PolicyStore
from gateway.telemetry.metrics import Metrics

ALICE, BOB, CAROL = "sk-alice-123", "sk-bob-456", "sk-carol-789"
KEYS = KeysConfig(
    required=True,
    keys=[
        ApiKeyConfig(hash=hash_key(ALICE), name="alice", team="lab"),
        ApiKeyConfig(hash=hash_key(BOB), name="bob", team="physics"),
        ApiKeyConfig(hash=hash_key(CAROL), name="carol", team="physics", policy="strict"),
    ],
)

POLICY = """version: 1
default:
  reasoning: {allow_teams: [lab], max_tokens: 3000}
  right_sizing:
    aliases: {fast: 'tier:small'}
    explicit_large: warn
  caps:
    default_max_tokens: 500
    max_tokens: 4000
    tiers: {large: {default_max_tokens: 256, max_tokens: 2000}}
    n_max: 2
  feedback: {wh_above: 0.5, completion_tokens_above: 1000}
sections:
  strict:
    reasoning: {allow: false}
    right_sizing: {explicit_large: friction}
    caps: {strip_options: [logprobs, best_of, n]}
"""

QWEN_SMALL = RouteFacts("Qwen3-8B", "small", "qwen3", "hybrid", "0.15.1", "Qwen3-8B", 0.93, 8)
QWEN_LARGE = RouteFacts("Qwen3-32B", "large", "qwen3", "hybrid", "0.15.1", "Qwen3-8B", 0.87, 32)
GPT_OSS = RouteFacts("gpt-oss-20b", "small", "gpt_oss", "effort", "0.10.1", "gpt-oss-20b", 0.9, 20)
R1 = RouteFacts("DeepSeek-R1-Distill-Qwen-7B", "small", "deepseek_r1", "always", "0.15.1", None, None, 7)


def nudged(metrics: Metrics, nudge: str, action: str) -> float:
    return metrics.registry.get_sample_value("gateway_nudges_total", {"nudge": nudge, "action": action}) or 0.0


def make_ctx(key=ALICE, body=None, headers=None, endpoint="chat") -> RequestContext:
    h = {"authorization": f"Bearer {key}"} if key else {}
    h.update(headers or {})
    b = {"model": "auto", "messages": [{"role": "user", "content": "Say hi"}]}
    b.update(body or {})
    return RequestContext(request_id="r", endpoint=endpoint, body=b, headers=h)


async def admit(engine: PolicyEngine, ctx: RequestContext):
    """What the api does before the policy: who is calling, from the headers (401 otherwise)."""
    ident = engine.keys.caller(ctx.headers)
    ctx.api_key_hash, ctx.key_name, ctx.team = ident.key_hash, ident.key_name, ident.team
    return await engine.admit(ctx, ident)


def finish(ctx: RequestContext, completion=50, wh=0.01, usd=0.0001, prompt=20) -> None:
    ctx.usage = {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}
    ctx.energy = EnergyReport(joules=wh * 3600, source="estimated", co2e_g=wh * 0.475, usd=usd)


@pytest.fixture
def env(tmp_path):
    path = tmp_path / "policy.yaml"
    path.write_text(POLICY)
    metrics = Metrics()
    store = PolicyStore(path, metrics)
    budgets = MemoryBudgetStore()
    engine = PolicyEngine(store, KeyRing(KEYS), budgets, metrics, cloud_prices=CloudPrices(tmp_path / "none.json"))
    return SimpleNamespace(path=path, metrics=metrics, store=store, budgets=budgets, engine=engine)


def rewrite(env, text: str) -> None:
    env.path.write_text(text)


# ---------------------------------------------------------------- admit


async def test_admit_identifies_and_snapshots(env):
    ctx = make_ctx(BOB, body={"model": None})
    plan = await admit(env.engine, ctx)
    assert (ctx.key_name, ctx.team, ctx.api_key_hash) == ("bob", "physics", hash_key(BOB))
    assert plan.identity.key_name == "bob" and "authorization" not in ctx.headers  # the key is dropped
    assert ctx.policy_version == env.store.current.version and ctx.policy_section == "default"
    assert plan.model_choice == "auto" and ctx.policy_plan is plan
    assert (await admit(env.engine, make_ctx(body={"model": "fast"}))).model_choice == "tier:small"
    assert (await admit(env.engine, make_ctx(body={"model": "Qwen3-32B"}))).model_choice == "Qwen3-32B"


async def test_admit_refuses_unknown_keys_with_401(env):
    with pytest.raises(GatewayError) as info:
        await admit(env.engine, make_ctx("sk-nope"))
    assert info.value.status == 401 and info.value.code == "invalid_api_key"


async def test_reasoning_off_by_default_and_opt_in(env):
    ctx = make_ctx(ALICE)
    plan = await admit(env.engine, ctx)
    assert plan.reasoning is False and plan.reasoning_why == "policy default"
    env.engine.shape(ctx, plan, QWEN_SMALL)
    assert ctx.body["chat_template_kwargs"] == {"enable_thinking": False} and ctx.reasoning is False
    assert ctx.response_headers["x-gateway-reasoning"] == "off (policy default)"
    assert nudged(env.metrics, "reasoning", "off_default") == 1

    for headers, body, via in [({"x-gateway-reasoning": "on"}, {}, "header"), ({}, {"reasoning_effort": "high"}, "reasoning_effort")]:
        ctx = make_ctx(ALICE, body=body, headers=headers)
        plan = await admit(env.engine, ctx)
        env.engine.shape(ctx, plan, QWEN_SMALL)
        assert plan.reasoning and ctx.reasoning
        assert ctx.body["chat_template_kwargs"] == {"enable_thinking": True} and "reasoning_effort" not in ctx.body
        assert ctx.response_headers["x-gateway-reasoning"] == f"on (opted in via {via})"
    assert nudged(env.metrics, "reasoning", "opt_in") == 2


async def test_reasoning_only_for_allowed_teams_and_keys(env):
    ctx = make_ctx(BOB, headers={"x-gateway-reasoning": "on"})  # team physics is not allowed
    plan = await admit(env.engine, ctx)
    env.engine.shape(ctx, plan, QWEN_SMALL)
    assert plan.reasoning is False and ctx.body["chat_template_kwargs"] == {"enable_thinking": False}
    assert ctx.response_headers["x-gateway-reasoning"] == "off (not allowed for this key)"
    assert [n.id for n in ctx.nudges] == ["reasoning_refused"]
    assert ctx.nudges[0].message == "Reasoning stays off: not allowed for this key."
    assert nudged(env.metrics, "reasoning", "refused") == 1 and "reasoning:refused" in ctx.actions


async def test_require_header(env):
    rewrite(env, "version: 1\ndefault:\n  reasoning: {require_header: true}\n")
    await env.store.poll()
    plan = await admit(env.engine, make_ctx(BOB, body={"reasoning_effort": "high"}))
    assert plan.reasoning is False and "x-gateway-reasoning: on" in plan.reasoning_why
    plan = await admit(env.engine, make_ctx(BOB, headers={"x-gateway-reasoning": "on"}))
    assert plan.reasoning is True


async def test_per_key_sections(env):
    ctx = make_ctx(CAROL, body={"logprobs": True, "best_of": 3, "n": 4}, headers={"x-gateway-reasoning": "on"})
    plan = await admit(env.engine, ctx)
    assert ctx.policy_section == "strict" and plan.friction == "friction" and plan.reasoning is False
    env.engine.shape(ctx, plan, QWEN_SMALL)
    assert "logprobs" not in ctx.body and "best_of" not in ctx.body and ctx.body["n"] == 1
    assert "removed logprobs,best_of" in ctx.response_headers["x-gateway-caps"]
    bob = make_ctx(BOB, body={"logprobs": True, "n": 4})
    env.engine.shape(bob, await admit(env.engine, bob), QWEN_SMALL)
    assert bob.body["logprobs"] is True and bob.body["n"] == 2  # default section: n_max 2, nothing stripped


# ---------------------------------------------------------------- shape


async def test_shape_per_family(env):
    ctx = make_ctx(BOB, body={"reasoning_effort": "none"})
    env.engine.shape(ctx, await admit(env.engine, ctx), GPT_OSS)
    assert ctx.body["reasoning_effort"] == "low" and ctx.reasoning is True
    assert ctx.response_headers["x-gateway-reasoning"] == "low (gpt-oss-20b cannot switch reasoning off)"

    ctx = make_ctx(ALICE, body={"reasoning_effort": "xhigh"})
    env.engine.shape(ctx, await admit(env.engine, ctx), GPT_OSS)
    assert ctx.body["reasoning_effort"] == "high"  # vLLM 0.10.1 only takes low/medium/high

    ctx = make_ctx(BOB)
    plan = await admit(env.engine, ctx)
    assert plan.avoid_always_thinking is True
    env.engine.shape(ctx, plan, R1)  # the router found nothing else of that size
    assert ctx.reasoning is True and "chat_template_kwargs" not in ctx.body
    assert ctx.nudges[0].id == "always_thinking" and ctx.nudges[0].level == "warn"
    assert ctx.response_headers["x-gateway-reasoning"] == "on (DeepSeek-R1-Distill-Qwen-7B always reasons)"


async def test_shape_reads_the_routers_route(env):
    from gateway.routing.catalog import ModelInfo
    from gateway.routing.router import Route

    large = ModelInfo("Qwen3-32B", 32.0, "qwen3", "hybrid", 32768, tier="large", rank=1)
    small = ModelInfo("Qwen3-8B", 8.0, "qwen3", "hybrid", 32768, tier="small", rank=0)
    backends = [SimpleNamespace(vllm_version="0.21.0"), SimpleNamespace(vllm_version="0.15.1")]
    route = Route(large, backends, "model asked for by name", 0.97, small, 0.88, large)
    facts = RouteFacts.of(route)
    assert facts == RouteFacts("Qwen3-32B", "large", "qwen3", "hybrid", "0.15.1", "Qwen3-8B", 0.88, 32.0, False)
    assert RouteFacts.of(Route(large, [SimpleNamespace(vllm_version=None)], "x")).vllm_version is None
    ctx = make_ctx(BOB, body={"model": "Qwen3-32B"})
    env.engine.shape(ctx, await admit(env.engine, ctx), route)
    assert ctx.nudges[0].message == "You asked for Qwen3-32B; Qwen3-8B would likely do (88% predicted adequacy)."


async def test_caps(env):
    ctx = make_ctx(BOB)
    env.engine.shape(ctx, await admit(env.engine, ctx), QWEN_SMALL)
    assert ctx.body["max_tokens"] == 500 and ctx.response_headers["x-gateway-caps"] == "max_tokens=500 (default)"
    ctx = make_ctx(BOB, body={"model": "Qwen3-32B"})
    env.engine.shape(ctx, await admit(env.engine, ctx), QWEN_LARGE)
    assert ctx.body["max_tokens"] == 256  # the large tier's default
    ctx = make_ctx(BOB, body={"model": "Qwen3-32B", "max_completion_tokens": 9000})
    env.engine.shape(ctx, await admit(env.engine, ctx), QWEN_LARGE)
    assert ctx.body["max_completion_tokens"] == 2000 and "max_tokens" not in ctx.body
    assert "max_tokens:cap" in ctx.actions
    capped = [n for n in ctx.nudges if n.id == "capped"][0]
    assert capped.message == "max_tokens lowered from 9000 to 2000 (cap for tier large)."
    # reasoning answers: their own cap, which is also their default
    ctx = make_ctx(ALICE, headers={"x-gateway-reasoning": "on"})
    env.engine.shape(ctx, await admit(env.engine, ctx), QWEN_SMALL)
    assert ctx.body["max_tokens"] == 3000
    ctx = make_ctx(ALICE, body={"max_tokens": 3500}, headers={"x-gateway-reasoning": "on"})
    env.engine.shape(ctx, await admit(env.engine, ctx), QWEN_SMALL)
    assert ctx.body["max_tokens"] == 3000 and "reasoning cap" in ctx.response_headers["x-gateway-caps"]
    assert nudged(env.metrics, "max_tokens", "cap") == 2 and nudged(env.metrics, "max_tokens", "default") == 3


async def test_explicit_large_model(env):
    ctx = make_ctx(BOB, body={"model": "Qwen3-32B"})
    env.engine.shape(ctx, await admit(env.engine, ctx), QWEN_LARGE)
    n = ctx.nudges[0]
    assert (n.id, n.level) == ("large_model", "warn") and "Qwen3-8B" in n.message and "87%" in n.message
    assert n.saving_hint and nudged(env.metrics, "large_model", "warn") == 1
    # auto never gets the nudge; nor does a large model the router would have picked itself
    ctx = make_ctx(BOB)
    env.engine.shape(ctx, await admit(env.engine, ctx), QWEN_LARGE)
    assert not ctx.nudges
    # friction: the router served its pick instead; with the override header, a warning
    ctx = make_ctx(CAROL, body={"model": "Qwen3-32B"})
    plan = await admit(env.engine, ctx)
    assert plan.friction == "friction" and not plan.override
    env.engine.shape(ctx, plan, RouteFacts("Qwen3-8B", "small", "qwen3", "hybrid", None, "Qwen3-8B", 0.87, 8, True))
    assert ctx.nudges[0].id == "friction"
    assert ctx.nudges[0].message == "Served Qwen3-8B instead of Qwen3-32B; large models need the header x-gateway-override."
    ctx = make_ctx(CAROL, body={"model": "Qwen3-32B"}, headers={"x-gateway-override": "1"})
    plan = await admit(env.engine, ctx)
    assert plan.override
    env.engine.shape(ctx, plan, QWEN_LARGE)
    assert ctx.nudges[0].id == "large_model" and nudged(env.metrics, "large_model", "override") == 1


# ---------------------------------------------------------------- budgets


BUDGETS = """version: 1
default:
  budgets:
    - {scope: team, period: day, unit: wh, limit: 1.0, soft_limit_pct: 50, on_exceed: downgrade, downgrade_to: small}
    - {scope: key, period: day, unit: requests, limit: 3, soft_limit_pct: null, on_exceed: refuse}
"""


async def test_budgets_soft_downgrade_and_refuse(env):
    rewrite(env, BUDGETS)
    assert await env.store.poll() == "ok"
    eng = env.engine

    async def request(key=BOB, wh=0.3):
        ctx = make_ctx(key)
        plan = await admit(eng, ctx)
        eng.shape(ctx, plan, QWEN_SMALL)
        finish(ctx, wh=wh)
        await eng.feedback(ctx)
        return ctx, plan

    ctx, plan = await request()
    assert plan.max_tier is None and not [n for n in ctx.nudges if n.id.startswith("budget")]
    ctx, plan = await request()  # 0.6 Wh of 1.0: past the 50% soft limit
    soft = [n for n in ctx.nudges if n.id == "budget_soft"][0]
    assert soft.message == "Team physics has used 60% of its daily budget (0.6 of 1 Wh)." and soft.level == "warn"
    ctx, plan = await request(CAROL, wh=0.5)  # same team, another key: 1.1 Wh
    ctx, plan = await request()  # team spent: downgraded, still served
    assert plan.max_tier == "small" and "budget:downgrade" in ctx.actions
    assert ctx.nudges[0].id == "budget_hard" and "routed to tier small at most" in ctx.nudges[0].message
    assert env.metrics.registry.get_sample_value(
        "gateway_budget_exceeded_total", {"scope": "team", "name": "physics", "action": "downgrade"}
    ) == 1
    assert env.metrics.registry.get_sample_value(
        "gateway_budget_used_ratio", {"scope": "team", "name": "physics", "unit": "wh"}
    ) == pytest.approx(1.4)
    # bob has used his 3 requests: refused before anything goes upstream
    with pytest.raises(GatewayError) as info:
        await admit(eng, make_ctx(BOB))
    err = info.value
    assert err.status == 429 and err.code == "rate_limit_exceeded"
    assert err.headers["x-should-retry"] == "false" and 1 <= int(err.headers["retry-after"]) <= 86400
    assert err.message.startswith("Key bob has used its daily budget of 3 requests; it resets in ")
    assert orjson.loads(err.encode())["error"]["code"] == "rate_limit_exceeded"
    assert nudged(env.metrics, "budget", "refuse") == 1
    # alice (another team, own key budget) is unaffected
    ctx, plan = await request(ALICE)
    assert plan.max_tier is None


async def test_refusal_releases_reservations_and_abandon_frees_them(env):
    rewrite(
        env,
        "version: 1\ndefault:\n  budgets:\n"
        "    - {scope: team, period: day, unit: requests, limit: 10, on_exceed: refuse}\n"
        "    - {scope: key, period: day, unit: requests, limit: 1, on_exceed: refuse}\n",
    )
    await env.store.poll()
    eng, budgets = env.engine, env.budgets
    first = make_ctx(BOB)
    await admit(eng, first)  # holds 1 of bob's 1 and 1 of the team's 10
    with pytest.raises(GatewayError) as info:
        await admit(eng, make_ctx(BOB))
    assert "retry shortly" in info.value.message and "x-should-retry" not in info.value.headers
    team = await budgets.check("team", "physics", "requests", 10, "day")
    assert team.reserved == 1  # the refused request's team reservation was given back
    await eng.abandon(first)  # the first request failed upstream
    assert (await budgets.check("team", "physics", "requests", 10, "day")).reserved == 0
    assert (await budgets.check("key", "bob", "requests", 1, "day")).used == 0
    again = make_ctx(BOB)
    await admit(eng, again)  # admitted again; this one reaches a backend, then the client leaves
    again.upstream_request_id = "up-1"
    await eng.abandon(again)
    await eng.abandon(again)  # idempotent
    assert (await budgets.check("key", "bob", "requests", 1, "day")).used == 1
    refused = make_ctx(BOB)
    with pytest.raises(GatewayError):
        await admit(eng, refused)
    await eng.feedback(refused)  # a refused request is never charged, whatever the caller does
    assert (await budgets.check("team", "physics", "requests", 10, "day")).used == 1


async def test_reasoning_off_budget(env):
    rewrite(env, "version: 1\ndefault:\n  budgets: [{scope: team, period: month, unit: tokens, limit: 100, on_exceed: reasoning_off}]\n")
    await env.store.poll()
    ctx = make_ctx(ALICE, headers={"x-gateway-reasoning": "on"})
    plan = await admit(env.engine, ctx)
    finish(ctx, completion=200)
    await env.engine.feedback(ctx)
    ctx = make_ctx(ALICE, headers={"x-gateway-reasoning": "on"})
    plan = await admit(env.engine, ctx)
    env.engine.shape(ctx, plan, QWEN_SMALL)
    assert plan.reasoning is False and ctx.body["chat_template_kwargs"] == {"enable_thinking": False}
    assert ctx.response_headers["x-gateway-reasoning"] == "off (month tokens budget spent)"


# ---------------------------------------------------------------- feedback


async def test_feedback_thresholds_and_templates(env):
    ctx = make_ctx(BOB)
    env.engine.shape(ctx, await admit(env.engine, ctx), QWEN_SMALL)
    finish(ctx, completion=100, wh=0.05)
    await env.engine.feedback(ctx)
    assert ctx.nudges == []  # nothing crossed

    ctx = make_ctx(BOB, body={"model": "Qwen3-32B"}, headers={})
    env.engine.shape(ctx, await admit(env.engine, ctx), QWEN_LARGE)
    ctx.model = "Qwen3-32B"
    finish(ctx, completion=1500, wh=0.8)
    await env.engine.feedback(ctx)
    by_id = {n.id: n for n in ctx.nudges}
    assert set(by_id) == {"large_model", "energy", "long_answer"}  # large_tier is not repeated after large_model
    assert by_id["energy"].message == "This answer used 0.8 Wh (0.38 g CO2e) on Qwen3-32B."
    assert by_id["long_answer"].message == "Long answer: 1500 tokens, 0.8 Wh."
    assert nudged(env.metrics, "energy", "warn") == 1 and nudged(env.metrics, "long_answer", "warn") == 1

    ctx = make_ctx(ALICE, headers={"x-gateway-reasoning": "on"})
    env.engine.shape(ctx, await admit(env.engine, ctx), QWEN_LARGE)
    ctx.model = "Qwen3-32B"
    finish(ctx, completion=400, wh=0.2)
    await env.engine.feedback(ctx)
    assert [n.id for n in ctx.nudges] == ["large_tier", "reasoning_on"]
    assert ctx.nudges[1].message == "Reasoning was on: 0.2 Wh for 400 tokens."


async def test_custom_templates_and_feedback_off(env):
    rewrite(
        env,
        "version: 1\ndefault:\n  feedback: {wh_above: 0.1}\n"
        "  messages:\n    energy: {message: '{model}: {wh} Wh > {wh_threshold} Wh', hint: null}\n"
        "sections:\n  physics:\n    feedback: {enabled: false}\n",
    )
    await env.store.poll()
    ctx = make_ctx(ALICE)
    env.engine.shape(ctx, await admit(env.engine, ctx), QWEN_SMALL)
    ctx.model = "Qwen3-8B"
    finish(ctx, wh=0.25)
    await env.engine.feedback(ctx)
    assert [(n.message, n.saving_hint) for n in ctx.nudges] == [("Qwen3-8B: 0.25 Wh > 0.1 Wh", None)]
    ctx = make_ctx(BOB)  # team physics has its own section with feedback off
    env.engine.shape(ctx, await admit(env.engine, ctx), QWEN_SMALL)
    finish(ctx, wh=0.25)
    await env.engine.feedback(ctx)
    assert ctx.nudges == [] and ctx.policy_section == "physics"


async def test_one_request_one_policy_version(env):
    ctx = make_ctx(BOB)
    plan = await admit(env.engine, ctx)
    version = ctx.policy_version
    rewrite(env, "version: 1\ndefault:\n  caps: {default_max_tokens: 77}\n  feedback: {wh_above: 0.01}\n")
    assert await env.store.poll() == "ok"
    env.engine.shape(ctx, plan, QWEN_SMALL)
    finish(ctx, wh=0.05)
    await env.engine.feedback(ctx)
    assert ctx.body["max_tokens"] == 500 and ctx.nudges == []  # the old policy, throughout
    assert ctx.policy_version == version and version in ctx.response_headers["x-gateway-policy"]
    new = make_ctx(BOB)
    env.engine.shape(new, await admit(env.engine, new), QWEN_SMALL)
    assert new.body["max_tokens"] == 77 and new.policy_version != version


async def test_cloud_comparison_reads_litellm_without_importing_it(env, tmp_path, monkeypatch):
    pkg = tmp_path / "site" / "litellm"
    pkg.mkdir(parents=True)
    (pkg / "__init__.py").write_text("raise ImportError('the gateway must not import litellm')\n")
    (pkg / "model_prices_and_context_window_backup.json").write_text(
        '{"sample_spec": {"input_cost_per_token": 0.0}, "gpt-4o": {"input_cost_per_token": 2.5e-06, '
        '"output_cost_per_token": 1e-05, "mode": "chat"}, "dall-e": {"output_cost_per_image": 0.04}}'
    )
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    env.engine.cloud = CloudPrices()  # locate it the real way
    rewrite(env, "version: 1\ndefault:\n  cost: {cloud_model: gpt-4o}\n")
    await env.store.poll()
    ctx = make_ctx(BOB)
    env.engine.shape(ctx, await admit(env.engine, ctx), QWEN_SMALL)
    finish(ctx, prompt=1000, completion=500, usd=0.0004)
    await env.engine.feedback(ctx)
    assert "litellm" not in sys.modules
    cost = [n for n in ctx.nudges if n.id == "cost"][0]
    assert cost.message == "Cost $0.0004 here; the same tokens on gpt-4o would cost $0.0075."
    assert ctx.response_headers["x-gateway-cloud-usd"] == "0.007500 (gpt-4o)"


async def test_cloud_comparison_silently_unavailable(env):
    rewrite(env, "version: 1\ndefault:\n  cost: {cloud_model: gpt-4o}\n")
    await env.store.poll()
    env.engine.cloud = CloudPrices()  # no litellm installed here (or not this model)
    ctx = make_ctx(BOB)
    env.engine.shape(ctx, await admit(env.engine, ctx), QWEN_SMALL)
    finish(ctx)
    await env.engine.feedback(ctx)
    if env.engine.cloud.price("gpt-4o") is None:
        assert not [n for n in ctx.nudges if n.id == "cost"]


async def test_social_proof(env):
    rewrite(env, "version: 1\ndefault:\n  social_proof: {enabled: true, window: 50, min_samples: 3, ratio_above: 2}\n")
    await env.store.poll()

    async def request(key, wh):
        ctx = make_ctx(key)
        env.engine.shape(ctx, await admit(env.engine, ctx), QWEN_SMALL)
        finish(ctx, wh=wh)
        await env.engine.feedback(ctx)
        return [n for n in ctx.nudges if n.id == "social"]

    for _ in range(5):
        assert await request(CAROL, 0.01) == []
    got = [await request(BOB, 0.1) for _ in range(3)]
    assert got[0] == [] and got[1] == []  # not enough samples for bob yet
    assert got[2][0].message == "Your requests use 0.1 Wh on average, 10.0x the median of team physics (0.01 Wh)."
    assert await request(CAROL, 0.01) == []


async def test_keys_never_logged_through_the_engine(env, caplog):
    with caplog.at_level(logging.DEBUG):
        ctx = make_ctx(BOB)
        env.engine.shape(ctx, await admit(env.engine, ctx), QWEN_SMALL)
        finish(ctx)
        await env.engine.feedback(ctx)
        with pytest.raises(GatewayError):
            await admit(env.engine, make_ctx("sk-wrong-key-zzz"))
    assert BOB not in caplog.text and "sk-wrong-key-zzz" not in caplog.text
    assert BOB not in repr(ctx) and BOB not in orjson.dumps(ctx.response_headers).decode()


async def test_per_request_cost_without_budgets(env):
    """admit + shape + feedback stay in the tens of microseconds when no budget applies."""
    eng = env.engine
    n = 2000
    started = time.perf_counter()
    for _ in range(n):
        ctx = make_ctx(BOB)
        plan = await admit(eng, ctx)
        eng.shape(ctx, plan, QWEN_SMALL)
        finish(ctx)
        await eng.feedback(ctx)
    per_request_us = (time.perf_counter() - started) / n * 1e6
    assert per_request_us < 250, per_request_us  # ~15 us here; generous for slow CI machines


async def test_no_large_model_nudges_when_nothing_smaller_is_served(env):
    """A one-tier deployment calls its only tier 'large': there is nothing to steer toward."""
    only = RouteFacts("Qwen3-32B", "large", "qwen3", "hybrid", None, "Qwen3-32B", 1.0, 32, smallest=True)
    ctx = make_ctx(BOB, body={"model": "Qwen3-32B"})
    env.engine.shape(ctx, await admit(env.engine, ctx), only)
    ctx.model = "Qwen3-32B"
    finish(ctx)
    await env.engine.feedback(ctx)
    assert ctx.nudges == []


async def test_unknown_energy_is_not_reported_as_zero(env):
    ctx = make_ctx(BOB)
    env.engine.shape(ctx, await admit(env.engine, ctx), QWEN_SMALL)
    ctx.usage = {"prompt_tokens": 5, "completion_tokens": 2500, "total_tokens": 2505}  # energy stage off
    await env.engine.feedback(ctx)
    assert [n.message for n in ctx.nudges] == ["Long answer: 2500 tokens, ? Wh."]
