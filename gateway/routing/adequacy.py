"""The router's learned model: how much quality a smaller tier would give up, per request.

**What is predicted.** A prompt's *size sensitivity* ``s(x)``: the share of the top tier's
quality lost per unit of ability given up, ability being ``ln`` of a model's
Llama-3.1-equivalent size (``ability.py``). For tiers of ability ``theta_i`` below the top
tier's ``theta_top``:

    loss_i(x)      = s_hi(x) * (theta_top - theta_i)          expected relative quality lost
    adequacy_i(x)  = 1 - loss_i(x)                            predicted share of quality kept
    ln s_hi(x)     = ln s(x) + kappa * sd(x)                  when unsure, assume more is at stake

``ln s(x)`` is linear in the request's features (``features.py``: dense structure plus one
weight per known word), with its own intercept for a multiple-choice question (one answer is
right, so its loss is measured right/wrong rather than by a judge's preference) and a fixed,
strongly negative weight for a trivial request (a greeting, a bare sum, a one-line question of a
few words). ``sd(x)`` is how unfamiliar the request is: how far each feature lies outside the
range seen in training, in training standard deviations, at most 3 per feature. A request with
tools, a response schema or reasoning, which no training prompt had, is unfamiliar by one unit
each; a system prompt, few-shot examples or a max_tokens cap are routine and do not count. An
unfamiliar prompt looks more sensitive and goes larger, not smaller.

**The decision** (``route_scores``/``choose``, and ``quality.py``). Quality lost is weighed
against the energy a tier saves:

    saving_i = (1 - J(tier i) / J(top tier)) * f        pick = argmax_i saving_i - price * loss_i

``J`` is the energy per output token of a model (ML.ENERGY v3, a power law in total and active
parameters). With ``use_length`` (routing rule ``energy``), ``f`` is the expected answer length
against a reference length, clipped (a long answer has more joules at stake); otherwise 1.
The price of quality is held by the router's quality budget so that the average predicted
loss stays at the configured target (``quality.py``); the artefact carries the starting price.
``score_i = 1 - loss_i / saving_i`` is the same trade as a fixed threshold (``1 - 1/price``).

``bench/train_router.py`` fits every number here (``gateway/routing/fit.py``) and documents the
data; ``bench/routing_eval.py`` measures the result through the real router. Everything here
is stdlib; the artefact is a JSON table of numbers loaded once.
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

__all__ = ["AdequacyModel", "DEFAULT_PATH", "FORMAT", "MC_OPTIONS", "RouteScores", "Tier"]

FORMAT = "nudge-router/3"
# A request with at least three lettered option lines is a multiple-choice question: one answer is
# right, so its loss is on the right/wrong scale (the artefact's mc_intercept), not a judge's.
MC_OPTIONS = math.log1p(3)
DEFAULT_PATH = Path(__file__).with_name("adequacy_model.json")
_MIN_B = 0.05  # sizes below this (or missing) are treated as a 50M-parameter model


@dataclass(frozen=True, slots=True)
class Tier:
    """One tier as the model sees it: its ability and its size (for energy), in billions."""

    ability_b: float | None
    params_b: float | None = None
    active_b: float | None = None


@dataclass(frozen=True, slots=True)
class RouteScores:
    """What :meth:`AdequacyModel.route_scores` says about one request, per tier (ascending)."""

    losses: list[float]  # predicted share of the top tier's quality lost; top = 0.0
    savings: list[float]  # share of the top tier's energy saved (x length factor); top = 0.0
    scores: list[float]  # 1 - loss / saving: compared with a fixed threshold; top = 1.0
    sensitivity: float  # s_hi(x): relative quality lost per unit of ln-ability (uncertainty included)
    tokens: float  # expected answer length in tokens (after the max_tokens cap)
    length_factor: float  # f (1.0 unless use_length)

    @property
    def adequacy(self) -> list[float]:
        """Predicted share of the top tier's quality kept, per tier."""
        return [max(0.0, 1.0 - x) for x in self.losses]


class AdequacyModel:
    """A trained router model; build it with :meth:`load`."""

    def __init__(self, spec: dict[str, Any]):
        if spec.get("format") != FORMAT:
            raise ValueError(f"not a router model artefact (format {spec.get('format')!r}, want {FORMAT!r})")
        if list(spec["dense_names"]) != list(DENSE_NAMES):
            raise ValueError("artefact was trained on different dense features; retrain it")
        self.spec = spec
        self.version: str = spec.get("version", "unversioned")
        self.metadata: dict[str, Any] = spec.get("metadata", {})
        self.kappa: float = float(spec["kappa"])
        q = spec["quality"]
        self.default_quality: float = float(q["target"])  # share of the top tier's quality kept on average
        self.default_price: float = float(q["price"])  # the quality budget's starting price
        self.default_window: int = int(q["window"])
        self.default_rule: str = str(q.get("rule", "adequacy"))  # "energy": savings weighted by answer length
        s, ln = spec["sensitivity"], spec["log_tokens"]
        self._s0, self._l0 = float(s["intercept"]), float(ln["intercept"])
        self._s0_mc = float(s.get("mc_intercept", s["intercept"]))
        self._i_options = DENSE_NAMES.index("options")
        self._ws = tuple(float(x) for x in s["dense"])
        self._wl = tuple(float(x) for x in ln["dense"])
        self._clip = tuple((float(lo), float(hi)) for lo, hi in spec["dense_clip"])
        self._scale = tuple(float(x) for x in spec["dense_scale"])  # training spread, for out-of-range distance
        self._l_range = (float(ln["min"]), float(ln["max"]))
        self._l_smear = float(ln["residual_var"]) / 2.0  # mean of a log-normal: exp(mu + var / 2)
        self._terms: dict[str, tuple[float, float]] = {t: (float(w[0]), float(w[1])) for t, w in spec["terms"].items()}
        e = spec["energy"]
        self._jc, self._jk_total, self._jk_active = float(e["c"]), float(e["k_total"]), float(e["k_active"])
        self.ref_tokens = float(e["ref_tokens"])
        self._f_min, self._f_max = float(e["f_min"]), float(e["f_max"])
        self._i_cap = (DENSE_NAMES.index("has_max_tokens"), DENSE_NAMES.index("log_max_tokens"))

    @classmethod
    def load(cls, path: str | Path | None = None) -> AdequacyModel:
        """Load an artefact (``.json`` or ``.json.gz``); default: the one shipped in this package."""
        p = Path(path) if path is not None else DEFAULT_PATH
        raw = p.read_bytes()
        if p.suffix == ".gz":
            raw = gzip.decompress(raw)
        return cls(json.loads(raw))

    def shifted(self, delta: float) -> AdequacyModel:
        """A copy whose predicted losses are ``exp(delta)`` times larger (for calibration)."""
        spec = dict(self.spec, sensitivity=dict(self.spec["sensitivity"]))
        for key in ("intercept", "mc_intercept"):
            if key in spec["sensitivity"]:
                spec["sensitivity"][key] = float(spec["sensitivity"][key]) + delta
        return AdequacyModel(spec)

    # ------------------------------------------------------------------ prediction

    def _linear(self, features: Features) -> tuple[float, float, float]:
        """(ln s, sd of ln s, ln tokens): one pass over the words and the dense numbers (each
        clipped to the range seen in training, so odd prompts do not extrapolate)."""
        s = self._s0_mc if features.dense[self._i_options] >= MC_OPTIONS else self._s0
        lt = self._l0
        ood = 0.0
        for x, (lo, hi), scale, ws, wl in zip(features.dense, self._clip, self._scale, self._ws, self._wl):
            if x < lo or x > hi:
                c = lo if x < lo else hi
                ood += min(3.0, abs(x - c) / scale)
                x = c
            s += ws * x
            lt += wl * x
        if features.terms:
            ss = sl = 0.0
            get = self._terms.get
            for t in features.terms:
                w = get(t)
                if w is not None:
                    ss += w[0]
                    sl += w[1]
            norm = 1.0 / math.sqrt(len(features.terms))
            s += ss * norm
            lt += sl * norm
        return s, ood, lt

    def sensitivity(self, features: Features) -> tuple[float, float]:
        """(s(x), sd of ln s(x)): relative quality lost per unit of ln-ability, and its uncertainty."""
        s, sd, _ = self._linear(features)
        return math.exp(min(s, 5.0)), sd

    def expected_output_tokens(self, features: Features) -> float:
        """Expected length of the answer in tokens, capped by the request's max_tokens."""
        return self._tokens(self._linear(features)[2], features)

    def _tokens(self, lt: float, features: Features) -> float:
        lo, hi = self._l_range
        tokens = math.exp((lo if lt < lo else hi if lt > hi else lt) + self._l_smear)
        has_cap, log_cap = self._i_cap
        if features.dense[has_cap]:
            tokens = min(tokens, math.expm1(features.dense[log_cap]))
        return max(tokens, 1.0)

    def j_per_token(self, params_b: float | None, active_b: float | None = None) -> float:
        """ML.ENERGY v3 energy per output token (H100, batch 64) of a model of ``params_b`` billions
        in total, ``active_b`` of them active per token (a mixture of experts; default: dense)."""
        total = max(params_b or 0.0, _MIN_B)
        active = max(active_b or total, _MIN_B)
        return self._jc * total**self._jk_total * active**self._jk_active

    def route_scores(self, features: Features, tiers: Sequence[Tier], use_length: bool = False) -> RouteScores:
        """Loss, energy saving and score of each tier against the last (see the module docstring);
        ``tiers`` ascending by ability."""
        s, sd, lt = self._linear(features)
        sens = math.exp(min(s + self.kappa * sd, 5.0))
        tokens = self._tokens(lt, features)
        f = min(self._f_max, max(self._f_min, tokens / self.ref_tokens)) if use_length else 1.0
        if not tiers:
            return RouteScores([], [], [], sens, tokens, f)
        top = tiers[-1]
        th_top = math.log(max(top.ability_b or 0.0, _MIN_B))
        j_top = self.j_per_token(top.params_b or top.ability_b, top.active_b)
        losses, savings, scores = [], [], []
        floor = 1.0
        for t in reversed(tiers[:-1]):  # a tier listed above another never loses more than it
            gap = max(0.0, th_top - math.log(max(t.ability_b or 0.0, _MIN_B)))
            floor = min(floor, max(0.0, 1.0 - sens * gap))
            loss = 1.0 - floor
            saving = (1.0 - self.j_per_token(t.params_b or t.ability_b, t.active_b) / j_top) * f
            losses.append(loss)
            savings.append(saving)
            scores.append(1.0 if loss <= 0.0 else (1.0 - loss / saving) if saving > 0.0 else -math.inf)
        losses.reverse()
        savings.reverse()
        scores.reverse()
        return RouteScores(losses + [0.0], savings + [0.0], scores + [1.0], sens, tokens, f)

    def choose(self, features: Features, tiers: Sequence[Tier], price: float | None = None,
               use_length: bool = False) -> tuple[int, RouteScores]:
        """Index of the tier with the best trade of energy saved against quality lost at ``price``
        (default: the artefact's starting price), and the scores behind it."""
        from gateway.routing.quality import best_trade

        rs = self.route_scores(features, tiers, use_length)
        return best_trade(rs.losses, rs.savings, self.default_price if price is None else price), rs

    def __repr__(self) -> str:
        return (f"AdequacyModel(version={self.version!r}, terms={len(self._terms)}, "
                f"quality={self.default_quality}, price={self.default_price}, kappa={self.kappa})")
