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

**Energy-aware routing** (:meth:`AdequacyModel.route_scores`). A smaller tier's shortfall
``1 - adequacy`` is what it risks; what it saves is energy, and that grows with the length of
the answer. The artefact also carries a ridge model of the answer's length in tokens
(:meth:`AdequacyModel.expected_output_tokens`, capped by the request's ``max_tokens``) and the
ML.ENERGY power law ``J/token = c * params_B^k``. The score of tier ``i`` against the top tier
``n`` is

    score_i = 1 - (1 - adequacy_i) / (f * g_i)
    f   = clip(expected_tokens / ref_tokens, f_min, f_max)           (answer length)
    g_i = (J(size_n) - J(size_i)) / (J(70.6) - J(8))                 (size gap, 1 for 8B vs 70B)

i.e. the shortfall is weighed against the joules the tier saves, relative to a reference
(the 8B instead of the 70B on a ``ref_tokens``-token answer, where the score is the plain
adequacy). The router sends a request to the smallest tier whose score reaches the threshold.
``bench/train_router.py`` fits every constant on training rows; nothing here is hand-set.

Everything here is stdlib; the artefact is a JSON table of numbers loaded once.
"""

from __future__ import annotations

import gzip
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gateway.routing.features import DENSE_NAMES, Features

__all__ = ["AdequacyModel", "DEFAULT_PATH", "FORMAT", "RouteScores"]

FORMAT = "nudge-adequacy/2"
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
        self.default_threshold: float = float(spec["default_threshold"])  # for predict() (plain adequacy)
        self.energy_threshold: float = float(spec["energy_threshold"])  # for route_scores() / choose()
        self.sigma_b: float = float(spec["sigma_b"])
        self.rho: float = float(spec["rho"])
        self._b0 = float(spec["b"]["intercept"])
        self._a0 = float(spec["log_a"]["intercept"])
        self._l0 = float(spec["log_tokens"]["intercept"])
        self._wb_dense = tuple(float(x) for x in spec["b"]["dense"])
        self._wa_dense = tuple(float(x) for x in spec["log_a"]["dense"])
        self._wl_dense = tuple(float(x) for x in spec["log_tokens"]["dense"])
        self._clip = tuple((float(lo), float(hi)) for lo, hi in spec["dense_clip"])
        lt = spec["log_tokens"]
        self._l_range = (float(lt["min"]), float(lt["max"]))
        self._l_smear = float(lt["residual_var"]) / 2.0  # mean of a log-normal: exp(mu + var / 2)
        self._terms: dict[str, tuple[float, float, float]] = {
            t: (float(w[0]), float(w[1]), float(w[2])) for t, w in spec["terms"].items()
        }
        e = spec["energy"]
        self.j_per_token_c, self.j_per_token_k = float(e["c"]), float(e["k"])
        self.ref_tokens = float(e["ref_tokens"])
        self._f_min, self._f_max = float(e["f_min"]), float(e["f_max"])
        self._ref_saving = self.j_per_token(e["ref_sizes"][1]) - self.j_per_token(e["ref_sizes"][0])
        self._i_cap = (DENSE_NAMES.index("has_max_tokens"), DENSE_NAMES.index("log_max_tokens"))

    @classmethod
    def load(cls, path: str | Path | None = None) -> "AdequacyModel":
        """Load an artefact (``.json`` or ``.json.gz``); default: the one shipped in this package."""
        p = Path(path) if path is not None else DEFAULT_PATH
        raw = p.read_bytes()
        if p.suffix == ".gz":
            raw = gzip.decompress(raw)
        return cls(json.loads(raw))

    # ------------------------------------------------------------------ prediction

    def _linear(self, features: Features) -> tuple[float, float, float]:
        """(b, ln a, ln tokens) before any squashing: one pass over the words and the dense numbers
        (each clipped to the range seen in training, so odd prompts do not extrapolate)."""
        b, la, lt = self._b0, self._a0, self._l0
        for x, (lo, hi), wb, wa, wl in zip(features.dense, self._clip, self._wb_dense, self._wa_dense, self._wl_dense):
            x = lo if x < lo else hi if x > hi else x
            b += wb * x
            la += wa * x
            lt += wl * x
        if features.terms:
            sb = sa = sl = 0.0
            get = self._terms.get
            for t in features.terms:
                w = get(t)
                if w is not None:
                    sb += w[0]
                    sa += w[1]
                    sl += w[2]
            norm = 1.0 / math.sqrt(len(features.terms))
            b += sb * norm
            la += sa * norm
            lt += sl * norm
        return b, la, lt

    def difficulty(self, features: Features) -> tuple[float, float]:
        """(b, a): the ln-size at which a Llama-3.1-class model answers half the time, and
        how sharply the chance rises with size around it."""
        b, la, _ = self._linear(features)
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
        return self._adequacy(*self.difficulty(features), sizes)

    def _adequacy(self, b: float, a: float, sizes: Sequence[float]) -> list[float]:
        n = len(sizes)
        if n == 0:
            return []
        p_top = self._p(b, a, sizes[-1])
        out, floor = [], 0.0
        for size in sizes[:-1]:
            p = self._p(b, a, size)
            lose = self.rho * max(p_top - p, 0.0) + (1.0 - self.rho) * p_top * (1.0 - p)
            floor = max(floor, 1.0 - lose)
            out.append(floor)
        out.append(1.0)
        return out

    def expected_output_tokens(self, features: Features) -> float:
        """Expected length of the answer in tokens (mean of a log-normal fitted on MMLU-Pro
        chain-of-thought answers of Llama-3.1 8B and 70B), capped by the request's max_tokens."""
        _, _, lt = self._linear(features)
        return self._tokens(lt, features)

    def _tokens(self, lt: float, features: Features) -> float:
        lo, hi = self._l_range
        tokens = math.exp((lo if lt < lo else hi if lt > hi else lt) + self._l_smear)
        has_cap, log_cap = self._i_cap
        if features.dense[has_cap]:
            tokens = min(tokens, math.expm1(features.dense[log_cap]))
        return max(tokens, 1.0)

    def j_per_token(self, params_b: float | None) -> float:
        """ML.ENERGY v3 energy per output token of a dense model of ``params_b`` billions (H100, batch 64)."""
        return self.j_per_token_c * max(params_b or 0.0, _MIN_PARAMS_B) ** self.j_per_token_k

    def route_scores(self, features: Features, sizes: Sequence[float]) -> "RouteScores":
        """Adequacy, energy-aware score and expected answer tokens for each tier (see the module
        docstring); the router picks the smallest tier whose ``scores[i]`` reaches its threshold."""
        b, la, lt = self._linear(features)
        adequacy = self._adequacy(b, math.exp(min(2.0, max(-3.0, la))), sizes)
        tokens = self._tokens(lt, features)
        f = min(self._f_max, max(self._f_min, tokens / self.ref_tokens))
        scores = []
        j_top = self.j_per_token(sizes[-1]) if sizes else 0.0
        for size, adq in zip(sizes[:-1], adequacy):
            g = (j_top - self.j_per_token(size)) / self._ref_saving
            scores.append(1.0 - (1.0 - adq) / (f * g) if g > 0 else (1.0 if adq >= 1.0 else 0.0))
        if sizes:
            scores.append(1.0)
        return RouteScores(adequacy, scores, tokens, f)

    def choose(self, features: Features, sizes: Sequence[float], threshold: float | None = None) -> tuple[int, "RouteScores"]:
        """Index of the smallest tier whose energy-aware score reaches ``threshold`` (default:
        the artefact's ``energy_threshold``), else the last; and the scores behind it."""
        t = self.energy_threshold if threshold is None else threshold
        rs = self.route_scores(features, sizes)
        for i, s in enumerate(rs.scores):
            if s >= t:
                return i, rs
        return max(0, len(sizes) - 1), rs

    def _p(self, b: float, a: float, params_b: float | None) -> float:
        ln_s = math.log(max(params_b or 0.0, _MIN_PARAMS_B))
        # marginal over b ~ N(b, sigma_b^2), probit approximation of the logistic-normal integral
        z = a * (ln_s - b) / math.sqrt(1.0 + (math.pi / 8.0) * (a * self.sigma_b) ** 2)
        return 1.0 / (1.0 + math.exp(-z)) if z > -700 else 0.0

    def __repr__(self) -> str:
        return (f"AdequacyModel(version={self.version!r}, terms={len(self._terms)}, "
                f"threshold={self.default_threshold}, energy_threshold={self.energy_threshold})")


@dataclass(frozen=True, slots=True)
class RouteScores:
    """What :meth:`AdequacyModel.route_scores` says about one request, per tier (ascending)."""

    adequacy: list[float]  # P(tier answers as well as the top tier); top = 1.0
    scores: list[float]  # energy-aware score compared with the threshold; top = 1.0
    tokens: float  # expected answer length in tokens (after the max_tokens cap)
    length_factor: float  # f = clip(tokens / ref_tokens, f_min, f_max)
