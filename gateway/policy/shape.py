"""The policy's second step, ``shape``, after routing: the route is known.

Edit the upstream body so the model family really thinks or not, apply the caps
(``max_tokens``, ``n``, stripped options), and explain (nudges, ``x-gateway-*`` headers),
including right-sizing: a warning or friction when a large model was named.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from gateway.context import RequestContext
from gateway.policy.messages import pct
from gateway.policy.plan import REASONING_HEADER, Plan, RouteFacts
from gateway.policy.reasoning import apply_switch
from gateway.routing.router import Route

if TYPE_CHECKING:
    from gateway.policy.engine import PolicyEngine


def shape(eng: PolicyEngine, ctx: RequestContext, plan: Plan, route: Route | RouteFacts) -> None:
    facts = plan.route = RouteFacts.of(route)
    p = plan.policy.policy
    body = ctx.body
    explain = ctx.response_headers if p.explain else {}
    explain["x-gateway-policy"] = f"{plan.policy.section} {plan.policy.version}"
    kind = facts.reasoning_kind
    if ctx.endpoint == "chat":
        runs, label = apply_switch(body, kind, plan.reasoning, plan.effort, facts.vllm_version)
        why = plan.reasoning_why
        if kind == "effort" and not plan.reasoning:
            why = f"{facts.model} cannot switch reasoning off"
        elif kind == "always" and not plan.reasoning:
            why = f"{facts.model} always reasons"
            policy = p.reasoning.always_thinking
            eng.count("always_thinking", "allow" if policy == "allow" else "warn")
            if policy != "allow":
                eng.nudge(ctx, plan, "always_thinking", "warn", {"model": facts.model, "tier": facts.tier})
        elif kind == "none" and plan.reasoning:
            why = f"{facts.model} does not reason"
        ctx.reasoning = runs
        ctx.reasoning_avoided = kind == "hybrid" and not runs  # it would have thought by default
        ctx.actions.append(f"reasoning:{label}")
        explain[REASONING_HEADER] = f"{label} ({why})"
    else:
        ctx.reasoning = kind == "always"
    _caps(eng, ctx, plan, facts, explain)
    _right_size(eng, ctx, plan, facts)


def _caps(eng: PolicyEngine, ctx: RequestContext, plan: Plan, facts: RouteFacts, explain: dict[str, str]) -> None:
    p = plan.policy.policy
    body = ctx.body
    default, maximum = plan.policy.max_tokens_caps(facts.tier)
    notes = []
    thinks = ctx.reasoning and (plan.reasoning or facts.reasoning_kind == "always")
    reasoning_cap = p.reasoning.max_tokens if thinks else None
    if reasoning_cap is not None:
        default = reasoning_cap  # thinking needs room: its cap is also its default
        maximum = reasoning_cap if maximum is None else min(maximum, reasoning_cap)
    fields = [f for f in ("max_completion_tokens", "max_tokens") if body.get(f) is not None]
    if not fields:
        default = default if maximum is None else min(default, maximum)
        body["max_tokens"] = default
        ctx.actions.append("max_tokens:default")
        eng.count("max_tokens", "default")
        notes.append(f"max_tokens={default} (default)")
    for f in fields:
        asked = body[f]
        if maximum is not None and isinstance(asked, int) and asked > maximum:
            body[f] = maximum
            why = "reasoning cap" if reasoning_cap == maximum else f"cap for tier {facts.tier}"
            ctx.actions.append("max_tokens:cap")
            eng.count("max_tokens", "cap")
            notes.append(f"{f}={maximum} (was {asked}: {why})")
            eng.nudge(ctx, plan, "capped", "info", {"max_tokens": str(maximum), "requested": str(asked), "why": why})
    caps = p.caps
    n = body.get("n")
    if n is None and caps.n_default != 1:
        body["n"] = n = caps.n_default
    n_max = 1 if "n" in caps.strip_options else caps.n_max
    if isinstance(n, int) and n_max is not None and n > n_max:
        body["n"] = n_max
        ctx.actions.append("n:cap")
        eng.count("n", "cap")
        notes.append(f"n={n_max} (was {n})")
    removed = [o for o in caps.strip_options if o != "n" and body.get(o) not in (None, False, 0)]
    for option in removed:
        del body[option]
    if removed:
        ctx.actions.append("options:strip")
        eng.count("options", "strip")
        notes.append("removed " + ",".join(removed))
        eng.nudge(ctx, plan, "stripped", "info", {"options": ", ".join(removed)})
    if notes:
        explain["x-gateway-caps"] = "; ".join(notes)


def _right_size(eng: PolicyEngine, ctx: RequestContext, plan: Plan, facts: RouteFacts) -> None:
    choice = plan.model_choice
    if choice == "auto":
        return
    adequacy = pct(facts.recommended_adequacy)
    if facts.friction_applied:
        ctx.actions.append("right_size:friction")
        eng.count("large_model", "friction")
        header = plan.policy.policy.right_sizing.override_header
        values = {"model": facts.model, "requested_model": choice, "header": header, "adequacy": adequacy}
        eng.nudge(ctx, plan, "friction", "warn", values)
        return
    if facts.tier not in plan.large_tiers or facts.smallest:
        return
    # under friction without the override header the router should have served its pick;
    # if it did not (e.g. nothing smaller fits), the client at least gets the warning
    action = ("override" if plan.override else "warn") if plan.friction == "friction" else plan.friction
    eng.count("large_model", action)
    ctx.actions.append(f"right_size:{action}")
    smaller = facts.recommended_model
    if plan.friction != "allow" and smaller and smaller != facts.model:
        values = {"model": facts.model, "tier": facts.tier, "smaller_model": smaller, "adequacy": adequacy}
        eng.nudge(ctx, plan, "large_model", "warn", values)
