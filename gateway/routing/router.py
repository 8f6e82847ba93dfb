"""Pick the model (and the backends) a request goes to.

For ``auto`` the router sends each request to the smallest tier that will answer it about as
well as the top tier would, for the energy it saves (the learned model in ``adequacy.py``:
quality a tier gives up, from the request's size sensitivity and the tiers' abilities,
weighed against the energy it saves), among the models that can hold the request
(prompt + max_tokens within ``max_model_len``) and have a healthy backend. A saturated tier
(every backend's queue at ``saturated_waiting``) spills up a tier when the config says so. An
explicit model name is honoured; the router still works out what it would have picked, so policy
can nudge toward it.

The router only decides; it sends nothing.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from fnmatch import fnmatchcase

from gateway.config import RoutingConfig
from gateway.context import DEFERRED_TIERS, RequestContext
from gateway.errors import GatewayError
from gateway.proxy.backends import Backend, BackendPool
from gateway.routing.adequacy import AdequacyModel, RouteScores, Tier
from gateway.routing.catalog import Catalog, ModelInfo
from gateway.routing.features import Features, Prompt, from_request, request_prompt, task_class
from gateway.routing.quality import QualityBudget

# A prompt estimated within this share of a model's context is not sent to it: the estimate
# (characters / 4) can be off, and an answer needs room.
_CONTEXT_MARGIN = 0.9
# Tier names a client may ask for even where the catalog has fewer tiers (the nearest end is taken)
_STANDARD_TIERS = frozenset({"xs", "small", "medium", "large"})


@dataclass(slots=True)
class Route:
    model: ModelInfo
    backends: list[Backend]
    reason: str
    adequacy: float | None = None  # predicted adequacy of the routed tier
    recommended: ModelInfo | None = None  # what auto routing picks for this request
    recommended_adequacy: float | None = None
    counterfactual: ModelInfo | None = None  # what it would have run on without right-sizing
    friction_applied: bool = False  # a named large model was replaced by the router's pick

    @property
    def tier(self) -> str:
        return self.model.tier


def _decided(ctx: RequestContext, route: Route) -> Route:
    """Write the routing stage's fields of the context (a failover routes again and rewrites them)."""
    ctx.model = route.model.name
    ctx.route_reason = route.reason
    ctx.adequacy = route.adequacy
    ctx.counterfactual_model = route.counterfactual.name if route.counterfactual else None
    return route


def estimate_prompt_tokens(text: str) -> int:
    # ~4 characters per token for English; the exact count comes back in usage.
    return len(text) // 4 + 8


class Router:
    def __init__(
        self,
        catalog: Catalog,
        pool: BackendPool,
        config: RoutingConfig,
        adequacy: AdequacyModel | None = None,
        token_price: Callable[[str], float | None] | None = None,
    ):
        self.catalog = catalog
        self.pool = pool
        self.config = config
        self.adequacy = adequacy
        # Joules per generated token of a model here, as measured (EnergyService.expected_j_per_token):
        # of two equally able models in a tier (a model and its FP8 deployment), the cheaper goes first.
        self.token_price = token_price
        rule = config.rule or (adequacy.default_rule if adequacy is not None else "adequacy")
        self.energy_rule = rule == "energy"
        # The price of quality: fixed by a configured threshold, else held by the quality budget
        # so that the average predicted loss of what 'auto' routes stays at 1 - quality.
        quality = config.quality if config.quality is not None else (adequacy.default_quality if adequacy else 0.95)
        if config.threshold is not None:
            price = 1.0 / max(1e-6, 1.0 - config.threshold)
        else:
            price = adequacy.default_price if adequacy is not None else 10.0
        window = config.window if config.window is not None else (adequacy.default_window if adequacy else 200)
        self.budget = QualityBudget(1.0 - quality, price, window, adaptive=config.threshold is None)
        # Per set of fitting models: its tiers (smallest first), what the model needs to know of
        # each tier (its most able model's ability and size) and the largest model. The set hardly
        # ever changes (only a prompt near a context limit drops a model), so this is worked out
        # once per catalog rather than on every request.
        self._plans: dict[tuple[str, ...], tuple[list[str], list[Tier], ModelInfo]] = {}
        self._plans_of: object = None  # the catalog.models dict the cached plans belong to

    def _plan(self, fits: list[ModelInfo]) -> tuple[list[str], list[Tier], ModelInfo]:
        models = self.catalog.models
        if models is not self._plans_of:  # the catalog was rebuilt: new models, maybe new tiers
            self._plans, self._plans_of = {}, models
        key = tuple(m.name for m in fits)
        plan = self._plans.get(key)
        if plan is None:
            tiers = sorted({m.tier for m in fits}, key=self.catalog.tiers.index)
            specs = []
            for t in tiers:
                best = max((m for m in fits if m.tier == t), key=lambda m: m.ability_b or 1e3)
                specs.append(Tier(best.ability_b or 1e3, best.params_b, best.active_b))  # unknown: treat as huge
            largest = max(fits, key=lambda m: (m.rank, m.ability_b or 0))
            plan = self._plans[key] = (tiers, specs, largest)
        return plan

    # ------------------------------------------------------------------ resolution

    def resolve(self, requested: str) -> tuple[str, str]:
        """('auto', '') | ('tier', NAME) | ('model', NAME) for a client's model string; a hosted
        model's name nobody serves here is ('auto', NAME)."""
        target = self.config.aliases.get(requested, requested)
        if target == "auto":
            return "auto", ""
        if target.startswith("tier:"):
            tier = target[5:]
            if tier not in self.catalog.tiers:
                # the standard names ('small', 'medium', 'large') on a deployment with fewer tiers:
                # take the nearest end. Any other name is unknown (404), never a new label.
                tiers = self.catalog.tiers
                if not tiers or tier not in _STANDARD_TIERS:
                    raise _unknown(requested)
                tier = tiers[0] if tier in ("small", "xs") else tiers[-1]
            return "tier", tier
        if self.catalog.get(target) is None:
            if self._hosted(target):
                return "auto", target
            raise _unknown(requested)
        return "model", target

    def _hosted(self, name: str) -> bool:
        """A hosted model's name (gpt-4o, claude-...) that tools hard-code: routed as 'auto'."""
        return any(fnmatchcase(name.lower(), pattern) for pattern in self.config.hosted_names)

    # ------------------------------------------------------------------ decision

    def route(
        self,
        ctx: RequestContext,
        requested: str,
        *,
        max_tier: str | None = None,
        reasoning: bool = False,
        friction_tiers: frozenset[str] = frozenset(),
        avoid_always_thinking: bool = False,
        unreachable: tuple[str, ...] = (),
    ) -> Route:
        """Decide where ``requested`` goes.

        ``max_tier``: route no higher (a budget downgrade). ``friction_tiers``: a model named
        explicitly in one of these tiers is replaced by the router's own pick (the policy's
        friction, when the client sent no override). ``avoid_always_thinking``: without
        reasoning, move off a model that always thinks to a similar-size one that need not.
        ``unreachable``: the models this request was routed to before, whose backends all failed
        before answering (a failover routes again, ``fallback``); the reason says so.
        """
        kind, name = self.resolve(requested)
        body = ctx.body
        prompt, ctx.prompt_tokens_est, need, fits = self._fitting(body)
        ceiling = self.catalog.tiers.index(max_tier) if max_tier in self.catalog.tiers else None
        if not fits:
            biggest = max((m.max_model_len or 0) for m in self.catalog.models.values()) if self.catalog.models else 0
            raise GatewayError(
                400,
                f"This request needs about {need} tokens (prompt and max_tokens), more than any served model's "
                f"maximum context length ({biggest}). Please reduce the length of the messages or max_tokens.",
                param="messages",
                code="context_length_exceeded",
            )
        tiers, _, largest = self._plan(fits)
        features = from_request(body, reasoning=reasoning, prompt=prompt)
        ctx.task_class = task_class(features)
        rs = self._predict(features, fits)
        probs = dict(zip(tiers, rs.adequacy))
        recommended, rec_p, why = self._recommend(fits, tiers, rs, ceiling, reasoning)
        friction = False

        if kind == "auto":
            model, p, reason = recommended, rec_p, why
            if name:  # a hosted model's name
                reason = f"{name} is not served here; routed as auto: {why}"
            counterfactual = largest
            if ceiling is None:  # a budget's ceiling is the policy's choice, not the router's to make up for
                self.budget.record(rs.losses[tiers.index(model.tier)])
        elif kind == "tier":
            in_tier = [m for m in fits if m.tier == name and self.pool.serving(m.name)]
            if ceiling is not None and self.catalog.tiers.index(name) > ceiling:
                model, p, reason = recommended, rec_p, f"tier {name} is over budget; {why}"
            elif not in_tier:
                near = self._nearest(name, [m for m in fits if self.pool.serving(m.name)], reasoning)
                own = [m for m in fits if m.tier == name]
                if self.config.tier_fallback == "none" and own:  # stay: the proxy answers 503
                    model, p, reason = own[0], probs.get(name), f"tier {name} asked for; no healthy {name} model"
                elif near is None:  # nothing healthy in any tier: the router's pick, the proxy answers 503
                    model, p, reason = recommended, rec_p, f"no healthy {name} model fits; {why}"
                else:
                    model, p, reason = near, probs.get(near.tier), self._nearest_reason(name, near)
            else:
                model = self._pick(in_tier, reasoning)
                p, reason = probs.get(model.tier), f"tier {name} asked for"
            counterfactual = model
        else:
            model = self.catalog.get(name)  # type: ignore[assignment]
            if model not in fits:
                raise GatewayError(
                    400,
                    f"This model's maximum context length is {model.max_model_len} tokens. However, your request "
                    f"needs about {need} tokens. Please reduce the length of the messages or max_tokens.",
                    param="messages",
                    code="context_length_exceeded",
                )
            p, reason, counterfactual = probs.get(model.tier), "model asked for by name", model
            if ceiling is not None and model.rank > ceiling:
                model, p, reason = recommended, rec_p, f"budget limits to tier {max_tier}; {why}"
            elif model.tier in friction_tiers and recommended.rank < model.rank:
                model, p, friction = recommended, rec_p, True
                reason = f"friction: {name} needs the override header; {why}"
        if avoid_always_thinking and not reasoning and model.reasoning == "always":
            quiet = self._similar_quiet(model, fits)
            if quiet is not None:
                reason = f"{model.name} always thinks; {quiet.name} is a similar size and need not"
                model, p = quiet, probs.get(quiet.tier)
        if unreachable:
            model, p, reason, counterfactual = self._fallback(
                kind, name, requested, unreachable, fits, (model, p, reason, counterfactual), (recommended, rec_p)
            )
            reason = f"{', '.join(unreachable)} unreachable; {reason}"
        route = Route(model, self._backends(model, ctx), reason, p, recommended, rec_p, counterfactual, friction)
        return _decided(ctx, route)

    def _fallback(
        self, kind: str, name: str, requested: str, failed: tuple[str, ...], fits: list[ModelInfo],
        routed: tuple[ModelInfo, float | None, str, ModelInfo], recommended: tuple[ModelInfo, float | None],
    ) -> tuple[ModelInfo, float | None, str, ModelInfo]:  # fmt: skip
        """Where a request goes once every backend of the ``failed`` models could not answer it:
        (model, adequacy, reason, counterfactual).

        'auto' routes as ever (``routed``: the router's pick among what is up). A tier goes to the
        nearest healthy tier (``routing.tier_fallback``); a named model only to what
        ``routing.fallbacks`` lists for it, in order (model names, 'tier:NAME' or 'auto'). With
        nowhere to go, ``routed`` comes back and the caller gives up."""
        if kind == "auto":
            return routed
        up = [m for m in fits if m.name not in failed and self.pool.serving(m.name)]
        if kind == "tier":
            chosen = self._nearest(name, up, routed[0].reasoning != "none")
            if chosen is None:  # nowhere (or tier_fallback: none): the failed model, and the caller gives up
                gone = self.catalog.get(failed[-1])
                return routed if gone is None else (gone, None, routed[2], gone)
            return chosen, None, self._nearest_reason(name, chosen), chosen
        for entry in self.config.fallbacks.get(requested) or self.config.fallbacks.get(name) or ():
            target_kind, target = self.resolve(entry)
            if target_kind == "auto":
                pick, pick_p = recommended
                if pick.name not in failed and self.pool.serving(pick.name):
                    return pick, pick_p, f"fallback for {name}: auto", pick
                continue
            listed = [m for m in up if (m.tier == target if target_kind == "tier" else m.name == target)]
            if listed:
                return listed[0], None, f"fallback for {name}: {entry}", listed[0]
        return routed

    def _nearest(self, tier: str, candidates: list[ModelInfo], reasoning: bool) -> ModelInfo | None:
        """The model of the healthy tier nearest to ``tier`` in the order ``routing.tier_fallback``
        names (nearest: the larger of two as near, quality first; up or down: that way first)."""
        order = self.config.tier_fallback
        if order == "none" or not candidates:
            return None
        origin = self.catalog.tiers.index(tier)

        def distance(m: ModelInfo) -> tuple[int, int]:
            d = m.rank - origin
            if order == "up":
                return int(d < 0), abs(d)
            if order == "down":
                return int(d > 0), abs(d)
            return abs(d), -d

        best = min(distance(m) for m in candidates)
        return self._pick([m for m in candidates if distance(m) == best], reasoning)

    def _nearest_reason(self, tier: str, chosen: ModelInfo) -> str:
        way = self.config.tier_fallback
        return f"no healthy {tier} model; tier {chosen.tier} is the nearest" + ("" if way == "nearest" else f" {way}")

    def _similar_quiet(self, model: ModelInfo, fits: list[ModelInfo]) -> ModelInfo | None:
        """A healthy model that need not think, within 2.5x of ``model``'s size, nearest first."""
        size = model.params_b or 0.0  # thinking or not is about the same size of model, not ability
        candidates = [
            m
            for m in fits
            if m.reasoning != "always"
            and self.pool.serving(m.name)
            and (not size or not m.params_b or 1 / 2.5 <= m.params_b / size <= 2.5)
        ]
        if not candidates:
            return None
        return min(candidates, key=lambda m: abs((m.params_b or size) - size))

    def route_embedding(self, ctx: RequestContext, requested: str) -> Route:
        """Embeddings go to the model named, wherever it is served; nothing to right-size."""
        kind, name = self.resolve(requested) if requested != "auto" else ("auto", "")
        if kind != "model":
            raise GatewayError(400, "Embeddings need a model name in 'model'.", param="model")
        model = self.catalog.get(name)
        assert model is not None
        return _decided(ctx, Route(model, self._backends(model, ctx), "model asked for by name", counterfactual=model))

    def scores(self, body: dict, reasoning: bool = False) -> RouteScores | None:
        """What the model says of each tier for ``body``, among every model that can hold it
        (tiers in ``self._plan``'s order, smallest first). For tools and evaluation; no side effects."""
        prompt, _, _, fits = self._fitting(body)
        return self._predict(from_request(body, reasoning=reasoning, prompt=prompt), fits) if fits else None

    def _fitting(self, body: dict) -> tuple[Prompt, int, int, list[ModelInfo]]:
        """The request as the router reads it, its estimated prompt tokens, the tokens it needs with
        max_tokens, and the models whose context can hold it."""
        prompt = request_prompt(body)
        tokens = estimate_prompt_tokens(prompt.text)
        max_tokens = body.get("max_completion_tokens") or body.get("max_tokens") or 0
        need = tokens + (max_tokens if isinstance(max_tokens, int) else 0)
        return prompt, tokens, need, [m for m in self.catalog.models.values() if _fits(m, tokens, need)]

    def _predict(self, features: Features, fits: list[ModelInfo]) -> RouteScores:
        """Per tier of the fitting models: predicted loss against the largest, and energy saving."""
        tiers, specs, _ = self._plan(fits)
        if self.adequacy is None or len(tiers) == 1:
            zeros = [0.0] * len(tiers)
            return RouteScores(zeros, zeros, [1.0] * len(tiers), 0.0, 0.0, 1.0)
        return self.adequacy.route_scores(features, specs, use_length=self.energy_rule)

    def _recommend(
        self, fits: list[ModelInfo], tiers: list[str], rs: RouteScores, ceiling: int | None, reasoning: bool
    ) -> tuple[ModelInfo, float | None, str]:
        """The tier with the best trade of energy saved for quality lost at the budget's price;
        up from there past dead or (with spill: up) saturated tiers."""
        allowed = [i for i, t in enumerate(tiers) if ceiling is None or self.catalog.tiers.index(t) <= ceiling] or [0]
        price = self.budget.price
        best = max(allowed, key=lambda i: (rs.savings[i] - price * rs.losses[i], i))
        top = allowed[-1]
        spilled = False
        for i in [i for i in allowed if i >= best]:
            tier = tiers[i]
            healthy = [m for m in fits if m.tier == tier and self.pool.serving(m.name)]
            if not healthy:
                continue  # a dead tier: spill to the next one up
            if i != top and self.config.spill == "up" and all(self._saturated(m) for m in healthy):
                spilled = True
                continue
            model = self._pick(healthy, reasoning)
            if i == len(tiers) - 1 or rs.losses[i] <= 0.0:
                below = rs.adequacy[allowed[-2]] if len(allowed) > 1 else 1.0
                reason = (
                    (
                        f"tier {tier}: no smaller tier's energy saving is worth its predicted loss (adequacy of the "
                        f"next tier down {below:.2f} at quality price {price:.3g})"
                    )
                    if i == best
                    else f"tier {tier}"
                )
            else:
                reason = (
                    f"tier {tier}: predicted adequacy {rs.adequacy[i]:.2f} for {rs.savings[i]:.0%} less energy "
                    f"(quality price {price:.3g})"
                )
            if spilled:
                reason += " (smaller tier saturated)"
            elif i != best:
                reason += " (smaller tier down)"
            if ceiling is not None and len(allowed) < len(tiers):
                reason += " (budget ceiling)"
            return model, rs.adequacy[i], reason
        # Nothing healthy anywhere: route to the largest fitting model, the proxy answers 503.
        model = max(fits, key=lambda m: (m.rank, m.ability_b or 0))
        return model, rs.adequacy[tiers.index(model.tier)], "no healthy backend"

    def _pick(self, models: list[ModelInfo], reasoning: bool) -> ModelInfo:
        """Within a tier: the reasoning fit (``_reasoning_fits``), then of its most able models that
        are not saturated the cheapest per token as measured here (a quantized deployment of the
        same model, unless the config gives it less ability); ties keep the catalog's order."""
        if len(models) == 1:
            return models[0]
        fit = _reasoning_fits(models, reasoning)
        if self.token_price is None or len(fit) == 1:
            return fit[0]
        top = max(m.ability_b or 0.0 for m in fit)
        able = [m for m in fit if (m.ability_b or 0.0) >= top * 0.999]
        able = [m for m in able if not self._saturated(m)] or able  # a saturated one only if all are
        prices = {m.name: self.token_price(m.name) for m in able}
        return min(able, key=lambda m: (prices[m.name] is None, prices[m.name] or 0.0))

    def _saturated(self, model: ModelInfo) -> bool:
        return all(b.waiting >= self.config.saturated_waiting for b in self.pool.serving(model.name))

    def _backends(self, model: ModelInfo, ctx: RequestContext) -> list[Backend]:
        return self.pool.serving(model.name, deferred=ctx.service_tier in DEFERRED_TIERS)


def _fits(model: ModelInfo, prompt_tokens: int, need: int) -> bool:
    if model.max_model_len is None:
        return True
    return prompt_tokens < model.max_model_len * _CONTEXT_MARGIN and need <= model.max_model_len


def _reasoning_fits(models: list[ModelInfo], reasoning: bool) -> list[ModelInfo]:
    """Within a tier: without reasoning avoid always-thinking models; with it prefer thinkers."""
    if reasoning:
        thinkers = [m for m in models if m.reasoning != "none"]
        return thinkers or models
    quiet = [m for m in models if m.reasoning != "always"]
    return quiet or models


def _unknown(name: str) -> GatewayError:
    return GatewayError(404, f"The model `{name}` does not exist.", param="model", code="model_not_found")
