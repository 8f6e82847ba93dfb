"""What the policy engine's three jobs share: the request's ``Plan``, the router's decision in
the policy's terms (``RouteFacts``) and the budgets that apply to it (``BudgetHold``).

``admit`` writes the plan, ``shape`` adds the route, ``feedback`` (or ``abandon``) finishes it.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from gateway.policy.budgets import BudgetState, Reservation
from gateway.policy.keys import Identity
from gateway.policy.messages import duration, num
from gateway.policy.reasoning import parse_version
from gateway.policy.schema import Budget
from gateway.policy.store import EffectivePolicy
from gateway.routing.router import Route

REASONING_HEADER = "x-gateway-reasoning"
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
    service_tier: str = "default"  # default | flex | batch (deferral.py)
    budget_factor: float = 1.0  # share of the request's usage that budgets count (deferral's discount)
    route: RouteFacts | None = None  # set by shape()
    settled: bool = False


def budget_values(hold: BudgetHold, state: BudgetState, action: str) -> dict[str, str]:
    """A budget's message placeholders (admit's hard limit and refusal, feedback's soft limit)."""
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
