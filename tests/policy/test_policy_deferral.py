"""Deferral in the policy: a team's default tier, the budget discount for deferred work, and the
suggestion to keys that keep sending offline-looking work."""

from __future__ import annotations

import pytest

from gateway.api.messages import to_chat
from gateway.errors import GatewayError
from gateway.policy.deferral import DeferrableLoad, served_tier
from tests.policy.test_policy_engine import ALICE, BOB, QWEN_SMALL, admit, env, finish, make_ctx, nudged, rewrite  # noqa: F401

POLICY = """version: 1
default:
  deferral: {suggest_after: 3, suggest_window_s: 60, suggest_max_tokens: 1000}
  budgets:
    - {scope: team, period: day, unit: wh, limit: 10, on_exceed: refuse}
    - {scope: key, period: day, unit: tokens, limit: 100000, on_exceed: refuse}
sections:
  physics:
    deferral: {default_tier: flex, budget_discount: 0.5}
"""


def test_the_tier_a_request_is_served_on():
    assert served_tier("auto", "chat") == "default"
    assert served_tier("auto", "chat", "flex") == "flex"  # a section's default takes 'auto' ...
    assert served_tier("default", "chat", "flex") == "default"  # ... never an explicit choice
    for other in ("priority", "scale", "fast"):
        assert served_tier(other, "completions", "flex") == "default"
    assert served_tier("flex", "chat") == "flex" and served_tier("batch", "chat") == "batch"
    assert served_tier("flex", "embeddings") == "default"  # only generation waits for room


def test_the_suggestion_counts_within_its_window_and_forgets_the_oldest_keys():
    load = DeferrableLoad(max_keys=2)
    assert [load.observe("a", 3, 10.0, now=t) for t in (0.0, 1.0, 2.0, 3.0)] == [1, 2, 3, 3]
    assert load.observe("a", 3, 10.0, now=20.0) == 1  # the others are older than the window
    load.observe("b", 3, 10.0, now=21.0)
    load.observe("c", 3, 10.0, now=22.0)
    assert load.observe("a", 3, 10.0, now=23.0) == 1  # "a" was the least recent: forgotten


async def test_a_teams_default_tier_defers_requests_that_name_none(env):
    rewrite(env, POLICY)
    assert await env.store.poll() == "ok"
    plan = await admit(env.engine, make_ctx(BOB))  # team physics
    assert plan.service_tier == "flex" and plan.budget_factor == 0.5
    assert nudged(env.metrics, "deferral", "default_flex") == 1
    ctx = make_ctx(BOB)
    ctx.service_tier = "default"  # the client opts out
    plan = await admit(env.engine, ctx)
    assert plan.service_tier == "default" and plan.budget_factor == 1.0
    plan = await admit(env.engine, make_ctx(ALICE))  # team lab: the default policy
    assert plan.service_tier == "default"


async def test_deferred_usage_counts_at_the_discount_against_budgets(env):
    rewrite(env, POLICY)
    assert await env.store.poll() == "ok"

    async def spend(tier: str) -> None:
        ctx = make_ctx(BOB)
        ctx.service_tier = tier
        plan = await admit(env.engine, ctx)
        env.engine.shape(ctx, plan, QWEN_SMALL)
        finish(ctx, wh=2.0, completion=1000, prompt=0)
        await env.engine.feedback(ctx)

    def used(scope: str, name: str, unit: str) -> float:
        return env.metrics.registry.get_sample_value(
            "gateway_budget_used_ratio", {"scope": scope, "name": name, "unit": unit}
        )

    await spend("default")
    assert used("team", "physics", "wh") == pytest.approx(0.2)  # 2 Wh of 10
    await spend("flex")
    assert used("team", "physics", "wh") == pytest.approx(0.3)  # + half of 2 Wh
    assert used("key", "bob", "tokens") == pytest.approx(1500 / 100000)
    await spend("batch")
    assert used("team", "physics", "wh") == pytest.approx(0.4)


async def test_keys_sending_offline_looking_work_are_told_flex_and_batch_exist(env):
    rewrite(env, POLICY)
    assert await env.store.poll() == "ok"

    async def send(key=ALICE, **body):
        ctx = make_ctx(key, body={"max_tokens": 2000, **body})
        ctx.stream = bool(body.get("stream"))
        await admit(env.engine, ctx)
        return [n for n in ctx.nudges if n.id == "deferrable"]

    assert await send() == [] and await send() == []
    (nudge,) = await send()  # the third within the window
    assert nudge.level == "info"
    assert nudge.message == "3 requests from this key in the last 1m asked for 1000+ tokens without streaming."
    assert "service_tier 'flex'" in nudge.saving_hint and "/v1/batches" in nudge.saving_hint
    assert nudged(env.metrics, "deferrable", "info") == 1
    # streaming, short or deferred requests do not count, nor does anyone without a configured key
    assert await send(stream=True) == [] and await send(max_tokens=200) == []
    assert await send(BOB) == []  # physics defaults to flex: already deferred
    assert len(env.engine.deferrable._seen) == 1


async def test_a_flex_request_waits_for_room_holding_no_budget(env):
    rewrite(env, """version: 1
default:
  budgets: [{scope: key, period: day, unit: requests, limit: 1, on_exceed: refuse}]
sections:
  physics: {deferral: {default_tier: flex}}
""")
    assert await env.store.poll() == "ok"
    seen = []

    async def room():  # while bob's flex request waits, his one request a day is still free to take
        other = make_ctx(BOB)
        other.service_tier = "default"
        await admit(env.engine, other)
        seen.append(other.policy_plan.holds[0].reservation is not None)

    ctx = make_ctx(BOB)
    with pytest.raises(GatewayError) as refused:
        await env.engine.admit(ctx, env.engine.keys.caller(ctx.headers), room)
    assert seen == [True] and refused.value.status == 429  # its own reservation comes after the wait
    alice = make_ctx(ALICE)
    await env.engine.admit(alice, env.engine.keys.caller(alice.headers), room)
    assert seen == [True]  # an interactive request does not wait


def test_anthropic_clients_opt_out_of_a_flex_default_with_standard_only():
    body = {"model": "m", "max_tokens": 8, "messages": [{"role": "user", "content": "hi"}]}
    assert to_chat({**body, "service_tier": "standard_only"})["service_tier"] == "default"
    assert "service_tier" not in to_chat({**body, "service_tier": "auto"})  # auto: the policy's default
