"""Energy ratings for ``/v1/models``: each model's measured Wh per 1,000 answers here, and its stars
among the models served (``telemetry/rating.py``: how stars are given, and what they compare).

A model's figure is the mean of its last ``WINDOW`` answered requests whose energy was measured
and final, since this gateway started.
"""

from __future__ import annotations

import threading
from collections import deque

from gateway.telemetry.rating import MIN_ANSWERS, stars

WINDOW = 1000  # answers per model


class EnergyRatings:
    """Thread-safe (sampler threads observe, the event loop reads)."""

    def __init__(self, window: int = WINDOW, min_answers: int = MIN_ANSWERS) -> None:
        self.window = window
        self.min_answers = min_answers
        self._lock = threading.Lock()
        self._answers: dict[str, deque[float]] = {}
        self._sums: dict[str, float] = {}

    def observe(self, model: str, joules: float) -> None:
        """One answered request of ``model`` used ``joules`` (measured, final)."""
        with self._lock:
            seen = self._answers.get(model)
            if seen is None:
                seen = self._answers[model] = deque()
                self._sums[model] = 0.0
            seen.append(joules)
            self._sums[model] += joules
            if len(seen) > self.window:
                self._sums[model] -= seen.popleft()

    def ratings(self) -> dict[str, dict[str, float | int | None]]:
        """Per rated model: ``wh_per_1k_answers``, ``answers`` and ``stars`` (1-5; None with one model)."""
        with self._lock:
            rated = {
                m: (self._sums[m] / len(seen) * 1000.0 / 3600.0, len(seen))
                for m, seen in self._answers.items()
                if len(seen) >= self.min_answers
            }
        field = [wh for wh, _ in rated.values()]
        return {
            m: {"wh_per_1k_answers": round(wh, 3), "answers": n, "stars": stars(wh, field)}
            for m, (wh, n) in rated.items()
        }

