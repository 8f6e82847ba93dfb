"""Energy stars, in the spirit of the AI Energy Score (huggingface.github.io/AIEnergyScore).

Its stars divide the range of GPU energy per 1,000 queries of the models rated for a task into
five equal sections, the most efficient section earning five. Here the models rated are the ones
a gateway serves, on its own traffic: ``/v1/models`` rates each model's last answers since the
gateway started (``energy/ratings.py``), ``nudge-gateway report --by model`` the ledger's rows of
the period. A model needs ``MIN_ANSWERS`` to be rated, and stars need two rated models: with one
there is no range to place it in. The AI Energy Score runs a fixed prompt set at batch 1 on an
H100; these figures follow your prompts, answer lengths and batches, so compare the models here
with each other, not with its leaderboard.
"""

from __future__ import annotations

MIN_ANSWERS = 20


def stars(wh: float, field: list[float]) -> int | None:
    """Stars of a model using ``wh`` per 1,000 answers among the rated models' ``field`` (its own
    figure included); None with fewer than two."""
    if len(field) < 2:
        return None
    low, high = min(field), max(field)
    if high <= low:
        return 5
    return 5 - min(4, int(5 * (wh - low) / (high - low)))
