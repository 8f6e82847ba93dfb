"""Hold the quality users get at a target on average, and spend the rest where it saves most energy.

Routing a request to a smaller tier saves a share ``saving_i`` of the top tier's energy and,
as the model predicts it (``adequacy.py``), gives up a share ``loss_i`` of its quality. The
router picks the tier with the best trade at the current *price* of quality:

    pick = argmax_i  saving_i - price * loss_i          (the top tier: 0 - 0)

A fixed price is a fixed threshold: a smaller tier is taken when ``loss_i / saving_i < 1 / price``.
But one threshold cannot fit every kind of traffic: on a stream of exam questions every
smaller-tier answer loses something, on a stream of small talk almost nothing, so a threshold
strict enough for one is wasteful or too loose for the other. :class:`QualityBudget` instead
adapts the price so that the **average predicted loss of the requests it routes stays at the
target** (``1 - routing.quality``): after each decision, ``ln price`` moves up by ``rate`` times
the decision's loss above the target, relative to the target, and down when below. This is the
Lagrangian way to "keep >= 95% of the top tier's quality with the least energy": the budget of
lost quality goes to the requests where it buys the most energy.

The price starts at the trained model's default (``AdequacyModel.default_price``) and stays
within ``[min_price, max_price]``; ``rate`` is ``1 / window`` (requests). A gateway replica keeps
its own price: each holds its own traffic to the target. Everything runs on the event loop's
thread, so there is no locking.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

__all__ = ["QualityBudget", "best_trade", "replay"]


def best_trade(losses: Sequence[float], savings: Sequence[float], price: float) -> int:
    """Index of the tier with the largest ``saving - price * loss`` (ties: the larger tier). The
    last tier is the top: saving 0, loss 0."""
    best, value = len(losses) - 1, 0.0
    for i in range(len(losses) - 2, -1, -1):
        v = savings[i] - price * losses[i]
        if v > value + 1e-12:
            best, value = i, v
    return best


class QualityBudget:
    def __init__(self, target_loss: float, price: float, window: int = 200, adaptive: bool = True,
                 min_price: float = 0.5, max_price: float = 1e4):
        if not 0 < target_loss < 1:
            raise ValueError("target_loss must be in (0, 1)")
        self.target = target_loss
        self.adaptive = adaptive
        self.rate = 1.0 / max(1, window)
        self._lo, self._hi = math.log(min_price), math.log(max_price)
        # a fixed price is taken as given; an adaptive one starts, and stays, within the bounds
        self._log_price = math.log(price) if not adaptive else min(self._hi, max(self._lo, math.log(price)))
        self.decisions = 0
        self.loss_sum = 0.0  # predicted loss of every decision so far
        self.recent_loss = target_loss  # its moving average over about ``window`` decisions (for metrics)

    @property
    def price(self) -> float:
        return math.exp(self._log_price)

    def record(self, loss: float) -> None:
        """A request went to a tier predicted to lose ``loss`` of the top tier's quality."""
        self.decisions += 1
        self.loss_sum += loss
        self.recent_loss += self.rate * (loss - self.recent_loss)
        if self.adaptive:
            step = self.rate * (min(loss, 1.0) - self.target) / self.target
            self._log_price = min(self._hi, max(self._lo, self._log_price + step))


def replay(losses: Sequence[Sequence[float]], savings: Sequence[Sequence[float]], target: float, price: float,
           window: int, adaptive: bool = True) -> tuple[list[int], list[float]]:
    """Requests arriving in order, each with its tiers' (loss, saving), through a fresh budget as the
    router runs it: the tier picked for each, and the price before each decision (training and
    ``router fit`` use it to see what a setting would do)."""
    budget = QualityBudget(target, price, window, adaptive=adaptive)
    picks, prices = [], []
    for loss, saving in zip(losses, savings):
        prices.append(budget.price)
        pick = best_trade(loss, saving, budget.price)
        budget.record(float(loss[pick]))
        picks.append(pick)
    return picks, prices
