"""The policy's last step, ``feedback``, once usage and energy are known, or ``abandon``.

Settle budgets with the real amounts and add the feedback nudges whose thresholds were
crossed (large tier, reasoning, energy, long answer), the cloud cost comparison and social
proof. Call it for every admitted request, or ``abandon`` when the request failed before an
answer, so reservations are freed.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from gateway.context import RequestContext
from gateway.policy.admit import release
from gateway.policy.budgets import StoreUnavailable
from gateway.policy.messages import num, usd
from gateway.policy.plan import Plan, budget_values

if TYPE_CHECKING:
    from gateway.policy.engine import PolicyEngine


async def feedback(eng: PolicyEngine, ctx: RequestContext) -> None:
    plan = ctx.policy_plan
    if not isinstance(plan, Plan) or plan.settled:
        return
    plan.settled = True
    p = plan.policy.policy
    usage = ctx.usage if isinstance(ctx.usage, dict) else {}
    prompt = _int(usage.get("prompt_tokens"))
    completion = _int(usage.get("completion_tokens"))
    energy = ctx.energy
    amounts = _amounts(ctx)
    wh = amounts["wh"]
    if plan.holds:
        await _settle(eng, ctx, plan, amounts)
    facts = plan.route
    values: dict[str, str] | None = None

    def answer() -> dict[str, str]:
        nonlocal values
        if values is None:
            values = {
                "model": ctx.model or (facts.model if facts else ""),
                "tier": facts.tier if facts else "",
                "wh": num(wh) if energy is not None else "?",
                "co2e_g": num(energy.co2e_g) if energy is not None else "?",
                "usd": usd(energy.usd) if energy is not None and energy.usd is not None else "?",
                "prompt_tokens": str(prompt),
                "completion_tokens": str(completion),
                "requested_model": plan.model_choice,
                "smaller_model": (facts.recommended_model if facts else None) or "a smaller model",
            }
        return values

    fb = p.feedback
    if fb.enabled and facts is not None:
        ids = {n.id for n in ctx.nudges}
        large = facts.tier in plan.large_tiers and not facts.smallest
        if fb.large_tier and large and "large_model" not in ids:
            eng.nudge(ctx, plan, "large_tier", "warn", answer())
        if fb.reasoning and ctx.reasoning and (plan.reasoning or facts.reasoning_kind == "always"):
            eng.nudge(ctx, plan, "reasoning_on", "warn", answer())
        if fb.wh_above is not None and energy is not None and wh > fb.wh_above:
            eng.nudge(ctx, plan, "energy", "warn", {**answer(), "wh_threshold": num(fb.wh_above)})
        if fb.completion_tokens_above is not None and completion > fb.completion_tokens_above:
            values = {**answer(), "tokens_threshold": str(fb.completion_tokens_above)}
            eng.nudge(ctx, plan, "long_answer", "warn", values)
    if p.cost.show and p.cost.cloud_model and usage:
        await _cloud_comparison(eng, ctx, plan, p.cost.cloud_model, prompt, completion, answer)
    if p.social_proof.enabled and energy is not None:
        _social_proof(eng, ctx, plan, wh)


async def abandon(eng: PolicyEngine, ctx: RequestContext) -> None:
    """The request ended without feedback() (an error, a disconnect): settle its budgets.

    What it used upstream is charged if known (usage, energy); a request that never
    reached a backend only gives its reservations back. Safe to call more than once.
    """
    plan = ctx.policy_plan
    if not isinstance(plan, Plan) or plan.settled:
        return
    plan.settled = True
    if ctx.usage is None and ctx.energy is None and ctx.upstream_request_id is None:
        await release(eng, plan)
    elif plan.holds:
        await _settle(eng, ctx, plan, _amounts(ctx), warn=False)


async def _settle(
    eng: PolicyEngine, ctx: RequestContext, plan: Plan, amounts: dict[str, float], warn: bool = True
) -> None:
    for hold in plan.holds:
        b = hold.budget
        amount = amounts[b.unit] * plan.budget_factor  # deferred work may count less (deferral.py)
        try:
            if hold.reservation is not None:
                reservation, hold.reservation = hold.reservation, None
                state = await eng.budgets.settle(reservation, amount)
            else:
                state = await eng.budgets.charge(b.scope, hold.name, b.unit, amount, b.limit, b.period)
        except StoreUnavailable:
            continue  # the store deferred the write; the answer goes on without the budget's news
        eng.metrics.budget_used.labels(scope=b.scope, name=hold.name, unit=b.unit).set(state.ratio)
        if warn and b.soft_limit_pct is not None and not hold.hit and state.ratio * 100 >= b.soft_limit_pct:
            eng.count("budget", "soft_warn")
            eng.nudge(ctx, plan, "budget_soft", "warn", budget_values(hold, state, "warning"))


async def _cloud_comparison(eng: PolicyEngine, ctx, plan, cloud_model, prompt, completion, answer) -> None:
    await eng.cloud.ensure_loaded()
    cloud_usd = eng.cloud.cost(cloud_model, prompt, completion)
    if cloud_usd is None:
        return  # litellm not installed, or the model is not in its map
    ctx.response_headers["x-gateway-cloud-usd"] = f"{cloud_usd:.6f} ({cloud_model})"
    eng.nudge(ctx, plan, "cost", "info", {**answer(), "cloud_model": cloud_model, "cloud_usd": usd(cloud_usd)})


def _social_proof(eng: PolicyEngine, ctx: RequestContext, plan: Plan, wh: float) -> None:
    sp = plan.policy.policy.social_proof
    found = eng.social.observe(ctx.team, plan.identity.label, wh, sp.window, sp.min_samples)
    if found is None:
        return
    key_mean, median = found
    if median > 0 and key_mean >= sp.ratio_above * median:
        ratio = f"{key_mean / median:.1f}"
        values = {"key_wh": num(key_mean), "team_median_wh": num(median), "ratio": ratio, "team": ctx.team}
        eng.nudge(ctx, plan, "social", "info", values)


def _amounts(ctx: RequestContext) -> dict[str, float]:
    """What a request used, per budget unit (Wh and money from its energy report)."""
    usage = ctx.usage if isinstance(ctx.usage, dict) else {}
    tokens = _int(usage.get("total_tokens")) or _int(usage.get("prompt_tokens")) + _int(usage.get("completion_tokens"))
    energy = ctx.energy
    return {
        "wh": energy.joules / 3600.0 if energy is not None else 0.0,
        "tokens": float(tokens),
        "requests": 1.0,
        "usd": energy.usd if energy is not None and energy.usd is not None else 0.0,
    }


def _int(value: Any) -> int:
    return value if isinstance(value, int) else 0
