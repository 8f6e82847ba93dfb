"""``nudge-gateway router fit``: refit the router on an operator's own labelled prompts.

Input: a JSONL file, one prompt per line, with how well each of the operator's models answered it::

    {"messages": [{"role": "user", "content": "..."}], "scores": {"org/small-7b": 0.6, "org/large-70b": 0.9}}
    {"prompt": "...", "scores": {"org/small-7b": 1, "org/large-70b": 1}}

Scores are any quality in [0, 1] (a judge's 1-10 divided by 10, right/wrong, a win rate). The
models' abilities and sizes come from the gateway config (``--config``, its ``models:`` section)
or else from their names, exactly as the gateway's catalog reads them.

Two modes (``--mode``):

* ``calibrate`` (default; a few hundred prompts are enough): keep the model's weights, refit the
  scale of its predicted losses and the quality budget's starting price, so that replaying the
  prompts through the gateway's quality budget keeps ``--keep`` of the top model's quality while
  saving the most energy.
* ``full``: also refit the weights (dense features and known words) on the operator's data, as a
  ridge regression pulled toward the shipped weights (``--l2``), then calibrate.

``--holdout`` keeps a share of the prompts out of the fit and reports quality and energy on them.
The result is an artefact the config points to: ``routing: {model: PATH}``. Needs numpy and
scipy (``pip install 'nudge-gateway[train]'``).
"""

from __future__ import annotations

import hashlib
import json
import math
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gateway.config import ModelConfig
from gateway.routing.ability import ability_b, facts_from_name
from gateway.routing.adequacy import AdequacyModel, Tier
from gateway.routing.features import Features, extract, prompt_of
from gateway.routing.quality import replay

SHIFTS = tuple(x / 4 for x in range(-12, 13))  # ln units added to the predicted loss scale


@dataclass
class Labelled:
    features: list[Features]
    models: list[str]  # ascending by ability
    tiers: list[Tier]
    Y: Any  # np.ndarray prompts x models, NaN = missing


def tier_of(name: str, models: dict[str, ModelConfig]) -> Tier:
    """What the gateway's catalog would know about ``name`` (config first, then the name)."""
    cfg = models.get(name) or ModelConfig()
    facts = facts_from_name(name)
    params = cfg.params_b or facts.total_b
    active = cfg.active_params_b or (facts.active_b if not cfg.params_b else None) or params
    ability = cfg.ability or ability_b(params, active, facts.generation)
    if ability is None:
        raise SystemExit(f"router fit: no size or ability for {name!r}; give models: {{{name}: {{ability: ...}}}} "
                         "in the config")
    return Tier(ability, params, active)


def load_labelled(path: Path, models: dict[str, ModelConfig]) -> Labelled:
    import numpy as np

    rows = []
    with path.open(encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                r = json.loads(line)
                scores = {str(k): float(v) for k, v in r["scores"].items()}
            except (ValueError, KeyError, TypeError, AttributeError) as exc:
                raise SystemExit(f"{path}:{n}: expected {{\"messages\"|\"prompt\": ..., "
                                 f"\"scores\": {{model: 0..1}}}}: {exc}") from exc
            if not all(0.0 <= v <= 1.0 for v in scores.values()):
                raise SystemExit(f"{path}:{n}: scores must lie in [0, 1]")
            rows.append((prompt_of(r.get("messages"), r.get("prompt")), scores))
    names = sorted({m for _, s in rows for m in s})
    if len(names) < 2:
        raise SystemExit(f"{path}: need scores for at least two models")
    tiers = {m: tier_of(m, models) for m in names}
    names.sort(key=lambda m: (tiers[m].ability_b or 0.0, m))
    Y = np.array([[s.get(m, math.nan) for m in names] for _, s in rows])
    return Labelled([extract(p) for p, _ in rows], names, [tiers[m] for m in names], Y)


def _trades(model: AdequacyModel, data: Labelled, rows, shift: float):
    """(losses, savings) per prompt and tier as the gateway computes them, with ln s shifted."""
    import numpy as np

    shifted = model.shifted(shift)
    losses = np.zeros((len(rows), len(data.tiers)))
    savings = np.zeros_like(losses)
    for k, r in enumerate(rows):
        rs = shifted.route_scores(data.features[r], data.tiers)
        losses[k], savings[k] = rs.losses, rs.savings
    return losses, savings


def _replay(losses, savings, target: float, price: float, window: int):
    """Tier per prompt, in order, through the gateway's quality budget; and the final price."""
    import numpy as np

    picks, prices = replay(losses.tolist(), savings.tolist(), target, price, window)
    return np.array(picks), prices[-1] if prices else price


def outcome(data: Labelled, rows, pick, model: AdequacyModel) -> dict[str, Any]:
    """Quality kept and energy saved (per token, ML.ENERGY law of the artefact) against always-top."""
    import numpy as np

    Y = data.Y[rows]
    top = len(data.tiers) - 1
    filled = np.where(np.isnan(Y), np.nanmean(Y, 0), Y)
    j = np.array([model.j_per_token(t.params_b or t.ability_b, t.active_b) for t in data.tiers])
    idx = np.arange(len(rows))
    return {"kept": float(filled[idx, pick].mean() / filled[:, top].mean()),
            "saved": float(1 - j[pick].sum() / (j[top] * len(rows))),
            "shares": [float((pick == k).mean()) for k in range(len(data.tiers))]}


def calibrate(model: AdequacyModel, data: Labelled, rows, keep: float) -> tuple[float, float, dict]:
    """(shift, starting price, outcome): the shift of ln s saving the most energy while the replay
    keeps >= ``keep``; the price is where the replayed stream settles."""
    best = None
    target = 1.0 - model.default_quality
    for shift in SHIFTS:
        losses, savings = _trades(model, data, rows, shift)
        _, price = _replay(losses, savings, target, model.default_price, model.default_window)
        pick, _ = _replay(losses, savings, target, price, model.default_window)
        res = outcome(data, rows, pick, model)
        if res["kept"] >= keep and (best is None or res["saved"] > best[2]["saved"] + 1e-12):
            best = (shift, price, res)
    if best is None:  # nothing keeps enough: the most cautious shift, all to the top tier in practice
        losses, savings = _trades(model, data, rows, SHIFTS[-1])
        pick, price = _replay(losses, savings, target, model.default_price, model.default_window)
        best = (SHIFTS[-1], price, outcome(data, rows, pick, model))
    return best


def fit_weights(model: AdequacyModel, data: Labelled, rows, l2: float) -> tuple:
    """Refit ln s on the operator's ladders (every pair of models, delta = ln ability ratio), pulled
    toward the shipped weights (fit.fit_sensitivity with a prior, in the artefact's raw units).
    Returns (dense weights, word weights, intercept, words)."""
    import numpy as np

    from gateway.routing import fit

    feats = [data.features[r] for r in rows]
    design = fit.Design.of_artefact(model.spec)
    th = [math.log(max(t.ability_b or 0.05, 0.05)) for t in data.tiers]
    Y = data.Y[rows]
    P, Dl, Yg = [], [], []
    for i in range(len(data.tiers)):
        for j in range(i + 1, len(data.tiers)):
            if th[j] <= th[i]:
                continue
            ok = ~(np.isnan(Y[:, i]) | np.isnan(Y[:, j]))
            q = float(np.nanmean(Y[:, j])) or 1.0
            P += list(np.nonzero(ok)[0])
            Dl += [th[j] - th[i]] * int(ok.sum())
            Yg += list((Y[ok, j] - Y[ok, i]) / q)
    if not P:
        raise SystemExit("router fit --mode full: no pair of models with different abilities has scores")
    obs = fit.Observations(np.array(P), np.zeros(len(P), dtype=int), np.array(Dl), np.array(Yg), np.ones(len(P)),
                           ["operator"])
    s = model.spec["sensitivity"]
    prior = (s["dense"], [model.spec["terms"][t][0] for t in design.vocab], float(s["intercept"]))
    fitted = fit.fit_sensitivity(feats, obs, design, l2_dense=l2, l2_terms=l2, max_iter=500, prior=prior)
    return fitted.w_dense, fitted.w_terms, fitted.group_scale["operator"], design.vocab


def _with_weights(model: AdequacyModel, dense, terms, intercept, vocab) -> AdequacyModel:
    spec = json.loads(json.dumps(model.spec))
    spec["sensitivity"]["dense"] = [float(x) for x in dense]
    delta = float(intercept) - float(spec["sensitivity"]["intercept"])
    spec["sensitivity"]["intercept"] = float(intercept)
    spec["sensitivity"]["mc_intercept"] = float(spec["sensitivity"]["mc_intercept"]) + delta
    for t, w in zip(vocab, terms):
        spec["terms"][t][0] = float(w)
    return AdequacyModel(spec)


def run(data_path: Path, out: Path, models: dict[str, ModelConfig], mode: str = "calibrate", keep: float = 0.95,
        holdout: float = 0.0, l2: float = 10.0, base: Path | None = None, log=print) -> dict:
    import numpy as np

    model = AdequacyModel.load(base)
    data = load_labelled(data_path, models)
    n = len(data.features)
    order = list(range(n))
    random.Random(0).shuffle(order)
    k = int(round(holdout * n))
    test, train = sorted(order[:k]), sorted(order[k:])
    log(f"{n} prompts, models by ability: "
        + ", ".join(f"{m} ({t.ability_b:.1f})" for m, t in zip(data.models, data.tiers))
        + (f"; {len(test)} held out" if test else ""))
    if mode == "full":
        model = _with_weights(model, *fit_weights(model, data, np.array(train), l2))
        log("refitted the weights on the operator's ladders")
    shift, price, res = calibrate(model, data, np.array(train), keep)
    spec = json.loads(json.dumps(model.spec))
    for key in ("intercept", "mc_intercept"):
        spec["sensitivity"][key] = float(spec["sensitivity"][key]) + shift
    spec["quality"]["price"] = round(price, 4)
    refit: dict[str, Any] = {
        "mode": mode, "data": str(data_path), "data_sha256_16": hashlib.sha256(data_path.read_bytes()).hexdigest()[:16],
        "prompts": n, "models": data.models, "keep": keep, "shift": shift, "base_version": model.version,
        "fit": res}
    fitted = AdequacyModel({**spec, "metadata": {**spec.get("metadata", {}), "refit": refit}})
    if test:
        losses, savings = _trades(fitted, data, np.array(test), 0.0)
        pick, _ = _replay(losses, savings, 1.0 - fitted.default_quality, fitted.default_price, fitted.default_window)
        refit["holdout"] = outcome(data, np.array(test), pick, fitted)
    spec["metadata"] = {**spec.get("metadata", {}), "refit": refit}
    spec.pop("version", None)
    spec["version"] = hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:12]
    out.write_text(json.dumps(spec, sort_keys=True, separators=(",", ":"), ensure_ascii=False) + "\n", encoding="utf-8")
    log(f"fit: kept {res['kept']:.3f} of the top model's quality, saved {res['saved']:.3f} of its energy "
        f"(shares {[round(x, 2) for x in res['shares']]}); ln-scale shift {shift:+.2f}, starting price {price:.3g}")
    if test:
        h = refit["holdout"]
        log(f"held out: kept {h['kept']:.3f}, saved {h['saved']:.3f} (shares {[round(x, 2) for x in h['shares']]})")
    log(f"wrote {out} (version {spec['version']}); point the gateway at it with  routing: {{model: {out}}}")
    return refit


__all__ = ["calibrate", "load_labelled", "run"]
