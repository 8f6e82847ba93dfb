"""Fit the router's model from labelled prompts (numpy and scipy: ``pip install 'nudge-gateway[train]'``).

The model (see ``gateway/routing/adequacy.py`` for how the gateway uses it) predicts, for a
prompt ``x``, its *size sensitivity* ``s(x)``: the share of the larger model's quality that is
lost per unit of ability given up, ability being ``ln`` of a model's (Llama-3.1-equivalent)
size in billions. Between a tier of ability ``theta_i`` and the top tier ``theta_top``:

    expected relative loss  l_i(x) = s(x) * (theta_top - theta_i),   ln s(x) = c + w . u(x)

``u(x)`` holds the standardised dense features of ``features.py`` (clipped to the range seen
in training) and, for each known word of the task, a weight scaled by 1/sqrt(distinct words).

**Data.** Labelled prompts with a quality in [0, 1] for several models, among them *ladders*:
models of one family and recipe that differ only in size. Each pair (smaller, larger) of a
ladder and each prompt gives one observation of the relative gap
``y = (q_large - q_small) / mean q_large`` at ``delta = ln(size_large / size_small)``. Pairs of
unrelated models (RouteLLM's Mixtral vs GPT-4) get ``delta = 1`` and their own scale.

**Fit.** Least squares of ``y`` against ``exp(c_g + w . u(x)) * delta`` with one free log-scale
``c_g`` per (data set, ladder) group (judges, preference and right/wrong labels measure "quality"
on different scales: within a group only the ranking of prompts and the dependence on
``delta`` are shared), L2 penalties on ``w`` (dense) and on the word weights, L-BFGS. The
intercept that ships is chosen by the trainer (``bench/train_router.py``). Each dense feature's
training range and spread ship too, so the gateway can add ``kappa`` units of unfamiliarity to
``ln s(x)`` where a prompt lies outside what training saw ("when unsure, go larger").

A second, ordinary ridge regression predicts ``ln`` answer tokens (for energy-aware routing).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from gateway.routing.features import Features

CLIP_Q = 0.001  # dense features are clipped to their 0.1%..99.9% training quantiles
MIN_DF = 3  # a word must appear in this many training prompts to get a weight


def _np():
    try:
        import numpy as np
        from scipy import optimize, sparse
    except ImportError as exc:  # pragma: no cover - depends on the install
        raise SystemExit("fitting the router needs numpy and scipy: pip install 'nudge-gateway[train]'") from exc
    return np, sparse, optimize


@dataclass
class Observations:
    """Pair observations: prompt index, group index, delta, relative gap, weight."""

    prompt: Any  # np.ndarray[int]
    group: Any
    delta: Any
    y: Any
    weight: Any
    groups: list[str] = field(default_factory=list)


@dataclass
class Design:
    """How prompts become model inputs: vocabulary and the dense features' scaling."""

    vocab: list[str]
    mean: Any
    std: Any
    clip: Any
    scale: Any  # how far outside the clip range counts as one unit of unfamiliarity (std; 1 for unseen features)

    @classmethod
    def of_artefact(cls, spec: dict) -> Design:
        """A shipped artefact's own design, in its raw units (no standardisation): its words and clip range."""
        np, _, _ = _np()
        n = len(spec["dense_names"])
        return cls(sorted(spec["terms"]), np.zeros(n), np.ones(n), np.array(spec["dense_clip"], dtype=float),
                   np.array(spec["dense_scale"], dtype=float))

    @classmethod
    def build(cls, feats: Sequence[Features], min_df: int = MIN_DF) -> Design:
        np, _, _ = _np()
        df: dict[str, int] = {}
        for f in feats:
            for t in f.terms:
                df[t] = df.get(t, 0) + 1
        vocab = sorted(t for t, c in df.items() if c >= min_df)
        d = np.array([f.dense for f in feats], dtype=float)
        clip = np.stack([np.quantile(d, CLIP_Q, axis=0), np.quantile(d, 1 - CLIP_Q, axis=0)], 1)
        # a 0/1 feature that is rare stays 0/1 (quantiles would clip it away); one never set stays [0, 0]
        binary = [np.isin(d[:, j], (0.0, 1.0)).all() and (d[:, j] == 1.0).any() for j in range(d.shape[1])]
        for j, b in enumerate(binary):
            if b:
                clip[j] = (0.0, 1.0)
        d = np.clip(d, clip[:, 0], clip[:, 1])
        std = d.std(0)
        std = np.where(std > 1e-9, std, 1.0)
        return cls(vocab, d.mean(0), std, clip, std.copy())

    def dense(self, feats: Sequence[Features]):
        np, _, _ = _np()
        d = np.array([f.dense for f in feats], dtype=float)
        return (np.clip(d, self.clip[:, 0], self.clip[:, 1]) - self.mean) / self.std

    def outside(self, feats: Sequence[Features]):
        """How far each prompt's dense features lie outside the training range (as adequacy.py adds it)."""
        np, _, _ = _np()
        d = np.array([f.dense for f in feats], dtype=float)
        c = np.clip(d, self.clip[:, 0], self.clip[:, 1])
        return np.minimum(3.0, np.abs(d - c) / self.scale).sum(1)

    def terms(self, feats: Sequence[Features]):
        np, sparse, _ = _np()
        index = {t: i for i, t in enumerate(self.vocab)}
        rows, cols, vals = [], [], []
        for r, f in enumerate(feats):
            w = 1 / math.sqrt(len(f.terms)) if f.terms else 0.0
            for t in f.terms:
                j = index.get(t)
                if j is not None:
                    rows.append(r)
                    cols.append(j)
                    vals.append(w)
        return sparse.csr_matrix((vals, (rows, cols)), shape=(len(feats), len(self.vocab)))


@dataclass
class Sensitivity:
    design: Design
    w_dense: Any
    w_terms: Any
    group_scale: dict[str, float]  # ln c_g per group
    residual_var: float
    fixed: dict[int, float] = field(default_factory=dict)  # dense column -> weight set by hand, not learned

    def log_s(self, feats: Sequence[Features], intercept: float):
        np, _, _ = _np()
        D, T = self.design.dense(feats), self.design.terms(feats)
        out = intercept + D @ self.w_dense + T @ self.w_terms
        raw = np.array([f.dense for f in feats], dtype=float)
        for j, w in self.fixed.items():
            out = out + w * raw[:, j]
        return out

    def log_s_sd(self, feats: Sequence[Features]):
        """The uncertainty adequacy.py adds: how far a prompt lies outside the training range."""
        return self.design.outside(feats)


def fit_sensitivity(feats: Sequence[Features], obs: Observations, design: Design, l2_dense: float = 1.0,
                    l2_terms: float = 3.0, max_iter: int = 400, nonnegative: Sequence[int] = (),
                    prior: tuple[Any, Any, float] | None = None) -> Sensitivity:
    """Least-squares fit of ``y ~ exp(c_g + w . u(x)) * delta`` (see the module docstring).
    ``nonnegative``: dense columns whose weight may not fall below zero (a prior, see train_router.py).
    ``prior``: (dense, word weights, intercept) to start from and pull toward instead of zero
    (``router fit --mode full`` refits the shipped weights on an operator's data)."""
    np, sparse, optimize = _np()
    D = design.dense(feats)
    T = design.terms(feats)
    X = sparse.hstack([sparse.csr_matrix(D), T]).tocsr()
    nd, nt, ng = D.shape[1], T.shape[1], len(obs.groups)
    p, g, delta, y, wt = obs.prompt, obs.group, obs.delta, obs.y, obs.weight
    wsum = wt.sum()
    # start each group's scale at its mean gap per unit delta
    c0 = np.array([math.log(max(1e-3, float((wt[g == k] * y[g == k]).sum()
                                            / max((wt[g == k] * delta[g == k]).sum(), 1e-9))))
                   for k in range(ng)])
    w0 = np.zeros(nd + nt)
    if prior is not None:
        w0 = np.concatenate([np.asarray(prior[0], dtype=float), np.asarray(prior[1], dtype=float)])
        c0 = np.full(ng, float(prior[2]))

    def loss(v):
        c, w = v[:ng], v[ng:]
        z = X @ w
        yh = np.exp(np.clip(c[g] + z[p], -20, 5)) * delta
        r = yh - y
        dw = w - w0
        f = (float((wt * r * r).sum()) / wsum
             + (l2_dense * (dw[:nd] @ dw[:nd]) + l2_terms * (dw[nd:] @ dw[nd:])) / len(feats))
        dr = 2 * wt * r * yh / wsum  # d loss / d (c_g + z)
        gc = np.bincount(g, weights=dr, minlength=ng)
        gz = np.bincount(p, weights=dr, minlength=X.shape[0])
        gw = X.T @ gz
        gw[:nd] += 2 * l2_dense * dw[:nd] / len(feats)
        gw[nd:] += 2 * l2_terms * dw[nd:] / len(feats)
        return f, np.concatenate([gc, gw])

    v0 = np.concatenate([c0, w0])
    bounds: list[tuple[float | None, float | None]] = [(None, None)] * (ng + nd + nt)
    for j in nonnegative:
        bounds[ng + j] = (0.0, None)
    res = optimize.minimize(loss, v0, jac=True, method="L-BFGS-B", bounds=bounds, options={"maxiter": max_iter})
    c, w = res.x[:ng], res.x[ng:]
    z = X @ w
    yh = np.exp(np.clip(c[g] + z[p], -20, 5)) * delta
    r = yh - y
    sigma2 = float((wt * r * r).sum() / wsum)
    return Sensitivity(design, w[:nd], w[nd:], {k: float(c[i]) for i, k in enumerate(obs.groups)}, sigma2)


def ridge(X, y, alpha: float, weight=None):
    """Ridge regression with an unpenalised intercept (sparse conjugate gradient, deterministic)."""
    np, sparse, _ = _np()
    from scipy.sparse.linalg import cg

    n, d = X.shape
    w = np.ones(n) if weight is None else np.asarray(weight, dtype=float)
    xm = np.asarray(X.T @ w).ravel() / w.sum()
    ym = float(w @ y / w.sum())
    Xs = sparse.csr_matrix(X)

    def mv(v):
        xv = Xs @ v - xm @ v
        return Xs.T @ (w * xv) - xm * float(w @ xv) + alpha * v

    A = sparse.linalg.LinearOperator((d, d), matvec=mv, dtype=float)
    b = Xs.T @ (w * (y - ym)) - xm * float(w @ (y - ym))
    coef, _ = cg(A, b, rtol=1e-8, maxiter=3000)
    return coef, ym - float(xm @ coef)
