"""The learned adequacy model: will a smaller tier answer as well as the largest one?

**What is predicted.** For a request and a deployment's tiers (parameter counts in
billions, ascending), :meth:`AdequacyModel.predict` returns, for each tier, the probability
that a model of that size answers *as well as the largest tier would*:

    adequate(small) = small tier's answer scores at least the top tier's
                    = small right OR large wrong      (for right/wrong answers)

The top tier is adequate by definition (1.0), and a bigger tier never gets a lower value
than a smaller one.

**How.** The request's difficulty ``b`` and discrimination ``a`` are linear in its
features (``features.py``: one weight per known word, plus dense numbers). Ability is
``ln(params in billions)`` on a scale anchored on Llama-3.1 8B and 70B, so a tier of size
``s`` answers with probability ``sigmoid(a * (ln s - b))``, softened for the uncertainty of
``b`` (``sigma_b``). Two tiers' outcomes are coupled: the large one wins outright with
probability ``rho * (p_large - p_small) + (1 - rho) * p_large * (1 - p_small)`` (a mix of
"a bigger model gets right everything a smaller one does" and independence, ``rho`` fitted
on data), and adequacy is one minus that. ``bench/train_router.py`` fits all of this and
documents the data; ``bench/routing_eval.py`` measures it.

Everything here is stdlib; the artefact is a JSON table of numbers loaded once.
"""

from __future__ import annotations

import gzip
import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from gateway.routing.features import DENSE_NAMES, Features

__all__ = ["AdequacyModel", "DEFAULT_PATH", "FORMAT"]

FORMAT = "nudge-adequacy/1"
DEFAULT_PATH = Path(__file__).with_name("adequacy_model.json")
_MIN_PARAMS_B = 0.05  # sizes below this (or missing) are treated as a 50M-parameter model


class AdequacyModel:
    """A trained adequacy model; build it with :meth:`load`."""

    def __init__(self, spec: dict[str, Any]):
        if spec.get("format") != FORMAT:
            raise ValueError(f"not an adequacy model artefact (format {spec.get('format')!r}, want {FORMAT!r})")
        if list(spec["dense_names"]) != list(DENSE_NAMES):
            raise ValueError("artefact was trained on different dense features; retrain it")
        self.spec = spec
        self.version: str = spec.get("version", "unversioned")
        self.metadata: dict[str, Any] = spec.get("metadata", {})
        self.default_threshold: float = float(spec["default_threshold"])
        self.sigma_b: float = float(spec["sigma_b"])
        self.rho: float = float(spec["rho"])
        self._b0 = float(spec["b"]["intercept"])
        self._a0 = float(spec["log_a"]["intercept"])
        self._wb_dense = tuple(float(x) for x in spec["b"]["dense"])
        self._wa_dense = tuple(float(x) for x in spec["log_a"]["dense"])
        self._terms: dict[str, tuple[float, float]] = {t: (float(w[0]), float(w[1])) for t, w in spec["terms"].items()}

    @classmethod
    def load(cls, path: str | Path | None = None) -> "AdequacyModel":
        """Load an artefact (``.json`` or ``.json.gz``); default: the one shipped in this package."""
        p = Path(path) if path is not None else DEFAULT_PATH
        raw = p.read_bytes()
        if p.suffix == ".gz":
            raw = gzip.decompress(raw)
        return cls(json.loads(raw))

    # ------------------------------------------------------------------ prediction

    def difficulty(self, features: Features) -> tuple[float, float]:
        """(b, a): the ln-size at which a Llama-3.1-class model answers half the time, and
        how sharply the chance rises with size around it."""
        b, la = self._b0, self._a0
        for x, wb, wa in zip(features.dense, self._wb_dense, self._wa_dense):
            b += wb * x
            la += wa * x
        if features.terms:
            sb = sa = 0.0
            get = self._terms.get
            for t in features.terms:
                w = get(t)
                if w is not None:
                    sb += w[0]
                    sa += w[1]
            norm = 1.0 / math.sqrt(len(features.terms))
            b += sb * norm
            la += sa * norm
        return b, math.exp(min(2.0, max(-3.0, la)))

    def p_correct(self, features: Features, params_b: float) -> float:
        """Probability that a model of ``params_b`` billion parameters answers correctly."""
        b, a = self.difficulty(features)
        return self._p(b, a, params_b)

    def predict(self, features: Features, sizes: Sequence[float]) -> list[float]:
        """Adequacy of each tier against the last (largest) one; ``sizes`` ascending, in billions.

        The last tier gets 1.0. The values never decrease along the list, so a tier listed
        above another never looks less adequate, even if the sizes are given out of order.
        """
        n = len(sizes)
        if n == 0:
            return []
        b, a = self.difficulty(features)
        p_top = self._p(b, a, sizes[-1])
        out, floor = [], 0.0
        for size in sizes[:-1]:
            p = self._p(b, a, size)
            lose = self.rho * max(p_top - p, 0.0) + (1.0 - self.rho) * p_top * (1.0 - p)
            floor = max(floor, 1.0 - lose)
            out.append(floor)
        out.append(1.0)
        return out

    def _p(self, b: float, a: float, params_b: float | None) -> float:
        ln_s = math.log(max(params_b or 0.0, _MIN_PARAMS_B))
        # marginal over b ~ N(b, sigma_b^2), probit approximation of the logistic-normal integral
        z = a * (ln_s - b) / math.sqrt(1.0 + (math.pi / 8.0) * (a * self.sigma_b) ** 2)
        return 1.0 / (1.0 + math.exp(-z)) if z > -700 else 0.0

    def __repr__(self) -> str:
        return f"AdequacyModel(version={self.version!r}, terms={len(self._terms)}, threshold={self.default_threshold})"
