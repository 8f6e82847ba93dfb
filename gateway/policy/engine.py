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

This class holds what the steps share (the parts, the counters) and the nudge helper; each
step is its own module: ``admit.py``, ``shape.py``, ``feedback.py`` (with ``abandon``), and the
types they pass along in ``plan.py``.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from gateway.context import Nudge, RequestContext
from gateway.energy.costs import CloudPrices
from gateway.policy import admit as _admit
from gateway.policy import feedback as _feedback
from gateway.policy import shape as _shape
from gateway.policy.budgets import BudgetStore
from gateway.policy.deferral import DeferrableLoad
from gateway.policy.keys import Identity, KeyRing
from gateway.policy.messages import render
from gateway.policy.plan import Plan, RouteFacts
from gateway.policy.schema import Template
from gateway.policy.social import SocialWindow
from gateway.policy.store import PolicyStore
from gateway.routing.router import Route
from gateway.telemetry.metrics import Metrics


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
        self.deferrable = DeferrableLoad()  # keys sending offline-looking work (deferral.py)
        self._counters: dict[tuple[str, str], Any] = {}
        self.sections_checked: str | None = None  # the policy version whose sections admit checked the keys against

    async def admit(
        self, ctx: RequestContext, ident: Identity, wait_for_room: Callable[[], Awaitable[None]] | None = None
    ) -> Plan:
        """The request's plan. ``ident``: the caller, as the api authenticated it from the headers
        (``KeyRing.caller``) before reading the body; ``wait_for_room``: where a flex request waits,
        before it holds any budget."""
        return await _admit.admit(self, ctx, ident, wait_for_room)

    def shape(self, ctx: RequestContext, plan: Plan, route: Route | RouteFacts) -> None:
        _shape.shape(self, ctx, plan, route)

    async def feedback(self, ctx: RequestContext) -> None:
        await _feedback.feedback(self, ctx)

    async def abandon(self, ctx: RequestContext) -> None:
        """The request ended without feedback() (an error, a disconnect): settle its budgets.

        What it used upstream is charged if known (usage, energy); a request that never
        reached a backend only gives its reservations back. Safe to call more than once.
        """
        await _feedback.abandon(self, ctx)

    # ------------------------------------------------------------ helpers

    def nudge(self, ctx: RequestContext, plan: Plan, nudge_id: str, level: str, values: dict[str, str]) -> None:
        """Show nudge ``nudge_id`` (its policy template filled with ``values``) and count it."""
        template: Template = getattr(plan.policy.policy.messages, nudge_id)
        hint = render(template.hint, values) if template.hint else None
        ctx.nudge(Nudge(nudge_id, level, render(template.message, values), hint))
        if nudge_id not in _COUNTED_ELSEWHERE:
            self.count(nudge_id, level)

    def count(self, nudge: str, action: str) -> None:
        child = self._counters.get((nudge, action))
        if child is None:
            child = self._counters[(nudge, action)] = self.metrics.nudges.labels(nudge=nudge, action=action)
        child.inc()


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
