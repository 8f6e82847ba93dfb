"""What switching reasoning off saved: learned on this deployment, from the requests that did reason.

When the policy switches off thinking that a model would have done by default
(``ctx.reasoning_avoided``), the request is credited the reasoning tokens it would have
generated, priced on the model that answered (``EnergyService._saved``). How many is learned
per model and per kind of request (``ctx.task_class`` from routing: ``trivial``, ``chat``,
``hard``) from the requests that reasoned on that model here, their reasoning tokens counted
exactly (``usage.completion_tokens_details.reasoning_tokens``):

    expected = (PRIOR_WEIGHT * prior + sum of the last WINDOW observed) / (PRIOR_WEIGHT + their count)
    credited = min(expected, max_tokens - completion_tokens)

so a deployment with no opted-in traffic credits the prior, and one with traffic moves to what
reasoning really costs there. The credit never goes beyond the request's own ``max_tokens``: a
reasoning answer could not have been longer than the request allowed. Every figure it produces
is an estimate of what did not happen, and is labelled so (``gateway_energy_saved_joules``'s
help text, the dashboard's description).

Priors, deliberately low (an overstated saving is worse than an understated one), from ML.ENERGY
v3's measured output lengths (``../shared/mlenergy_v3_llm_configs.csv``):

* ``hard``: 1,500 tokens. GPQA answers with thinking: Qwen3 8B-32B 7,000-8,300 output tokens,
  Nemotron-Nano-v2 5,000-5,300, gpt-oss at its default effort 1,750-2,100 (the low end).
* ``chat``: 300 tokens. lm-arena-chat: Nemotron-Nano-v2, which thinks by default, writes
  1,080-1,340 tokens per answer against ~640 for Qwen3-8B without thinking, so 440-700 of
  reasoning; the prior takes under the low end.
* ``trivial``: 50 tokens. No published figure; a greeting or a bare sum needs little thought.
"""

from __future__ import annotations

import threading
from collections import deque

PRIORS: dict[str, float] = {"trivial": 50.0, "chat": 300.0, "hard": 1500.0}
PRIOR_WEIGHT = 10.0  # the prior counts as this many observed requests
WINDOW = 200  # observations kept per (model, class)


class ReasoningLengths:
    """Reasoning tokens per (model, task class), learned online; thread-safe (sampler threads)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._seen: dict[tuple[str, str], deque[int]] = {}
        self._sums: dict[tuple[str, str], int] = {}

    def observe(self, model: str, task_class: str, reasoning_tokens: int) -> None:
        """A request on ``model`` reasoned for ``reasoning_tokens`` tokens."""
        if reasoning_tokens <= 0:
            return
        key = (model, task_class if task_class in PRIORS else "chat")
        with self._lock:
            seen = self._seen.get(key)
            if seen is None:
                seen = self._seen[key] = deque()
                self._sums[key] = 0
            seen.append(reasoning_tokens)
            self._sums[key] += reasoning_tokens
            if len(seen) > WINDOW:
                self._sums[key] -= seen.popleft()

    def expected(self, model: str, task_class: str) -> float:
        """Expected reasoning tokens of a request of this class on ``model``."""
        cls = task_class if task_class in PRIORS else "chat"
        with self._lock:
            seen = self._seen.get((model, cls))
            n, total = (len(seen), self._sums[(model, cls)]) if seen else (0, 0)
        return (PRIOR_WEIGHT * PRIORS[cls] + total) / (PRIOR_WEIGHT + n)

    def credit(self, model: str, task_class: str, completion_tokens: int, max_tokens: int | None) -> float:
        """Reasoning tokens a request answered without thinking is credited with (see the docstring)."""
        tokens = self.expected(model, task_class)
        if max_tokens is not None:
            tokens = min(tokens, max(0, max_tokens - completion_tokens))
        return tokens
