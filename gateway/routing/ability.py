"""What a model's name says about its size and ability, for when the config does not say.

The router compares tiers on one axis, **ability**: the size in billions of a Llama-3.1-class
dense model that answers about as well (``ability_b``; the router works with ``ln``). A tier
that is twice as able gives up ``ln 2`` less than one half as able, whatever the sizes.

Default, from size and generation (``models: {NAME: {ability: ...}}`` in the config overrides it):

* **effective size**: the parameter count for a dense model; for a mixture of experts the
  geometric mean of total and active parameters (Mixtral-8x7B: sqrt(46.7 * 12.9) = 24.5), a
  common rule of thumb for MoE quality;
* times a **generation factor**, 1.0 for Llama-3.1 and every family we have no data on. The
  other factors come from one measurement, the MMLU-Pro abilities of instruct models in
  ``../shared/routing-data`` (an item-response fit over 31 models, Llama-3.1 8B and 70B
  Instruct as anchors; see ``bench/train_router.py``): an older generation of the same size
  answers like a smaller Llama-3.1. They are rough (exam questions, not chat) and only matter
  when tiers mix generations; set ``ability`` for your models when you know better.

Sizes: ``params_b`` from the config, else from the name ("Qwen3-32B" -> 32; "Qwen3-30B-A3B" ->
30 total, 3 active; "Mixtral-8x7B" -> 46.7 total, 12.9 active from the table below).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

__all__ = ["ModelFacts", "facts_from_name", "ability_b"]

_SIZE = re.compile(r"(?<![\w.])(\d+(?:\.\d+)?)\s*[bB](?![a-zA-Z])")
_EXPERTS = re.compile(r"(\d+)x(\d+(?:\.\d+)?)[bB]", re.IGNORECASE)
_ACTIVE = re.compile(r"-A(\d+(?:\.\d+)?)B", re.IGNORECASE)

# Mixtures of experts whose names do not give both sizes: (total, active) in billions.
_MOE: tuple[tuple[str, float, float], ...] = (
    ("mixtral-8x7b", 46.7, 12.9),
    ("mixtral-8x22b", 141.0, 39.0),
    ("deepseek-v3", 671.0, 37.0),
    ("deepseek-r1", 671.0, 37.0),
    ("deepseek-v2-lite", 15.7, 2.4),
    ("deepseek-v2", 236.0, 21.0),
    ("deepseek-coder-v2-lite", 15.7, 2.4),
    ("deepseek-coder-v2", 236.0, 21.0),
    ("gpt-oss-20b", 21.0, 3.6),
    ("gpt-oss-120b", 117.0, 5.1),
    ("llama-4-scout", 109.0, 17.0),
    ("llama-4-maverick", 400.0, 17.0),
    ("jamba-1.5-large", 398.0, 94.0),
    ("jamba-1.5-mini", 52.0, 12.0),
)

# Dense models whose names give no size.
_DENSE: tuple[tuple[str, float], ...] = (
    ("phi-3-mini", 3.8),
    ("phi-3.5-mini", 3.8),
    ("phi-3-small", 7.4),
    ("phi-3-medium", 14.0),
    ("phi-4-mini", 3.8),
    ("phi-4", 14.7),
)

# Generation factors (see the module docstring): name pattern -> factor. First match wins.
# MMLU-Pro instruct abilities in Llama-3.1-equivalent billions / effective size:
# Mistral-7B-Instruct-v0.1 0.6/7.2, v0.2 1.3/7.2, Mixtral-8x7B-Instruct 6.2/24.5,
# Qwen1.5-7B-Chat 1.0/7.7, Qwen1.5-72B-Chat 11.6/72, Phi-3-mini 6.8/3.8, mathstral 5.7/7.2.
_GENERATION: tuple[tuple[str, float], ...] = (
    ("mistral-7b-instruct-v0.1", 0.08),
    ("mistral-7b-instruct-v0.2", 0.18),
    ("mixtral-8x7b", 0.25),
    ("qwen1.5", 0.15),
    ("phi-3", 1.8),
    ("mathstral", 0.8),
)


@dataclass(frozen=True, slots=True)
class ModelFacts:
    total_b: float | None  # parameters, billions
    active_b: float | None  # active per token (MoE); = total for dense
    generation: float  # factor against Llama-3.1 of the same effective size

    @property
    def effective_b(self) -> float | None:
        if self.total_b is None:
            return None
        active = self.active_b or self.total_b
        return math.sqrt(self.total_b * active)


def facts_from_name(name: str) -> ModelFacts:
    low = name.lower()
    total = active = None
    for needle, t, a in _MOE:
        if needle in low:
            total, active = t, a
            break
    if total is None:
        m = _EXPERTS.search(name)
        if m:  # NxMB without a table entry: experts share attention, ~0.83 of N*M in Mixtral
            total = round(int(m.group(1)) * float(m.group(2)) * 0.83, 1)
            active = round(float(m.group(2)) * 1.8, 1)
    if total is None:
        for needle, t in _DENSE:
            if needle in low:
                total = active = t
                break
    if total is None:
        m = _SIZE.search(name)
        total = float(m.group(1)) if m else None
        m = _ACTIVE.search(name)
        active = float(m.group(1)) if m and total else total
    generation = 1.0
    for needle, factor in _GENERATION:
        if needle in low:
            generation = factor
            break
    return ModelFacts(total, active, generation)


def ability_b(params_b: float | None, active_b: float | None, generation: float) -> float | None:
    """Llama-3.1-equivalent size in billions, or None when the size is unknown."""
    if not params_b:
        return None
    return math.sqrt(params_b * (active_b or params_b)) * generation
