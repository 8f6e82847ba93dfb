"""The models the gateway can route to, grouped into tiers by ability.

Facts come from the config (``models:``) first, then from what the backends report
(``/v1/models``: served names, ``max_model_len``), then from the model name itself
("Qwen3-32B" -> 32B, family qwen3; see ``ability.py`` for sizes and the default ability).
Tiers are ordered by ability (the size of a Llama-3.1-class model that answers as well);
unless the config names them, two abilities are ``small`` and ``large``, three are
``small``, ``medium``, ``large``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from gateway.config import ModelConfig
from gateway.precision import WEIGHT_BITS, precision_of
from gateway.proxy.backends import BackendPool
from gateway.routing.ability import ability_b, facts_from_name
from gateway.routing.families import FAMILY_REASONING, guess_family


@dataclass(slots=True)
class ModelInfo:
    name: str
    params_b: float | None
    family: str | None
    reasoning: str  # hybrid | opt_in | effort | always | none
    max_model_len: int | None
    active_b: float | None = None  # parameters active per token (MoE); = params_b for a dense model
    ability_b: float | None = None  # Llama-3.1-equivalent size: what the router compares tiers by
    tier: str = ""
    rank: int = 0  # position of its tier, 0 = smallest
    backends: list[str] = field(default_factory=list)
    precision: str = "bf16"  # weight precision (gateway/precision.py)

    def card(self, created: int, rating: dict | None = None) -> dict:
        """An OpenAI model card, enriched like vLLM's (max_model_len) plus our facts; ``rating``: its
        measured energy rating here (``energy/ratings.py``), None until it has one."""
        return {
            "id": self.name,
            "object": "model",
            "created": created,
            "owned_by": "vllm",
            "max_model_len": self.max_model_len,
            "params_b": self.params_b,
            "active_params_b": self.active_b,
            "ability_b": self.ability_b,
            "family": self.family,
            "tier": self.tier,
            "reasoning": self.reasoning,
            "precision": self.precision,
            "energy_rating": rating,
            "backends": list(self.backends),
        }


def _tier_names(count: int) -> list[str]:
    if count == 1:
        return ["large"]
    if count == 2:
        return ["small", "large"]
    middle = ["medium"] if count == 3 else [f"medium{i}" for i in range(1, count - 1)]
    return ["small", *middle, "large"]


class Catalog:
    def __init__(self, models: dict[str, ModelConfig], pool: BackendPool):
        self.config = models
        self.pool = pool
        self.models: dict[str, ModelInfo] = {}
        self.tiers: list[str] = []  # smallest first
        self.rebuild()
        pool.on_change(self.rebuild)

    def rebuild(self) -> None:
        """Recompute from config and every backend that ever reported its models."""
        found: dict[str, ModelInfo] = {}
        for backend in self.pool.backends:
            for served in backend.models.values():
                info = found.get(served.name)
                if info is None:
                    info = found[served.name] = self._describe(served.name, served.max_model_len, served.root)
                info.backends.append(backend.name)
                if info.max_model_len is None:
                    info.max_model_len = served.max_model_len
        self._assign_tiers(found)
        self.models = found

    def _describe(self, name: str, max_model_len: int | None, root: str | None) -> ModelInfo:
        cfg = self.config.get(name) or ModelConfig()
        facts = facts_from_name(name)
        if facts.total_b is None and root:
            facts = facts_from_name(root)
        params = cfg.params_b or facts.total_b
        # a configured size without an active count is a dense model, unless the name says MoE
        active = cfg.active_params_b or (facts.active_b if not cfg.params_b or cfg.params_b == facts.total_b else None)
        family = cfg.family or guess_family(name) or (guess_family(root) if root else None)
        reasoning = cfg.reasoning or FAMILY_REASONING.get(family or "", "none")
        return ModelInfo(
            name=name,
            params_b=params,
            family=family,
            reasoning=reasoning,
            max_model_len=cfg.max_model_len or max_model_len,
            tier=cfg.tier or "",
            active_b=active or params,
            ability_b=cfg.ability or ability_b(params, active, facts.generation),
            precision=precision_of(name, cfg.precision, root),
        )

    def _assign_tiers(self, found: dict[str, ModelInfo]) -> None:
        # A model of unknown ability sorts as large: better too big than inadequate.
        def size(m: ModelInfo) -> float:
            return m.ability_b if m.ability_b is not None else float("inf")

        named: dict[str, float] = {}
        for m in found.values():
            if m.tier:
                named[m.tier] = min(named.get(m.tier, float("inf")), size(m))
        configured = dict(named)
        sizes = sorted({size(m) for m in found.values() if not m.tier})
        auto = dict(zip(sizes, _tier_names(len(sizes))))
        for m in found.values():
            if not m.tier:
                if configured:  # join the configured tier of the nearest size (unknown size: the largest)
                    m.tier = min(
                        configured,
                        key=lambda t: abs(configured[t] - size(m)) if size(m) != float("inf") else -configured[t],
                    )
                else:
                    m.tier = auto[size(m)]
                named[m.tier] = min(named.get(m.tier, float("inf")), size(m))
        self.tiers = sorted(named, key=lambda t: named[t])
        for m in found.values():
            m.rank = self.tiers.index(m.tier)

    def get(self, name: str) -> ModelInfo | None:
        return self.models.get(name)

    def params_b(self, name: str) -> float | None:
        info = self.models.get(name)
        return info.params_b if info else None

    def weight_bits(self, name: str) -> float:
        """Bits per weight of ``name`` as deployed (a model not served here: from its name)."""
        info = self.models.get(name)
        cfg = self.config.get(name)
        return WEIGHT_BITS[info.precision if info else precision_of(name, cfg.precision if cfg else None)]

    def largest(self) -> ModelInfo | None:
        if not self.models:
            return None
        return max(self.models.values(), key=lambda m: (m.rank, m.ability_b or 0.0))
