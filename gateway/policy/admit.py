"""The policy's first step, ``admit``, before routing (the api has checked who is calling).

Which policy version and section, budgets (429 when a ``refuse`` budget is spent; else
downgrade or reasoning off), whether reasoning is wanted and allowed, and what model the
client asked for. Nothing has been sent upstream yet, so a refusal costs nothing. The
``Plan`` it returns goes with the request to ``shape`` and ``feedback``.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from gateway.context import RequestContext
from gateway.errors import GatewayError
from gateway.policy import deferral
from gateway.policy.budgets import BudgetState, StoreUnavailable
from gateway.policy.keys import Identity
from gateway.policy.messages import render
from gateway.policy.plan import REASONING_HEADER, BudgetHold, Plan, budget_values
from gateway.policy.reasoning import client_reasoning_wish
from gateway.policy.schema import Budget

if TYPE_CHECKING:
    from gateway.policy.engine import PolicyEngine

log = logging.getLogger("gateway.policy")

_TRUE = frozenset({"1", "true", "yes", "on"})


async def admit(
    eng: PolicyEngine, ctx: RequestContext, ident: Identity, wait_for_room: Callable[[], Awaitable[None]] | None = None
) -> Plan:
    """The request's plan. ``ident``: the caller, as the api authenticated it from the headers
    (``KeyRing.caller``) before reading the body. ``wait_for_room``: where a request on the flex
    tier waits (``api/flex.py``), once its tier is known and before it holds any budget."""
    pol = eng.store.for_request(ident.key_name, ident.team, ident.section)
    if pol.version != eng.sections_checked:
        _check_sections(eng, pol.version)
    ctx.policy_version, ctx.policy_section = pol.version, pol.section
    p = pol.policy
    rs = p.right_sizing
    model = ctx.body.get("model")
    choice = model if isinstance(model, str) and model else rs.default_model
    choice = pol.aliases.get(choice, choice)
    plan = Plan(
        policy=pol,
        identity=ident,
        model_choice=choice,
        friction=rs.explicit_large,
        override=(ctx.headers.get(rs.override_header) or "").strip().lower() in _TRUE,
        large_tiers=pol.large_tiers,
        effort=p.reasoning.default_effort,
        show_cost=p.cost.show,
    )
    ctx.policy_plan = plan
    if ctx.endpoint != "embeddings":
        _decide_reasoning(eng, ctx, plan)
    deferral.admit(eng, ctx, plan)  # before budgets: a deferred request's reservation is discounted
    if plan.service_tier == "flex" and wait_for_room is not None:
        await wait_for_room()  # holding no reservation while it waits
    if p.budgets:
        await _admit_budgets(eng, ctx, plan)
    plan.avoid_always_thinking = not plan.reasoning and p.reasoning.always_thinking == "reroute"
    ctx.reasoning = plan.reasoning
    return plan


def _decide_reasoning(eng: PolicyEngine, ctx: RequestContext, plan: Plan) -> None:
    r = plan.policy.policy.reasoning
    wish, via, effort = client_reasoning_wish(ctx.headers.get(REASONING_HEADER), ctx.body)
    if effort:
        plan.effort = effort
    allowed = plan.policy.reasoning_allowed(ctx.key_name, ctx.team)
    if wish is None:
        plan.reasoning = r.on_by_default and allowed
        eng.count("reasoning", "on_default" if plan.reasoning else "off_default")
    elif wish is False:
        plan.reasoning, plan.reasoning_why = False, "client asked"
        eng.count("reasoning", "off_client")
    else:
        if not allowed:
            why = "not allowed for this key" if r.allow else "not allowed by policy"
        elif r.require_header and via != "header":
            why = f"needs the header '{REASONING_HEADER}: on'"
        else:
            plan.reasoning, plan.reasoning_why = True, f"opted in via {via}"
            eng.count("reasoning", "opt_in")
            return
        plan.reasoning, plan.reasoning_why = False, why
        eng.count("reasoning", "refused")
        ctx.actions.append("reasoning:refused")
        eng.nudge(ctx, plan, "reasoning_refused", "info", {"why": why, "header": f"{REASONING_HEADER}: on"})


async def _admit_budgets(eng: PolicyEngine, ctx: RequestContext, plan: Plan) -> None:
    ident = plan.identity
    for b in plan.policy.policy.budgets:
        name = ident.label if b.scope == "key" else ident.team
        try:
            hold = await _hold(eng, ctx, plan, b, name)
        except StoreUnavailable:
            hold = await _unchecked(eng, ctx, plan, b, name)
        plan.holds.append(hold)


async def _hold(eng: PolicyEngine, ctx: RequestContext, plan: Plan, b: Budget, name: str) -> BudgetHold:
    if b.on_exceed == "refuse":
        estimate = _estimate(b.unit, ctx, plan)
        reservation, state = await eng.budgets.reserve(b.scope, name, b.unit, b.limit, b.period, estimate=estimate)
        hold = BudgetHold(b, name, state, reservation)
        if reservation is None:
            plan.settled = True  # a refused request is never charged
            await release(eng, plan)
            eng.count("budget", "refuse")
            eng.metrics.budget_exceeded.labels(scope=b.scope, name=name, action="refuse").inc()
            raise _refusal(plan, hold)
        return hold
    state = await eng.budgets.check(b.scope, name, b.unit, b.limit, b.period)
    hold = BudgetHold(b, name, state)
    if state.exhausted:
        hold.hit = True
        _apply_hard(eng, ctx, plan, hold)
    return hold


async def _unchecked(eng: PolicyEngine, ctx: RequestContext, plan: Plan, b: Budget, name: str) -> BudgetHold:
    """The store cannot say whether budget ``b`` has room (``budgets.on_store_error``). Closed:
    refuse, giving back what was held. Open: serve unchecked; what the request uses is
    charged at the end (deferred by the store until it is back)."""
    if not eng.budgets.fail_open:
        eng.count("budget", "store_closed")
        plan.settled = True
        await release(eng, plan)
        raise GatewayError(
            503, "Budgets cannot be checked right now (the budget store is unreachable); retry shortly.",
            code="budget_store_unavailable", type="server_error", headers={"retry-after": "5"},
        )  # fmt: skip
    eng.count("budget", "store_open")
    if "budget:unchecked" not in ctx.actions:
        ctx.actions.append("budget:unchecked")
    return BudgetHold(b, name, BudgetState.of(0.0, b.limit, time.time()))


def _apply_hard(eng: PolicyEngine, ctx: RequestContext, plan: Plan, hold: BudgetHold) -> None:
    b = hold.budget
    if b.on_exceed == "downgrade":
        if plan.max_tier is None:
            plan.max_tier = b.downgrade_to
        action = f"routed to tier {b.downgrade_to} at most"
    else:
        plan.reasoning, plan.reasoning_why = False, f"{b.period} {b.unit} budget spent"
        action = "reasoning off"
    ctx.actions.append(f"budget:{b.on_exceed}")
    eng.count("budget", b.on_exceed)
    eng.metrics.budget_exceeded.labels(scope=b.scope, name=hold.name, action=b.on_exceed).inc()
    eng.nudge(ctx, plan, "budget_hard", "warn", budget_values(hold, hold.state, action))


def _refusal(plan: Plan, hold: BudgetHold) -> GatewayError:
    state = hold.state
    values = budget_values(hold, state, "refused")
    message = render(plan.policy.policy.messages.budget_refused.message, values)
    if state.exhausted:  # nothing changes before the period resets: tell SDKs not to retry
        headers = {"retry-after": str(state.retry_after_s()), "x-should-retry": "false"}
    else:  # only requests in flight hold the rest of the budget: a retry may fit
        message += " Requests in flight hold the rest of it; retry shortly."
        headers = {"retry-after": "1"}
    return GatewayError(429, message, code="rate_limit_exceeded", headers=headers)


async def release(eng: PolicyEngine, plan: Plan) -> None:
    """Give back the reservations ``plan`` holds (a refusal here, or ``abandon``)."""
    for hold in plan.holds:
        if hold.reservation is not None:
            reservation, hold.reservation = hold.reservation, None
            try:
                await eng.budgets.release(reservation)
            except StoreUnavailable:
                pass  # deferred by the store: replayed once it is back


def _check_sections(eng: PolicyEngine, version: str) -> None:
    eng.sections_checked = version
    sections = eng.store.current.policies
    for ident in eng.keys.identities():
        if ident.section is not None and ident.section not in sections:
            log.warning(
                "key %s names policy section %r, which policy %s lacks: it gets %r",
                ident.label,
                ident.section,
                version,
                ident.team if ident.team in sections else "default",
            )


def _estimate(unit: str, ctx: RequestContext, plan: Plan) -> float:
    """An upper bound of what this request can use, where one is known before it runs."""
    if unit == "requests":
        return 1.0
    if unit != "tokens":
        return 0.0  # Wh and money: the store uses the largest recent request instead
    body = ctx.body
    asked = body.get("max_completion_tokens") or body.get("max_tokens")
    caps = plan.policy.caps.values()
    maxima = [m for _, m in caps]
    bound = asked if isinstance(asked, int) else max(d for d, _ in caps)
    rcap = plan.policy.policy.reasoning.max_tokens
    if plan.reasoning and rcap is not None:
        bound = rcap if not isinstance(asked, int) else min(bound, rcap)
    known = [m for m in maxima if m is not None]
    if len(known) == len(maxima):  # every tier caps max_tokens: none can go past the largest cap
        bound = min(bound, max(known))
    n = body.get("n")
    return float(bound * (n if isinstance(n, int) else 1) + _prompt_chars(body) + 32) * plan.budget_factor


def _prompt_chars(body: dict[str, Any]) -> int:
    """Characters in the prompt: an upper bound of its tokens (a token is at least a character)."""
    prompt = body.get("prompt")
    if isinstance(prompt, str):
        return len(prompt)
    total = 0
    for message in body.get("messages") or ():
        content = message.get("content") if isinstance(message, dict) else None
        if isinstance(content, str):
            total += len(content)
        elif isinstance(content, list):
            total += sum(len(part.get("text") or "") for part in content if isinstance(part, dict))
    return total
