"""Train the router's model and write the artefact the gateway ships.

    python bench/train_router.py --extra DIR [--out gateway/routing/adequacy_model.json]

``DIR`` holds the chat sets built by ``bench/routing_sources/extract.py`` (OpenAssistant and
Vicuna-80 judgments); without it the model is trained on ``../shared/routing-data`` alone
(and says so in its metadata). What is learned and why is in ``gateway/routing/fit.py`` and
``gateway/routing/adequacy.py``; in short:

1. **Size sensitivity from ladders.** Every pair of same-recipe models of different sizes in
   every set (Llama-3.1 8B/70B, Llama-2 7/13/70B, Qwen1.5 7/72B, Guanaco 7/13/33/65B, LLaMA-1
   Alpaca and Chip2 fine-tunes, ...) gives, per prompt, the relative quality gap at a known
   ability gap ``ln(size ratio)``. ``ln s(x)`` is fitted linear in the request features, with a
   free scale per (set, ladder): judges, preferences and right/wrong labels measure quality on
   different scales.
2. **Hyper-parameters by 5-fold cross-validation** inside the training rows (L2 strengths),
   scored by the mean APGR over the scenarios below.
3. **Answer length**: a ridge regression of ln(answer tokens) (every set that has lengths).
4. **Threshold and kappa** (how far the uncertainty pushes up): on out-of-fold predictions,
   routing each scenario as the gateway would (tiers, abilities and energy from the catalog's
   defaults for the real model names), the pair that saves the most energy in total while
   **every** scenario keeps >= 95.5% of its top tier's quality (quality first: a 0.5-point
   margin over the 95% goal).

Scenarios: MMLU-Pro Llama-3.1 8B -> 70B; OpenAssistant Guanaco 7 -> 13 -> 33 -> 65B; Vicuna-80
Guanaco and Alpaca ladders; LLMRouter Llama-3.1 8B -> Nemotron-51B; RouteLLM MT-Bench and GSM8K,
Mixtral -> GPT-4 (GPT-4's ability taken as 300B, the MMLU-Pro ability of GPT-4o).

Held-out rows (25% of every set, split by id within each category, seed 20250611) are never
used here except for the metrics written into the artefact's metadata, which
``bench/routing_eval.py`` reproduces through the real router.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
for p in (str(REPO), str(BENCH)):
    if p not in sys.path:
        sys.path.insert(0, p)

import routing_data as rd  # noqa: E402
from gateway.routing import fit  # noqa: E402
from gateway.routing.ability import ability_b, facts_from_name  # noqa: E402
from gateway.routing.adequacy import FORMAT, MC_OPTIONS, AdequacyModel  # noqa: E402
from gateway.routing.features import DENSE_NAMES, extract  # noqa: E402
from gateway.routing.quality import replay as budget_replay  # noqa: E402

DEFAULT_OUT = REPO / "gateway" / "routing" / "adequacy_model.json"
ENERGY_CSV = rd.SHARED.parent / "mlenergy_v3_llm_configs.csv"
CV_FOLDS = 5
L2_GRID = ((1.0, 3.0), (1.0, 1.0), (3.0, 10.0))  # (dense, words)
KAPPA = 1.0  # caution per unit of unfamiliarity: a design choice ("when unsure, go larger"), not tuned
QUALITY = 0.96  # the shipped target: the 95% goal plus a point of margin (a product decision, not tuned)
KEEP = 0.955  # every scenario must keep this share of its top tier's quality in the replay
SCALE_SHIFTS = tuple(np.round(np.arange(-1.5, 1.51, 0.125), 3))  # ln units added to the shipped intercept
WINDOW = 200
LENGTH_ALPHA = 3.0
SET_WEIGHT = {"oasst": 3.0, "vicuna80": 3.0, "routellm-mtbench": 3.0}  # chat sets are the product's traffic

# Each scenario: (set, served model names ascending, the set's model columns in the same order).
# Two-tier pairs are the harshest case for the quality budget: all of it goes to one small tier.
GUANACO = ("timdettmers/guanaco-7b", "timdettmers/guanaco-13b", "timdettmers/guanaco-33b", "timdettmers/guanaco-65b")
SCENARIOS: tuple[tuple[str, tuple[str, ...], tuple[str, ...]], ...] = (
    ("mmlu-pro", ("meta-llama/Llama-3.1-8B-Instruct", "meta-llama/Llama-3.1-70B-Instruct"),
     (rd.MMLU_SMALL, rd.MMLU_LARGE)),
    ("mmlu-pro", ("microsoft/Phi-3-mini-4k-instruct", "meta-llama/Llama-3.1-8B-Instruct", "meta-llama/Llama-3.1-70B-Instruct"),
     ("Phi-3-mini-4k-instruct", rd.MMLU_SMALL, rd.MMLU_LARGE)),
    ("oasst", GUANACO, rd.OASST_LADDER),
    ("oasst", (GUANACO[0], GUANACO[-1]), (rd.OASST_LADDER[0], rd.OASST_LADDER[-1])),
    ("oasst", (GUANACO[1], GUANACO[-1]), (rd.OASST_LADDER[1], rd.OASST_LADDER[-1])),
    ("vicuna80", GUANACO, rd.OASST_LADDER),
    ("vicuna80", (GUANACO[0], GUANACO[-1]), (rd.OASST_LADDER[0], rd.OASST_LADDER[-1])),
    ("vicuna80", ("llama1-alpaca-7b", "llama1-alpaca-13b", "llama1-alpaca-33b", "llama1-alpaca-65b"),
     rd.VICUNA_LADDERS[0]),
    ("llmrouter", ("meta-llama/Llama-3.1-8B-Instruct", "nvidia/Llama-3.1-Nemotron-51B-Instruct"),
     ("llama-3.1-8b-instruct", "llama-3.1-nemotron-51b-instruct")),
    ("routellm-mtbench", ("mistralai/Mixtral-8x7B-Instruct-v0.1", "gpt-4-1106-preview"), (rd.ROUTELLM_SMALL, rd.ROUTELLM_LARGE)),
    ("routellm-gsm8k", ("mistralai/Mixtral-8x7B-Instruct-v0.1", "gpt-4-1106-preview"), (rd.ROUTELLM_SMALL, rd.ROUTELLM_LARGE)),
)
CONFIGURED = {"gpt-4-1106-preview": 300.0}  # ability (and size, for energy) of models no name gives


@dataclass(frozen=True)
class TierFacts:
    ability: float
    params: float
    active: float


def tier_facts(name: str) -> TierFacts:
    """What the catalog would know about a served model name with no config (plus CONFIGURED)."""
    if name in CONFIGURED:
        return TierFacts(CONFIGURED[name], CONFIGURED[name], CONFIGURED[name])
    f = facts_from_name(name)
    assert f.total_b, name
    return TierFacts(ability_b(f.total_b, f.active_b, f.generation) or f.total_b, f.total_b, f.active_b or f.total_b)


# --------------------------------------------------------------------------- observations

# Multiple-choice questions reach the gateway wrapped in other people's instructions. A third of the
# MMLU-Pro training questions stay bare, a third get each of these wrappers (chosen by question id),
# so that the wrapper's words and length carry no weight. (bench/routing_eval.py checks other
# wordings: MMLU-Pro's own zero-shot instruction and a system prompt, none of them these.)
MC_WRAPPERS = (
    lambda q: [{"role": "user", "content": "Answer the following multiple choice question. Think it through step by "
                                           f"step, then give the letter of the correct option.\n\n{q}"}],
    lambda q: [{"role": "system", "content": "You are a knowledgeable tutor. Be accurate."},
               {"role": "user", "content": f"Q: {q}\nA:"}],
)


def wrap_questions(ds: rd.LabelledSet) -> rd.LabelledSet:
    msgs = []
    for qid, m in zip(ds.ids, ds.messages):
        k = int(hashlib.sha1(f"wrap:{qid}".encode()).hexdigest(), 16) % (len(MC_WRAPPERS) + 1)
        msgs.append(m if k == 0 else MC_WRAPPERS[k - 1](m[-1]["content"]))
    return rd.LabelledSet(ds.name, ds.kind, ds.ids, msgs, ds.strata, ds.models, ds.sizes, ds.Y, ds.tokens, ds.ladders,
                          ds.files)


CHAT_KINDS = ("judge", "preference")
# Request parts the training prompts never had that say nothing about difficulty: a system prompt,
# few-shot examples, a max_tokens cap. Tools, a response schema and reasoning do count as unfamiliar.
ROUTINE = tuple(DENSE_NAMES.index(n) for n in ("system", "shots", "has_max_tokens", "log_max_tokens"))
KIND_COLUMNS = [i for i, n in enumerate(DENSE_NAMES) if n.startswith("k_")]
TRIVIAL = DENSE_NAMES.index("trivial")
TRIVIAL_PRIOR = -4.0  # ln s added for a trivial request (x 0.018): not learned, see adequacy.py
# Code, maths and multi-step reasoning are never *less* size-sensitive than the average prompt: on
# judged chat (MT-Bench, Vicuna-80) they show the largest gaps between sizes; the preference set's
# few such prompts (and exam sets, where a hard problem is one every size fails) would otherwise pull
# their weights below zero. A prior, stated here, not learned.
NONNEGATIVE = tuple(DENSE_NAMES.index(n) for n in ("k_code", "k_math", "k_reasoning", "math_frac"))


def features_of(ds: rd.LabelledSet, i: int):
    """A prompt's features for training. Exam-style sets (right/wrong, task scores) do not teach
    what kind of task matters: there a hard problem is often one that every size fails, while a
    judge still prefers the bigger model's attempt. Their task-kind flags are zeroed, so the
    kind weights come from the judged chat sets. The trivial flag is never learned (a fixed prior)."""
    f = extract(ds.prompt(i))
    dense = list(f.dense)
    dense[TRIVIAL] = 0.0
    if ds.kind not in CHAT_KINDS:
        for j in KIND_COLUMNS:
            dense[j] = 0.0
    return type(f)(f.terms, tuple(dense), f.n_chars)


def ladder_pairs(ds: rd.LabelledSet) -> list[tuple[str, str, float, str]]:
    out = []
    for lad in ds.ladders:
        for i in range(len(lad)):
            for j in range(i + 1, len(lad)):
                s, lg = lad[i], lad[j]
                d = math.log(ds.sizes[lg] / ds.sizes[s]) if s in ds.sizes and lg in ds.sizes else 1.0
                out.append((s, lg, d, f"{ds.name}:{'/'.join(lad)}" if d == 1.0 else f"kind:{ds.kind}"))
    return out


def observations(parts: list[tuple[rd.LabelledSet, np.ndarray]]) -> tuple[list, fit.Observations]:
    """Features of every prompt and one observation per (ladder pair, prompt); each set's
    observations weigh SET_WEIGHT (default 1) in total per ladder group, spread over its pairs."""
    feats: list = []
    P, G, D, Y, W, groups = [], [], [], [], [], []
    for ds, rows in parts:
        base = len(feats)
        feats += [features_of(ds, i) for i in rows]
        pairs = ladder_pairs(ds)
        for s, lg, d, key in pairs:
            if key not in groups:
                groups.append(key)
            ys, yl = ds.col(s)[rows], ds.col(lg)[rows]
            ok = np.nonzero(~(np.isnan(ys) | np.isnan(yl)))[0]
            if not len(ok):
                continue
            q = float(np.nanmean(yl))
            w = SET_WEIGHT.get(ds.name, 1.0) * 1000.0 / (len(ok) * sum(1 for *_, k in pairs if k == key))
            P += list(base + ok)
            G += [groups.index(key)] * len(ok)
            D += [d] * len(ok)
            Y += list((yl[ok] - ys[ok]) / q)
            W += [w] * len(ok)
    obs = fit.Observations(np.array(P), np.array(G), np.array(D, float), np.array(Y, float), np.array(W, float), groups)
    return feats, obs


def reference_intercepts(model: fit.Sensitivity) -> tuple[float, float]:
    """The shipped intercepts: (chat, multiple choice). A multiple-choice question has one right
    answer, so its loss is measured the right/wrong way (the scale of the exam sets); for anything
    else the gateway cannot know how its users judge quality, so it assumes the strictest measure
    of the judged chat sets (preferences between answers, then 1-10 scores): predicted losses are
    then, if anything, too large for the others."""
    kinds = {key[5:]: c for key, c in model.group_scale.items() if key.startswith("kind:")}
    return max(kinds[k] for k in CHAT_KINDS if k in kinds), kinds.get("mc", max(kinds.values()))


def intercepts_for(feats: list, chat: float, mc: float) -> np.ndarray:
    """Per prompt, the intercept the gateway applies (adequacy.py: MC_OPTIONS)."""
    i = DENSE_NAMES.index("options")
    return np.array([mc if f.dense[i] >= MC_OPTIONS else chat for f in feats])


# --------------------------------------------------------------------------- routing (numpy mirror of adequacy.py)


@dataclass
class EnergyFit:
    c: float
    k_total: float
    k_active: float
    rows: list

    @classmethod
    def load(cls, path: Path = ENERGY_CSV) -> "EnergyFit":
        """ln J/token = ln c + k_total ln total + k_active ln active, least squares over ML.ENERGY v3
        H100, lm-arena-chat, max_num_seqs 64, bf16 rows (dense and MoE; fewest GPUs per model)."""
        import csv

        best: dict[str, dict] = {}
        with path.open(newline="") as f:
            for r in csv.DictReader(f):
                if (r["task"], r["gpu_model"], r["max_num_seqs"], r["weight_precision"]) != (
                        "lm-arena-chat", "H100", "64", "bfloat16") or r["architecture"] not in ("Dense Transformer", "MoE"):
                    continue
                if r["model_id"] not in best or int(r["num_gpus"]) < int(best[r["model_id"]]["num_gpus"]):
                    best[r["model_id"]] = r
        rows = sorted((m, int(r["num_gpus"]), float(r["total_params_billions"]),
                       float(r["activated_params_billions"] or r["total_params_billions"]),
                       float(r["energy_per_token_joules"])) for m, r in best.items())
        X = np.array([[1.0, math.log(t), math.log(a)] for _, _, t, a, _ in rows])
        y = np.log([j for *_, j in rows])
        c, kt, ka = np.linalg.lstsq(X, y, rcond=None)[0]
        return cls(float(math.exp(c)), float(kt), float(ka), rows)

    def j(self, params: float, active: float) -> float:
        return self.c * params**self.k_total * active**self.k_active


def tier_trades(log_s: np.ndarray, sd: np.ndarray, f: np.ndarray, tiers: list[TierFacts], energy: EnergyFit,
                kappa: float) -> tuple[np.ndarray, np.ndarray]:
    """(losses, savings) per prompt and tier, as AdequacyModel.route_scores computes them."""
    sens = np.exp(np.minimum(log_s + kappa * sd, 5.0))
    top = tiers[-1]
    j_top = energy.j(top.params, top.active)
    n, k = len(log_s), len(tiers)
    losses, savings = np.zeros((n, k)), np.zeros((n, k))
    floor = np.ones(n)
    for i in range(k - 2, -1, -1):
        t = tiers[i]
        gap = max(0.0, math.log(top.ability) - math.log(t.ability))
        floor = np.minimum(floor, np.maximum(0.0, 1.0 - sens * gap))
        losses[:, i] = 1.0 - floor
        savings[:, i] = (1.0 - energy.j(t.params, t.active) / j_top) * f
    return losses, savings


@dataclass
class Outcome:
    kept: float  # mean quality routed / mean quality of the top tier
    saved: float  # 1 - energy routed / energy of the top tier
    shares: list[float]


def outcome(ds: rd.LabelledSet, cols: tuple[str, ...], tiers: list[TierFacts], pick: np.ndarray,
            energy: EnergyFit) -> Outcome:
    Y = np.stack([ds.col(m) for m in cols], 1)
    E = np.stack([energy.j(t.params, t.active) * ds.answer_tokens(m) for t, m in zip(tiers, cols)], 1)
    idx = np.arange(len(pick))
    return Outcome(float(Y[idx, pick].mean() / Y[:, -1].mean()), float(1 - E[idx, pick].sum() / E[:, -1].sum()),
                   [float((pick == k).mean()) for k in range(len(cols))])


def scenario_rows(ds: rd.LabelledSet, cols: tuple[str, ...]) -> np.ndarray:
    Y = np.stack([ds.col(m) for m in cols], 1)
    return np.nonzero(~np.isnan(Y).any(1))[0]


def apgr(score_large: np.ndarray, ys: np.ndarray, yl: np.ndarray) -> float:
    """Mean performance gap recovered as the share sent to the large model goes 0, 0.1, ..., 1,
    rows sent in order of ``score_large`` (highest first). Random routing scores 0.5."""
    n = len(ys)
    order = np.argsort(-np.asarray(score_large, dtype=float), kind="stable")
    cum = np.concatenate([[0.0], np.cumsum((yl - ys)[order])]) / n
    pgr = cum / (yl.mean() - ys.mean())
    return float(np.mean([pgr[int(round(f * n))] for f in np.linspace(0, 1, 11)]))


# --------------------------------------------------------------------------- training


def fit_all(parts, l2d: float, l2t: float) -> tuple[fit.Sensitivity, tuple[float, float]]:
    feats, obs = observations(parts)
    design = fit.Design.build(feats)
    # the trivial flag: a fixed prior, not learned (its column is all zero in training)
    design.clip[TRIVIAL], design.mean[TRIVIAL], design.std[TRIVIAL], design.scale[TRIVIAL] = (0.0, 1.0), 0.0, 1.0, 1.0
    for j in ROUTINE:  # routine knobs no training prompt had: not a reason to be unsure
        design.scale[j] = 1e9
    model = fit.fit_sensitivity(feats, obs, design, l2_dense=l2d, l2_terms=l2t, nonnegative=NONNEGATIVE)
    model.w_dense[TRIVIAL] = 0.0
    model.fixed = {TRIVIAL: TRIVIAL_PRIOR}
    return model, reference_intercepts(model)


def cross_validate(train: dict[str, rd.LabelledSet], l2d: float, l2t: float, log=print) -> dict[str, dict]:
    """Out-of-fold ln s and sd per set (5 folds, stratified inside each set)."""
    fold_of = {name: rd.folds(ds.strata, CV_FOLDS) for name, ds in train.items()}
    oof = {name: {"log_s": np.zeros(len(ds.ids)), "sd": np.zeros(len(ds.ids))} for name, ds in train.items()}
    for k in range(CV_FOLDS):
        parts = [(ds, np.nonzero(fold_of[n] != k)[0]) for n, ds in train.items()]
        model, c = fit_all(parts, l2d, l2t)
        for n, ds in train.items():
            te = np.nonzero(fold_of[n] == k)[0]
            f = [extract(ds.prompt(i)) for i in te]  # as the gateway sees them (trivial prior included)
            oof[n]["log_s"][te] = model.log_s(f, 0.0) + intercepts_for(f, *c)
            oof[n]["sd"][te] = model.log_s_sd(f)
        log(f"    fold {k + 1}/{CV_FOLDS} done")
    return oof


def scenario_apgr(train, oof) -> dict[str, float]:
    out = {}
    for name, served, cols in SCENARIOS:
        ds = train[name]
        rows = scenario_rows(ds, cols)
        out[f"{name}:{cols[0]}->{cols[-1]}"] = apgr(oof[name]["log_s"][rows], ds.col(cols[0])[rows], ds.col(cols[-1])[rows])
    return out


def mc_flags(train) -> dict[str, np.ndarray]:
    """Per set, which prompts the gateway treats as multiple choice (their own loss scale)."""
    i = DENSE_NAMES.index("options")
    return {n: np.array([extract(ds.prompt(r)).dense[i] >= MC_OPTIONS for r in range(len(ds.ids))])
            for n, ds in train.items()}


def trades(train, oof, length_f, energy: EnergyFit, kappa: float, shifts: tuple[float, float],
           mc: dict[str, np.ndarray]) -> dict[str, tuple]:
    """Per scenario: its rows (fixed shuffled order) and their (losses, savings) per tier, ln s shifted
    by ``shifts`` (chat, multiple choice)."""
    out = {}
    for name, served, cols in SCENARIOS:
        ds = train[name]
        rows = scenario_rows(ds, cols)
        rows = rows[np.random.default_rng(rd.SPLIT_SEED).permutation(len(rows))]
        tiers = [tier_facts(m) for m in served]
        shift = np.where(mc[name][rows], shifts[1], shifts[0])
        losses, savings = tier_trades(oof[name]["log_s"][rows] + shift, oof[name]["sd"][rows], length_f[name][rows],
                                      tiers, energy, kappa)
        out[f"{name}:{'->'.join(served)}"] = (ds.subset(rows), cols, tiers, losses, savings)
    return out


def replay(tr_: dict[str, tuple], energy: EnergyFit, target: float, price: float, window: int,
           adaptive: bool = True) -> tuple[dict[str, Outcome], dict[str, float]]:
    """Every scenario's training prompts (out-of-fold predictions) through the quality budget; the
    outcomes and each stream's final price."""
    res, final = {}, {}
    for key, (ds, cols, tiers, losses, savings) in tr_.items():
        pick, prices = budget_replay(losses.tolist(), savings.tolist(), target, price, window, adaptive)
        res[key] = outcome(ds, cols, tiers, np.array(pick), energy)
        final[key] = prices[-1]
    return res, final


def choose_settings(train, oof, length_f, energy: EnergyFit, keep: float = KEEP,
                    kappa: float = KAPPA) -> tuple[tuple[float, float], float, dict]:
    """Shifts of ln s (chat, multiple choice) and the starting price for the shipped quality target:
    the lowest shifts (the most energy saved) with which the quality budget keeps every scenario >=
    ``keep``. The chat shift is chosen first, multiple-choice prompts held at the most cautious shift;
    then the multiple-choice shift. The starting price is the median price the scenarios' streams
    settle at."""
    mc = mc_flags(train)

    def run(shifts):
        tr_ = trades(train, oof, length_f, energy, kappa, shifts, mc)
        _, final = replay(tr_, energy, 1.0 - QUALITY, 10.0, WINDOW)
        price = float(np.median(list(final.values())))
        res, _ = replay(tr_, energy, 1.0 - QUALITY, price, WINDOW)
        return min(o.kept for o in res.values()) >= keep, price, res

    cautious = float(SCALE_SHIFTS[-1])
    chat = next((float(x) for x in SCALE_SHIFTS if run((float(x), cautious))[0]), cautious)
    mcs = next((float(x) for x in SCALE_SHIFTS if run((chat, float(x)))[0]), cautious)
    ok, price, res = run((chat, mcs))
    assert ok, "no setting keeps every scenario"
    return (chat, mcs), price, res


def length_model(parts, design: fit.Design) -> tuple[np.ndarray, np.ndarray, float, dict]:
    """Ridge of ln(answer tokens) (mean over the set's models with lengths) on the same design."""
    from scipy import sparse

    feats, target = [], []
    for ds, rows in parts:
        if ds.tokens is None:
            continue
        t = np.nanmean(np.where(ds.tokens > 0, ds.tokens, np.nan), axis=1)[rows]
        ok = np.isfinite(t)
        feats += [extract(ds.prompt(i)) for i in rows[ok]]
        target += list(np.log(t[ok]))
    y = np.array(target)
    X = sparse.hstack([sparse.csr_matrix(design.dense(feats)), design.terms(feats)]).tocsr()
    coef, b0 = fit.ridge(X, y, LENGTH_ALPHA * len(y) / 1000.0)
    resid = y - (X @ coef + b0)
    nd = len(DENSE_NAMES)
    stats = {"residual_var": float(np.var(resid)), "min": float(np.quantile(y, 0.001)), "max": float(np.quantile(y, 0.999)),
             "corr": float(np.corrcoef(X @ coef + b0, y)[0, 1]), "rows": len(y)}
    return coef[:nd], coef[nd:], b0, stats


def export(model: fit.Sensitivity, intercept: tuple[float, float], kappa: float, quality: dict, len_dense, len_terms, len_b0,
           len_stats: dict, energy: EnergyFit, ref_tokens: float, f_range: tuple[float, float], metadata: dict) -> dict:
    """The artefact: plain numbers, rounded so that it is small and byte-stable. The dense
    standardisation is folded into raw-unit weights and intercepts."""
    d = model.design
    r = lambda x: float(f"{x:.5g}")  # noqa: E731
    ws, wl = model.w_dense / d.std, len_dense / d.std
    for j, w in model.fixed.items():
        ws[j] += w
    s0, s0_mc = (c - float(ws @ d.mean) for c in intercept)
    l0 = len_b0 - float(wl @ d.mean)
    terms = {t: [r(model.w_terms[i]), r(len_terms[i])] for i, t in enumerate(d.vocab)
             if abs(model.w_terms[i]) >= 5e-4 or abs(len_terms[i]) >= 5e-4}
    return {
        "format": FORMAT,
        "dense_names": list(DENSE_NAMES),
        "dense_clip": [[r(lo), r(hi)] for lo, hi in d.clip],
        "dense_scale": [r(x) for x in d.scale],
        "sensitivity": {"intercept": r(s0), "mc_intercept": r(s0_mc), "dense": [r(x) for x in ws]},
        "log_tokens": {"intercept": r(l0), "dense": [r(x) for x in wl], "residual_var": r(len_stats["residual_var"]),
                       "min": r(len_stats["min"]), "max": r(len_stats["max"])},
        "terms": dict(sorted(terms.items())),
        "kappa": kappa,
        "quality": quality,
        "energy": {"c": r(energy.c), "k_total": r(energy.k_total), "k_active": r(energy.k_active),
                   "ref_tokens": r(ref_tokens), "f_min": r(f_range[0]), "f_max": r(f_range[1]),
                   "source": "ML.ENERGY v3, H100, lm-arena-chat, max_num_seqs 64, bf16, dense and MoE (bench/train_router.py)"},
        "metadata": metadata,
    }


def write_artefact(spec: dict, path: Path) -> None:
    import gzip

    text = json.dumps(spec, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    if path.suffix == ".gz":
        path.write_bytes(gzip.compress(text.encode(), mtime=0))
    else:
        path.write_text(text + "\n", encoding="utf-8")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", type=Path, default=rd.SHARED, help="../shared/routing-data")
    ap.add_argument("--extra", type=Path, default=None, help="folder with qlora_oasst/ and vicuna80/")
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT)
    ap.add_argument("--quick", action="store_true", help="skip the hyper-parameter search (first grid point)")
    ap.add_argument("--cache", type=Path, default=None, help="keep out-of-fold predictions here between runs")
    args = ap.parse_args(argv)
    t0 = time.time()
    sets = rd.load_all(args.data, args.extra)
    by = {ds.name: ds for ds in sets}
    digest = rd.data_hash(sets)
    held = {ds.name: rd.split_heldout(ds.ids, ds.strata) for ds in sets}
    train = {ds.name: ds.subset([i for i, q in enumerate(ds.ids) if q not in held[ds.name]]) for ds in sets}
    train["mmlu-pro"] = wrap_questions(train["mmlu-pro"])
    print(f"data {digest}: " + ", ".join(f"{n} {len(train[n].ids)}+{len(held[n])}" for n in by))
    energy = EnergyFit.load()

    # 1-2. hyper-parameters by cross-validation
    cv = {}
    for l2d, l2t in (L2_GRID[:1] if args.quick else L2_GRID):
        print(f"  cv l2 dense {l2d} words {l2t}")
        cached = args.cache / f"oof-{digest}-{l2d}-{l2t}.pkl" if args.cache else None
        if cached is not None and cached.exists():
            import pickle

            oof = pickle.loads(cached.read_bytes())
        else:
            oof = cross_validate(train, l2d, l2t)
            if cached is not None:
                import pickle

                cached.parent.mkdir(parents=True, exist_ok=True)
                cached.write_bytes(pickle.dumps(oof))
        ap_ = scenario_apgr(train, oof)
        cv[(l2d, l2t)] = (float(np.mean(list(ap_.values()))), ap_, oof)
        print(f"    mean APGR {cv[(l2d, l2t)][0]:.4f} " + " ".join(f"{k.split(':')[0]}={v:.3f}" for k, v in ap_.items()))
    l2d, l2t = max(cv, key=lambda k: cv[k][0])
    oof = cv[(l2d, l2t)][2]

    # 3. answer length (for the energy rule's length factor)
    parts = [(ds, np.arange(len(ds.ids))) for ds in train.values()]
    model, c = fit_all(parts, l2d, l2t)
    len_dense, len_terms, len_b0, len_stats = length_model(parts, model.design)
    print(f"  length model: corr {len_stats['corr']:.3f} on {len_stats['rows']} prompts")
    tok = {}
    for n, ds in train.items():
        fs = [extract(ds.prompt(i)) for i in range(len(ds.ids))]
        D, T = model.design.dense(fs), model.design.terms(fs)
        lt = np.clip(D @ len_dense + T @ len_terms + len_b0, len_stats["min"], len_stats["max"])
        tok[n] = np.exp(lt + len_stats["residual_var"] / 2)
    all_tok = np.concatenate(list(tok.values()))
    ref_tokens = float(round(np.median(all_tok)))
    f_range = (float(np.quantile(all_tok, 0.05) / ref_tokens), float(np.quantile(all_tok, 0.95) / ref_tokens))

    # 4. the scale of predicted losses and the starting price, on out-of-fold predictions
    # ... for each routing rule (a tier's energy saving alone, or weighted by the expected answer
    # length); the rule that saves more energy over the scenarios becomes the default
    by_rule = {}
    for rule, f in (("adequacy", {n: np.ones(len(ds.ids)) for n, ds in train.items()}),
                    ("energy", {n: np.clip(tok[n] / ref_tokens, *f_range) for n in train})):
        by_rule[rule] = choose_settings(train, oof, f, energy)
        print(f"  rule {rule}: mean energy saved {np.mean([o.saved for o in by_rule[rule][2].values()]):.4f}")
    rule = max(by_rule, key=lambda k: np.mean([o.saved for o in by_rule[k][2].values()]))
    shift, price, res = by_rule[rule]
    kappa = KAPPA
    print(f"  chosen: rule {rule}, ln-scale shift chat {shift[0]:+.3f}, multiple choice {shift[1]:+.3f}, starting "
          f"price {price:.3g} (kappa {kappa}, quality target {QUALITY}, window {WINDOW})")
    for k, o in res.items():
        print(f"    {k:80s} kept {o.kept:.3f} saved {o.saved:.3f} shares {[round(s, 2) for s in o.shares]}")

    metadata = {
        "trained_on": {n: len(ds.ids) for n, ds in train.items()},
        "extra_data": bool(args.extra) and all(n in by for n in ("oasst", "vicuna80")),
        "data_sha256_16": digest,
        "split": {"seed": rd.SPLIT_SEED, "heldout_fraction": rd.HELDOUT_FRACTION,
                  "rule": "per stratum (category / task / language): sorted ids shuffled by "
                          "random.Random(f'{seed}:{stratum}'), first round(fraction*n) held out",
                  "heldout_ids": {n: sorted(v) for n, v in held.items()}},
        "cv": {"folds": CV_FOLDS, "l2": [l2d, l2t],
               "mean_apgr_by_l2": {f"{a}/{b}": round(v[0], 4) for (a, b), v in cv.items()},
               "apgr": {k: round(v, 4) for k, v in cv[(l2d, l2t)][1].items()},
               "keep": KEEP,
               "scale_shift": {"chat": shift[0], "multiple_choice": shift[1]},
               "rule": rule,
               "saved_by_rule": {k: round(float(np.mean([o.saved for o in v[2].values()])), 4) for k, v in by_rule.items()},
               "replayed": {k: {"kept": round(o.kept, 4), "saved": round(o.saved, 4)} for k, o in res.items()}},
        "group_scales": {k: round(v, 4) for k, v in model.group_scale.items()},
        "length": {k: round(v, 4) for k, v in len_stats.items() if k != "rows"},
        "configured_abilities": CONFIGURED,
    }
    spec = export(model, (c[0] + shift[0], c[1] + shift[1]), kappa,
                  {"target": QUALITY, "price": round(price, 4), "window": WINDOW, "rule": rule}, len_dense, len_terms,
                  len_b0, len_stats, energy, ref_tokens, f_range, metadata)
    spec["version"] = hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:12]
    write_artefact(spec, args.out)
    AdequacyModel.load(args.out)  # loads
    print(f"wrote {args.out} ({args.out.stat().st_size / 1e6:.2f} MB, {len(spec['terms'])} words, version "
          f"{spec['version']}) in {time.time() - t0:.0f}s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
