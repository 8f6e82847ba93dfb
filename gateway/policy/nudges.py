"""The policy engine: apply the nudge policy to each request, in three steps.

``admit(ctx, ident)`` before routing (the api has checked who is calling): which policy version and
section, budgets (429 when a ``refuse`` budget is spent; else downgrade or reasoning off),
whether reasoning is wanted and allowed, and what model the client asked for. Nothing has
been sent upstream yet, so a refusal costs nothing.

``shape(ctx, plan, route)`` after routing: edit the upstream body so the model family really
thinks or not, apply the caps, and explain (nudges, ``x-gateway-*`` headers).

``feedback(ctx)`` once usage and energy are known: settle budgets with the real amounts and
add the feedback nudges whose thresholds were crossed. Call it for every admitted request,
or ``abandon(ctx)`` when the request failed before an answer, so reservations are freed.

A request keeps the ``EffectivePolicy`` it got in ``admit`` (``plan.policy``) to the end:
one consistent policy version even if the file is reloaded meanwhile. Every decision is
counted in ``gateway_nudges_total{nudge,action}`` and listed in ``ctx.actions``.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Any

from gateway.context import Nudge, RequestContext
from gateway.errors import GatewayError
from gateway.policy.budgets import BudgetState, BudgetStore, Reservation, StoreUnavailable
from gateway.policy.cloud import CloudPrices
from gateway.policy.keys import Identity, KeyRing
from gateway.policy.messages import duration, num, pct, render, usd
from gateway.policy.reasoning import apply_switch, client_reasoning_wish, parse_version
from gateway.policy.schema import Budget, Template
from gateway.policy.social import SocialWindow
from gateway.policy.store import EffectivePolicy, PolicyStore
from gateway.routing.router import Route
from gateway.telemetry.metrics import Metrics

log = logging.getLogger("gateway.policy")

REASONING_HEADER = "x-gateway-reasoning"
_TRUE = frozenset({"1", "true", "yes", "on"})
_UNIT_NAMES = {"wh": "Wh", "tokens": "tokens", "requests": "requests", "usd": "USD"}


@dataclass(slots=True)
class BudgetHold:
    """One budget as it applies to one request."""

    budget: Budget
    name: str  # the key's name or the team
    state: BudgetState  # at admission
    reservation: Reservation | None = None  # refuse budgets hold one from admit to feedback
    hit: bool = False  # the hard limit was reached at admission and its action applied


@dataclass(frozen=True, slots=True)
class RouteFacts:
    """What shape() needs from the router's decision (``Route``), in the policy's terms."""

    model: str
    tier: str
    family: str | None = None
    reasoning_kind: str = "none"  # hybrid | opt_in | effort | always | none
    vllm_version: str | None = None  # the oldest among the backends it may go to; None = unknown
    recommended_model: str | None = None  # what auto routing would pick
    recommended_adequacy: float | None = None
    params_b: float | None = None
    friction_applied: bool = False  # the router served its pick instead of a named large model
    smallest: bool = False  # its tier is the smallest served: nothing smaller to suggest

    @classmethod
    def of(cls, route: Route | RouteFacts) -> RouteFacts:
        """The facts of the router's decision (tests may hand over the facts directly)."""
        if isinstance(route, RouteFacts):
            return route
        m, rec = route.model, route.recommended
        return cls(
            model=m.name,
            tier=m.tier,
            family=m.family,
            reasoning_kind=m.reasoning or "none",
            vllm_version=_oldest([b.vllm_version for b in route.backends]),
            recommended_model=rec.name if rec is not None else None,
            recommended_adequacy=route.recommended_adequacy,
            params_b=m.params_b,
            friction_applied=route.friction_applied or route.reason.startswith("friction"),
            smallest=m.rank == 0,
        )


def _oldest(versions: list[str | None]) -> str | None:
    """The body must suit every backend the proxy may fail over to: the oldest, or unknown."""
    parsed = [(parse_version(v), v) for v in versions]
    if not parsed or any(p is None for p, _ in parsed):
        return None
    return min(parsed)[1]


@dataclass(slots=True)
class Plan:
    """What admit() decided; the router and shape() read it, feedback() finishes it."""

    policy: EffectivePolicy
    identity: Identity
    model_choice: str  # "auto" | "tier:NAME" | a model name
    max_tier: str | None = None  # from a downgrade budget: route no higher than this tier
    reasoning: bool = False  # the policy lets reasoning run
    reasoning_why: str = "policy default"  # for x-gateway-reasoning
    effort: str = "medium"  # level for effort-only models when reasoning runs
    friction: str = "allow"  # "allow" | "warn" | "friction" for explicitly named large models
    override: bool = False  # the client sent the override header
    large_tiers: frozenset[str] = frozenset()
    avoid_always_thinking: bool = True  # router: prefer a non-reasoning model of similar size
    show_cost: bool = True  # policy cost.show: whether the caller sees money
    holds: list[BudgetHold] = field(default_factory=list)
    route: RouteFacts | None = None  # set by shape()
    settled: bool = False


class PolicyEngine:
    def __init__(
        self,
        store: PolicyStore,
        keys: KeyRing,
        budgets: BudgetStore,
        metrics: Metrics,
        *,
        cloud_prices: CloudPrices | None = None,
    ):
        self.store = store
        self.keys = keys  # the gateway's one ring: the api authenticates with it, feedback lists its keys
        self.budgets = budgets
        self.metrics = metrics
        self.cloud = cloud_prices or CloudPrices()
        self.social = SocialWindow()
        self._counters: dict[tuple[str, str], Any] = {}
        self._sections_checked: str | None = None

    # ------------------------------------------------------------ admit

    async def admit(self, ctx: RequestContext, ident: Identity) -> Plan:
        """The request's plan. ``ident``: the caller, as the api authenticated it from the headers
        (``KeyRing.caller``) before reading the body."""
        pol = self.store.for_request(ident.key_name, ident.team, ident.section)
        if pol.version != self._sections_checked:
            self._check_sections(pol.version)
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
            self._decide_reasoning(ctx, plan)
        if p.budgets:
            await self._admit_budgets(ctx, plan)
        plan.avoid_always_thinking = not plan.reasoning and p.reasoning.always_thinking == "reroute"
        ctx.reasoning = plan.reasoning
        return plan

    def _decide_reasoning(self, ctx: RequestContext, plan: Plan) -> None:
        r = plan.policy.policy.reasoning
        wish, via, effort = client_reasoning_wish(ctx.headers.get(REASONING_HEADER), ctx.body)
        if effort:
            plan.effort = effort
        allowed = plan.policy.reasoning_allowed(ctx.key_name, ctx.team)
        if wish is None:
            plan.reasoning = r.on_by_default and allowed
            self._count("reasoning", "on_default" if plan.reasoning else "off_default")
        elif wish is False:
            plan.reasoning, plan.reasoning_why = False, "client asked"
            self._count("reasoning", "off_client")
        else:
            if not allowed:
                why = "not allowed for this key" if r.allow else "not allowed by policy"
            elif r.require_header and via != "header":
                why = f"needs the header '{REASONING_HEADER}: on'"
            else:
                plan.reasoning, plan.reasoning_why = True, f"opted in via {via}"
                self._count("reasoning", "opt_in")
                return
            plan.reasoning, plan.reasoning_why = False, why
            self._count("reasoning", "refused")
            ctx.actions.append("reasoning:refused")
            self._add(ctx, plan, "reasoning_refused", "info", {"why": why, "header": f"{REASONING_HEADER}: on"})

    async def _admit_budgets(self, ctx: RequestContext, plan: Plan) -> None:
        ident = plan.identity
        for b in plan.policy.policy.budgets:
            name = ident.label if b.scope == "key" else ident.team
            try:
                hold = await self._hold(ctx, plan, b, name)
            except StoreUnavailable:
                hold = await self._unchecked(ctx, plan, b, name)
            plan.holds.append(hold)

    async def _hold(self, ctx: RequestContext, plan: Plan, b: Budget, name: str) -> BudgetHold:
        if b.on_exceed == "refuse":
            estimate = _estimate(b.unit, ctx, plan)
            reservation, state = await self.budgets.reserve(b.scope, name, b.unit, b.limit, b.period, estimate=estimate)
            hold = BudgetHold(b, name, state, reservation)
            if reservation is None:
                plan.settled = True  # a refused request is never charged
                await self._release(plan)
                self._count("budget", "refuse")
                self.metrics.budget_exceeded.labels(scope=b.scope, name=name, action="refuse").inc()
                raise self._refusal(plan, hold)
            return hold
        state = await self.budgets.check(b.scope, name, b.unit, b.limit, b.period)
        hold = BudgetHold(b, name, state)
        if state.exhausted:
            hold.hit = True
            self._apply_hard(ctx, plan, hold)
        return hold

    async def _unchecked(self, ctx: RequestContext, plan: Plan, b: Budget, name: str) -> BudgetHold:
        """The store cannot say whether budget ``b`` has room (``budgets.on_store_error``). Closed:
        refuse, giving back what was held. Open: serve unchecked; what the request uses is
        charged at the end (deferred by the store until it is back)."""
        if not self.budgets.fail_open:
            self._count("budget", "store_closed")
            plan.settled = True
            await self._release(plan)
            raise GatewayError(
                503, "Budgets cannot be checked right now (the budget store is unreachable); retry shortly.",
                code="budget_store_unavailable", type="server_error", headers={"retry-after": "5"},
            )  # fmt: skip
        self._count("budget", "store_open")
        if "budget:unchecked" not in ctx.actions:
            ctx.actions.append("budget:unchecked")
        return BudgetHold(b, name, BudgetState.of(0.0, b.limit, time.time()))

    def _apply_hard(self, ctx: RequestContext, plan: Plan, hold: BudgetHold) -> None:
        b = hold.budget
        if b.on_exceed == "downgrade":
            if plan.max_tier is None:
                plan.max_tier = b.downgrade_to
            action = f"routed to tier {b.downgrade_to} at most"
        else:
            plan.reasoning, plan.reasoning_why = False, f"{b.period} {b.unit} budget spent"
            action = "reasoning off"
        ctx.actions.append(f"budget:{b.on_exceed}")
        self._count("budget", b.on_exceed)
        self.metrics.budget_exceeded.labels(scope=b.scope, name=hold.name, action=b.on_exceed).inc()
        self._add(ctx, plan, "budget_hard", "warn", _budget_values(hold, hold.state, action))

    def _refusal(self, plan: Plan, hold: BudgetHold) -> GatewayError:
        state = hold.state
        values = _budget_values(hold, state, "refused")
        message = render(plan.policy.policy.messages.budget_refused.message, values)
        if state.exhausted:  # nothing changes before the period resets: tell SDKs not to retry
            headers = {"retry-after": str(state.retry_after_s()), "x-should-retry": "false"}
        else:  # only requests in flight hold the rest of the budget: a retry may fit
            message += " Requests in flight hold the rest of it; retry shortly."
            headers = {"retry-after": "1"}
        return GatewayError(429, message, code="rate_limit_exceeded", headers=headers)

    async def _release(self, plan: Plan) -> None:
        for hold in plan.holds:
            if hold.reservation is not None:
                reservation, hold.reservation = hold.reservation, None
                try:
                    await self.budgets.release(reservation)
                except StoreUnavailable:
                    pass  # deferred by the store: replayed once it is back

    async def abandon(self, ctx: RequestContext) -> None:
        """The request ended without feedback() (an error, a disconnect): settle its budgets.

        What it used upstream is charged if known (usage, energy); a request that never
        reached a backend only gives its reservations back. Safe to call more than once.
        """
        plan = ctx.policy_plan
        if not isinstance(plan, Plan) or plan.settled:
            return
        plan.settled = True
        if ctx.usage is None and ctx.energy is None and ctx.upstream_request_id is None:
            await self._release(plan)
        elif plan.holds:
            await self._settle(ctx, plan, _amounts(ctx), warn=False)

    # ------------------------------------------------------------ shape

    def shape(self, ctx: RequestContext, plan: Plan, route: Route | RouteFacts) -> None:
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
                self._count("always_thinking", "allow" if policy == "allow" else "warn")
                if policy != "allow":
                    self._add(ctx, plan, "always_thinking", "warn", {"model": facts.model, "tier": facts.tier})
            elif kind == "none" and plan.reasoning:
                why = f"{facts.model} does not reason"
            ctx.reasoning = runs
            ctx.reasoning_avoided = kind == "hybrid" and not runs  # it would have thought by default
            ctx.actions.append(f"reasoning:{label}")
            explain[REASONING_HEADER] = f"{label} ({why})"
        else:
            ctx.reasoning = kind == "always"
        self._caps(ctx, plan, facts, explain)
        self._right_size(ctx, plan, facts)

    def _caps(self, ctx: RequestContext, plan: Plan, facts: RouteFacts, explain: dict[str, str]) -> None:
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
            self._count("max_tokens", "default")
            notes.append(f"max_tokens={default} (default)")
        for f in fields:
            asked = body[f]
            if maximum is not None and isinstance(asked, int) and asked > maximum:
                body[f] = maximum
                why = "reasoning cap" if reasoning_cap == maximum else f"cap for tier {facts.tier}"
                ctx.actions.append("max_tokens:cap")
                self._count("max_tokens", "cap")
                notes.append(f"{f}={maximum} (was {asked}: {why})")
                self._add(
                    ctx, plan, "capped", "info", {"max_tokens": str(maximum), "requested": str(asked), "why": why}
                )
        caps = p.caps
        n = body.get("n")
        if n is None and caps.n_default != 1:
            body["n"] = n = caps.n_default
        n_max = 1 if "n" in caps.strip_options else caps.n_max
        if isinstance(n, int) and n_max is not None and n > n_max:
            body["n"] = n_max
            ctx.actions.append("n:cap")
            self._count("n", "cap")
            notes.append(f"n={n_max} (was {n})")
        removed = [o for o in caps.strip_options if o != "n" and body.get(o) not in (None, False, 0)]
        for option in removed:
            del body[option]
        if removed:
            ctx.actions.append("options:strip")
            self._count("options", "strip")
            notes.append("removed " + ",".join(removed))
            self._add(ctx, plan, "stripped", "info", {"options": ", ".join(removed)})
        if notes:
            explain["x-gateway-caps"] = "; ".join(notes)

    def _right_size(self, ctx: RequestContext, plan: Plan, facts: RouteFacts) -> None:
        choice = plan.model_choice
        if choice == "auto":
            return
        adequacy = pct(facts.recommended_adequacy)
        if facts.friction_applied:
            ctx.actions.append("right_size:friction")
            self._count("large_model", "friction")
            header = plan.policy.policy.right_sizing.override_header
            values = {"model": facts.model, "requested_model": choice, "header": header, "adequacy": adequacy}
            self._add(ctx, plan, "friction", "warn", values)
            return
        if facts.tier not in plan.large_tiers or facts.smallest:
            return
        # under friction without the override header the router should have served its pick;
        # if it did not (e.g. nothing smaller fits), the client at least gets the warning
        action = ("override" if plan.override else "warn") if plan.friction == "friction" else plan.friction
        self._count("large_model", action)
        ctx.actions.append(f"right_size:{action}")
        smaller = facts.recommended_model
        if plan.friction != "allow" and smaller and smaller != facts.model:
            values = {"model": facts.model, "tier": facts.tier, "smaller_model": smaller, "adequacy": adequacy}
            self._add(ctx, plan, "large_model", "warn", values)

    # ------------------------------------------------------------ feedback

    async def feedback(self, ctx: RequestContext) -> None:
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
            await self._settle(ctx, plan, amounts)
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
                self._add(ctx, plan, "large_tier", "warn", answer())
            if fb.reasoning and ctx.reasoning and (plan.reasoning or facts.reasoning_kind == "always"):
                self._add(ctx, plan, "reasoning_on", "warn", answer())
            if fb.wh_above is not None and energy is not None and wh > fb.wh_above:
                self._add(ctx, plan, "energy", "warn", {**answer(), "wh_threshold": num(fb.wh_above)})
            if fb.completion_tokens_above is not None and completion > fb.completion_tokens_above:
                values = {**answer(), "tokens_threshold": str(fb.completion_tokens_above)}
                self._add(ctx, plan, "long_answer", "warn", values)
        if p.cost.show and p.cost.cloud_model and usage:
            await self._cloud_comparison(ctx, plan, p.cost.cloud_model, prompt, completion, answer)
        if p.social_proof.enabled and energy is not None:
            self._social_proof(ctx, plan, wh)

    async def _settle(self, ctx: RequestContext, plan: Plan, amounts: dict[str, float], warn: bool = True) -> None:
        for hold in plan.holds:
            b = hold.budget
            amount = amounts[b.unit]
            try:
                if hold.reservation is not None:
                    reservation, hold.reservation = hold.reservation, None
                    state = await self.budgets.settle(reservation, amount)
                else:
                    state = await self.budgets.charge(b.scope, hold.name, b.unit, amount, b.limit, b.period)
            except StoreUnavailable:
                continue  # the store deferred the write; the answer goes on without the budget's news
            self.metrics.budget_used.labels(scope=b.scope, name=hold.name, unit=b.unit).set(state.ratio)
            if warn and b.soft_limit_pct is not None and not hold.hit and state.ratio * 100 >= b.soft_limit_pct:
                self._count("budget", "soft_warn")
                self._add(ctx, plan, "budget_soft", "warn", _budget_values(hold, state, "warning"))

    async def _cloud_comparison(self, ctx, plan, cloud_model, prompt, completion, answer) -> None:
        await self.cloud.ensure_loaded()
        cloud_usd = self.cloud.cost(cloud_model, prompt, completion)
        if cloud_usd is None:
            return  # litellm not installed, or the model is not in its map
        ctx.response_headers["x-gateway-cloud-usd"] = f"{cloud_usd:.6f} ({cloud_model})"
        self._add(ctx, plan, "cost", "info", {**answer(), "cloud_model": cloud_model, "cloud_usd": usd(cloud_usd)})

    def _social_proof(self, ctx: RequestContext, plan: Plan, wh: float) -> None:
        sp = plan.policy.policy.social_proof
        found = self.social.observe(ctx.team, plan.identity.label, wh, sp.window, sp.min_samples)
        if found is None:
            return
        key_mean, median = found
        if median > 0 and key_mean >= sp.ratio_above * median:
            ratio = f"{key_mean / median:.1f}"
            values = {"key_wh": num(key_mean), "team_median_wh": num(median), "ratio": ratio, "team": ctx.team}
            self._add(ctx, plan, "social", "info", values)

    # ------------------------------------------------------------ helpers

    def _add(self, ctx: RequestContext, plan: Plan, nudge_id: str, level: str, values: dict[str, str]) -> None:
        template: Template = getattr(plan.policy.policy.messages, nudge_id)
        hint = render(template.hint, values) if template.hint else None
        ctx.nudge(Nudge(nudge_id, level, render(template.message, values), hint))
        if nudge_id not in _COUNTED_ELSEWHERE:
            self._count(nudge_id, level)

    def _count(self, nudge: str, action: str) -> None:
        child = self._counters.get((nudge, action))
        if child is None:
            child = self._counters[(nudge, action)] = self.metrics.nudges.labels(nudge=nudge, action=action)
        child.inc()

    def _check_sections(self, version: str) -> None:
        self._sections_checked = version
        sections = self.store.current.policies
        for ident in self.keys.identities():
            if ident.section is not None and ident.section not in sections:
                log.warning(
                    "key %s names policy section %r, which policy %s lacks: it gets %r",
                    ident.label,
                    ident.section,
                    version,
                    ident.team if ident.team in sections else "default",
                )


# Nudges whose decision is already counted under a more specific action.
_COUNTED_ELSEWHERE = frozenset(
    {
        "reasoning_refused",
        "always_thinking",
        "capped",
        "stripped",
        "large_model",
        "friction",
        "budget_hard",
        "budget_soft",
    }
)


def _budget_values(hold: BudgetHold, state: BudgetState, action: str) -> dict[str, str]:
    b = hold.budget
    return {
        "scope": "Team" if b.scope == "team" else "Key",
        "name": hold.name,
        "unit": _UNIT_NAMES[b.unit],
        "period": {"day": "daily", "week": "weekly", "month": "monthly"}[b.period],
        "limit": num(b.limit),
        "used": num(state.used),
        "pct": f"{min(state.ratio, 9.99) * 100:.0f}%",
        "resets_in": duration(state.resets_at - time.time()),
        "action": action,
    }


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
    return float(bound * (n if isinstance(n, int) else 1) + _prompt_chars(body) + 32)


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


def _int(value: Any) -> int:
    return value if isinstance(value, int) else 0
