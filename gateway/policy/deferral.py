"""Deferral: work that is not urgent runs when the GPUs have room, in fuller batches.

A chat or completions request is served on one of three tiers (``ctx.service_tier``):

* ``default``: now, as an interactive request;
* ``flex``: OpenAI's flex processing, when the backends have room (``api/flex.py``);
* ``batch``: a line of a Batch API batch (``api/batchrun.py``).

The client chooses with ``service_tier`` (``auto``, or none, takes the policy's
``deferral.default_tier``: a team whose work is mostly offline can default to flex; any request
still opts out with ``service_tier: "default"``). OpenAI's other tiers (``scale``, ``priority``,
``fast``) are served as ``default``: a local GPU has no faster lane to sell.

Two nudges live here, both decided at admission:

* **a discount**: flex and batch usage counts ``1 - budget_discount`` of what it used against
  budgets (every unit), so deferring work stretches a budget. As with OpenAI's flex pricing, the
  discount is for accepting the wait (and the 429 when no room comes), whether or not the request
  had to wait: one that finds room goes at once. A refuse budget's token reservation is discounted
  alike; for Wh and money the budget store reserves the largest recent request, learned from the
  discounted amounts, so a key sending mostly deferred work reserves a little less for its
  interactive ones;
* **a suggestion**: a key that keeps sending work that looks offline (``suggest_after`` requests
  within ``suggest_window_s`` that do not stream and ask for at least ``suggest_max_tokens``
  tokens, on the default tier) is told that flex or the Batch API would run it in fuller batches.
  Counted per configured key in this process (a key seen by several replicas is counted by
  each); an anonymous or unconfigured caller leaves no state. Anthropic's Messages API gets no
  suggestion: it has neither flex nor these batches.

A flex request waits for room after its tier is decided and before it holds any budget.
"""

from __future__ import annotations

import time
from collections import OrderedDict, deque
from typing import TYPE_CHECKING

from gateway.context import DEFERRED_TIERS as DEFERRED
from gateway.context import RequestContext
from gateway.policy.messages import duration
from gateway.policy.plan import Plan

if TYPE_CHECKING:
    from gateway.policy.engine import PolicyEngine

_DEFERRABLE_ENDPOINTS = frozenset({"chat", "completions"})


def served_tier(asked: str, endpoint: str, default: str = "default") -> str:
    """The tier a request asking for ``asked`` is served on (``default``: the policy's, for ``auto``)."""
    if endpoint not in _DEFERRABLE_ENDPOINTS:
        return "default"
    if asked in DEFERRED:
        return asked
    return default if asked == "auto" else "default"


class DeferrableLoad:
    """When each key last sent work that looks offline; bounded in keys and in times per key."""

    def __init__(self, max_keys: int = 10_000) -> None:
        self.max_keys = max_keys
        self._seen: OrderedDict[str, deque[float]] = OrderedDict()

    def observe(self, key: str, keep: int, window_s: float, now: float | None = None) -> int:
        """Note one such request of ``key``; how many it sent within the last ``window_s``."""
        now = time.monotonic() if now is None else now
        times = self._seen.get(key)
        if times is None or times.maxlen != keep:
            times = self._seen[key] = deque(times or (), maxlen=keep)
        self._seen.move_to_end(key)
        times.append(now)
        while times and times[0] < now - window_s:
            times.popleft()
        while len(self._seen) > self.max_keys:
            self._seen.popitem(last=False)
        return len(times)


def admit(eng: PolicyEngine, ctx: RequestContext, plan: Plan) -> None:
    """Decide the request's tier and budget factor, and suggest deferral where it fits."""
    d = plan.policy.policy.deferral
    plan.service_tier = served_tier(ctx.service_tier, ctx.endpoint, d.default_tier)
    if plan.service_tier in DEFERRED:
        plan.budget_factor = 1.0 - d.budget_discount
        if ctx.service_tier == "auto":
            eng.count("deferral", "default_flex")
        return
    if not d.suggest or ctx.stream or ctx.endpoint not in _DEFERRABLE_ENDPOINTS or ctx.api == "messages":
        # (Anthropic's Messages API has no flex tier or batches of this kind to suggest)
        return
    asked = ctx.body.get("max_completion_tokens") or ctx.body.get("max_tokens")
    key = plan.identity.key_name  # a configured key: a caller the operator knows
    if not isinstance(asked, int) or asked < d.suggest_max_tokens or key is None:
        return
    count = eng.deferrable.observe(key, d.suggest_after, d.suggest_window_s)
    if count >= d.suggest_after:
        values = {"count": str(count), "window": duration(d.suggest_window_s), "max_tokens": str(d.suggest_max_tokens)}
        eng.nudge(ctx, plan, "deferrable", "info", values)
