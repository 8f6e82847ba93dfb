"""Two running estimates the attribution book keeps per backend.

``Calibration`` learns, from the backend's own meter, what each kind of work really costs next
to what the token-cost model predicts. ``Balance`` tracks the tokens the backend made for
clients we do not see (its count minus ours), released only at new highs so that a timing
difference between the backend's count and our relay is never charged twice.
"""

from __future__ import annotations


class Calibration:
    """What each kind of work really costs on this backend, learnt from its own meter.

    The token-cost model is an extrapolation for models, GPUs and engines other than those
    measured. Each busy interval is a data point ``E = a·step + b·token + c·prefill`` (its
    modelled joules in three parts: the steps' shared cost, the generated tokens' own cost,
    the prompt tokens'); a least-squares fit with exponential forgetting, pulled towards the
    model (1, 1, 1) by a prior worth ``prior`` intervals per part, gives the factors that
    weigh each part in later splits (bounded to 1/4..4). A part never seen keeps the model's
    weight.

    The tokens' own cost is held to the model ten times more firmly than the others: in every
    interval it moves with the step cost (both grow with the tokens generated) and is a small
    share of it, so the meter barely tells them apart, and a loose fit wanders far on noise
    (a factor of 0.4 or 4 after a few hundred intervals where the truth was 0.9), which
    mis-weighs long contexts against short ones. It is also the best-founded term (the
    FLOP and the KV-cache bytes of each token).
    """

    __slots__ = ("decay", "prior", "xx", "xe", "seen", "_factors", "_dirty")

    def __init__(self, decay: float = 0.999, prior: tuple[float, float, float] = (3.0, 30.0, 3.0)) -> None:
        self.decay = decay
        self.prior = prior
        self.xx = [[0.0] * 3 for _ in range(3)]
        self.xe = [0.0] * 3
        self.seen = [0.0] * 3  # intervals with each part (decayed)
        self._factors = (1.0, 1.0, 1.0)
        self._dirty = False

    def update(self, energy: float, parts: tuple[float, float, float]) -> None:
        f = self.decay
        for i in range(3):
            self.seen[i] = self.seen[i] * f + (1.0 if parts[i] > 0 else 0.0)
            self.xe[i] = self.xe[i] * f + parts[i] * energy
            for j in range(3):
                self.xx[i][j] = self.xx[i][j] * f + parts[i] * parts[j]
        self._dirty = True

    @property
    def factors(self) -> tuple[float, float, float]:
        if self._dirty:
            self._dirty = False
            self._factors = self._solve()
        return self._factors

    def _solve(self) -> tuple[float, float, float]:
        a = [row[:] for row in self.xx]
        b = self.xe[:]
        for i in range(3):  # ridge towards 1: `prior` typical intervals' worth of the model
            ridge = self.prior[i] * self.xx[i][i] / self.seen[i] if self.seen[i] >= 1.0 else 1.0
            a[i][i] += ridge
            b[i] += ridge
        x = _solve3(a, b)
        if x is None or min(x) <= 0:
            return (1.0, 1.0, 1.0)
        return tuple(min(4.0, max(0.25, v)) for v in x)  # type: ignore[return-value]


def _solve3(a: list[list[float]], b: list[float]) -> list[float] | None:
    """Gaussian elimination with partial pivoting for a 3x3 system."""
    n = 3
    m = [a[i][:] + [b[i]] for i in range(n)]
    for col in range(n):
        pivot = max(range(col, n), key=lambda r: abs(m[r][col]))
        if abs(m[pivot][col]) < 1e-12:
            return None
        m[col], m[pivot] = m[pivot], m[col]
        for r in range(col + 1, n):
            k = m[r][col] / m[col][col]
            for c in range(col, n + 1):
                m[r][c] -= k * m[col][c]
    x = [0.0] * n
    for i in reversed(range(n)):
        x[i] = (m[i][n] - sum(m[i][j] * x[j] for j in range(i + 1, n))) / m[i][i]
    return x


class Balance:
    """Others' tokens: the backend's count minus ours, released at new highs only."""

    __slots__ = ("backend", "ours", "high")

    def __init__(self) -> None:
        self.backend = 0.0
        self.ours = 0.0
        self.high = 0.0

    def step(self, backend: float, ours: float) -> float:
        self.backend += backend
        self.ours += ours
        excess = self.backend - self.ours
        others = max(0.0, excess - self.high)
        self.high = max(self.high, excess)
        return others

    def relabel(self, tokens: float) -> None:
        """``tokens`` counted as others' were ours (negative: we counted some twice)."""
        self.ours += tokens
        self.high -= tokens
