"""Pick the model (and the backends) a request goes to.

For ``auto`` the router sends each request to the smallest tier that will answer it as
well as the top tier would, as predicted by the learned adequacy model, among the models
that can hold the request (prompt + max_tokens within ``max_model_len``) and have a
healthy backend. A saturated tier (every backend's queue at ``saturated_waiting``) spills
up a tier when the config says so. An explicit model name is honoured; the router still
works out what it would have picked, so policy can nudge toward it.

The router only decides; it sends nothing.
"""

from __future__ import annotations

from dataclasses import dataclass

from gateway.config import RoutingConfig
from gateway.context import RequestContext
from gateway.errors import GatewayError
from gateway.proxy.backends import Backend, BackendPool
from gateway.routing.adequacy import AdequacyModel
from gateway.routing.catalog import Catalog, ModelInfo
from gateway.routing.features import from_request, request_text

# A prompt estimated within this share of a model's context is not sent to it: the estimate
# (characters / 4) can be off, and an answer needs room.
_CONTEXT_MARGIN = 0.9


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


def estimate_prompt_tokens(text: str) -> int:
    # ~4 characters per token for English; the exact count comes back in usage.
    return len(text) // 4 + 8


class Router:
    def __init__(
        self, catalog: Catalog, pool: BackendPool, config: RoutingConfig, adequacy: AdequacyModel | None = None
    ):
        self.catalog = catalog
        self.pool = pool
        self.config = config
        self.adequacy = adequacy
        self.energy_rule = config.rule == "energy"
        if self.energy_rule:
            default = adequacy.energy_threshold if adequacy is not None else 0.5
            self.threshold = config.energy_threshold if config.energy_threshold is not None else default
        else:
            default = adequacy.default_threshold if adequacy is not None else 0.5
            self.threshold = config.threshold if config.threshold is not None else default
        # Per set of fitting models: its tiers (smallest first), each tier's size and the largest
        # model. The set hardly ever changes (only a prompt near a context limit drops a model),
        # so this is worked out once per catalog rather than on every request.
        self._plans: dict[tuple[str, ...], tuple[list[str], list[float], ModelInfo]] = {}
        self._plans_of: object = None  # the catalog.models dict the cached plans belong to

    def _plan(self, fits: list[ModelInfo]) -> tuple[list[str], list[float], ModelInfo]:
        models = self.catalog.models
        if models is not self._plans_of:  # the catalog was rebuilt: new models, maybe new tiers
            self._plans, self._plans_of = {}, models
        key = tuple(m.name for m in fits)
        plan = self._plans.get(key)
        if plan is None:
            tiers = sorted({m.tier for m in fits}, key=self.catalog.tiers.index)
            sizes = [max(m.params_b or 0.0 for m in fits if m.tier == t) or 1e3 for t in tiers]
            largest = max(fits, key=lambda m: (m.rank, m.params_b or 0))
            plan = self._plans[key] = (tiers, sizes, largest)
        return plan

    # ------------------------------------------------------------------ resolution

    def resolve(self, requested: str) -> tuple[str, str]:
        """('auto', '') | ('tier', NAME) | ('model', NAME) for a client's model string."""
        target = self.config.aliases.get(requested, requested)
        if target == "auto":
            return "auto", ""
        if target.startswith("tier:"):
            tier = target[5:]
            if tier not in self.catalog.tiers:
                # 'small'/'large' aliases on a one-tier deployment: take the nearest end
                tiers = self.catalog.tiers
                if not tiers:
                    raise _unknown(requested)
                tier = tiers[0] if tier in ("small", "xs") else tiers[-1]
            return "tier", tier
        if self.catalog.get(target) is None:
            raise _unknown(requested)
        return "model", target

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
    ) -> Route:
        """Decide where ``requested`` goes.

        ``max_tier``: route no higher (a budget downgrade). ``friction_tiers``: a model named
        explicitly in one of these tiers is replaced by the router's own pick (the policy's
        friction, when the client sent no override). ``avoid_always_thinking``: without
        reasoning, move off a model that always thinks to a similar-size one that need not.
        """
        kind, name = self.resolve(requested)
        body = ctx.body
        text = request_text(body)
        max_tokens = body.get("max_completion_tokens") or body.get("max_tokens") or 0
        ctx.prompt_tokens_est = estimate_prompt_tokens(text)
        need = ctx.prompt_tokens_est + (max_tokens if isinstance(max_tokens, int) else 0)
        ceiling = self.catalog.tiers.index(max_tier) if max_tier in self.catalog.tiers else None

        fits = [m for m in self.catalog.models.values() if _fits(m, ctx.prompt_tokens_est, need)]
        if not fits:
            biggest = max((m.max_model_len or 0) for m in self.catalog.models.values()) if self.catalog.models else 0
            raise GatewayError(
                400,
                f"This request needs about {need} tokens (prompt and max_tokens), more than any served model's "
                f"maximum context length ({biggest}). Please reduce the length of the messages or max_tokens.",
                param="messages",
                code="context_length_exceeded",
            )
        probs, scores = self._predict(body, text, reasoning, fits)
        recommended, rec_p, why = self._smallest_adequate(fits, probs, scores, ceiling, reasoning)
        largest = self._plan(fits)[2]
        friction = False

        if kind == "auto":
            model, p, reason = recommended, rec_p, why
            counterfactual = largest
        elif kind == "tier":
            in_tier = [m for m in fits if m.tier == name and self.pool.serving(m.name)]
            if ceiling is not None and self.catalog.tiers.index(name) > ceiling:
                model, p, reason = recommended, rec_p, f"tier {name} is over budget; {why}"
            elif not in_tier:
                model, p, reason = recommended, rec_p, f"no healthy {name} model fits; {why}"
            else:
                model = _prefer_reasoning_fit(in_tier, reasoning)
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
        return Route(model, self._backends(model), reason, p, recommended, rec_p, counterfactual, friction)

    def _similar_quiet(self, model: ModelInfo, fits: list[ModelInfo]) -> ModelInfo | None:
        """A healthy model that need not think, within 2.5x of ``model``'s size, nearest first."""
        size = model.params_b or 0.0
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
        return Route(model, self._backends(model), "model asked for by name", counterfactual=model)

    def _predict(
        self, body: dict, text: str, reasoning: bool, fits: list[ModelInfo]
    ) -> tuple[dict[str, float], dict[str, float]]:
        """Per tier: predicted adequacy (vs the largest fitting tier), and the score the
        threshold is compared with (the adequacy itself, or the energy-weighted score)."""
        tiers, sizes, _ = self._plan(fits)
        if self.adequacy is None or len(tiers) == 1:
            ones = {t: 1.0 for t in tiers}
            return ones, ones
        features = from_request(body, reasoning=reasoning, text=text)
        if not self.energy_rule:
            probs = dict(zip(tiers, self.adequacy.predict(features, sizes)))
            return probs, probs
        rs = self.adequacy.route_scores(features, sizes)
        return dict(zip(tiers, rs.adequacy)), dict(zip(tiers, rs.scores))

    def _smallest_adequate(
        self,
        fits: list[ModelInfo],
        probs: dict[str, float],
        scores: dict[str, float],
        ceiling: int | None,
        reasoning: bool,
    ) -> tuple[ModelInfo, float | None, str]:
        tiers = self._plan(fits)[0]
        allowed = tiers if ceiling is None else [t for t in tiers if self.catalog.tiers.index(t) <= ceiling] or tiers[:1]
        measure = "energy-weighted adequacy" if self.energy_rule else "predicted adequacy"
        spilled = False
        for i, tier in enumerate(allowed):
            score = scores.get(tier, 1.0)
            last = i == len(allowed) - 1
            if score < self.threshold and not last:
                continue
            healthy = [m for m in fits if m.tier == tier and self.pool.serving(m.name)]
            if not healthy:
                continue  # a dead tier: spill to the next one up
            if not last and self.config.spill == "up" and all(self._saturated(m) for m in healthy):
                spilled = True
                continue
            model = _prefer_reasoning_fit(healthy, reasoning)
            reason = f"tier {tier}: {measure} {score:.2f} >= {self.threshold:.2f}"
            if last and score < self.threshold:
                reason = f"tier {tier}: no smaller tier clears {measure} {self.threshold:.2f}"
            if spilled:
                reason += " (smaller tier saturated)"
            if ceiling is not None and len(allowed) < len(tiers):
                reason += " (budget ceiling)"
            return model, probs.get(tier), reason
        # Nothing healthy anywhere: route to the largest fitting model, the proxy answers 503.
        model = max(fits, key=lambda m: (m.rank, m.params_b or 0))
        return model, probs.get(model.tier), "no healthy backend"

    def _saturated(self, model: ModelInfo) -> bool:
        return all(b.waiting >= self.config.saturated_waiting for b in self.pool.serving(model.name))

    def _backends(self, model: ModelInfo) -> list[Backend]:
        return self.pool.serving(model.name)


def _fits(model: ModelInfo, prompt_tokens: int, need: int) -> bool:
    if model.max_model_len is None:
        return True
    return prompt_tokens < model.max_model_len * _CONTEXT_MARGIN and need <= model.max_model_len


def _prefer_reasoning_fit(models: list[ModelInfo], reasoning: bool) -> ModelInfo:
    """Within a tier: without reasoning avoid always-thinking models; with it prefer thinkers."""
    if len(models) == 1:
        return models[0]
    if reasoning:
        thinkers = [m for m in models if m.reasoning != "none"]
        return (thinkers or models)[0]
    quiet = [m for m in models if m.reasoning != "always"]
    return (quiet or models)[0]


def _unknown(name: str) -> GatewayError:
    return GatewayError(404, f"The model `{name}` does not exist.", param="model", code="model_not_found")
