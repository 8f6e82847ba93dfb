"""Train the adequacy model and write the artefact the gateway ships.

    python bench/train_router.py [--data ../shared/routing-data] [--out gateway/routing/adequacy_model.json]

What is learned (see ``gateway/routing/adequacy.py`` for how it is used):

1. **Question difficulty from many models (IRT).** For each data set, a two-parameter
   item-response model is fitted to the training rows:
   ``P(model m answers q) = sigmoid(a_q * (theta_m - b_q))``. MMLU-Pro has 31 models, the
   LLMRouter set 6 general-purpose ones (its two RAG-tuned ChatQA models and the code-only
   CodeGemma are left out: their failures are about answer format or domain, not
   difficulty). Fractional LLMRouter scores are used as soft labels.
2. **One ability axis: log parameters.** Each set's scale is mapped linearly so that
   ``theta = ln(params in billions)`` for two Llama-3.1 anchors (8B and 70.6B Instruct on
   MMLU-Pro; 8B Instruct and the Llama-3.1-derived Nemotron-51B on LLMRouter). Difficulty
   ``b_q`` then reads "the size of a Llama-3.1-class model that gets q right half of the
   time", and a deployment's tier of any size has an ability: ``ln(size)``.
3. **Difficulty from text.** Ridge regressions predict ``b`` and ``ln a`` from the request
   features (``gateway/routing/features.py``: word-presence weights over a vocabulary plus
   a few dense numbers). The ridge strength is chosen by 5-fold cross-validation inside the
   training portion, scored by APGR of the 8B -> 70B pair. The residual spread of ``b`` and
   the coupling between two tiers' outcomes are fitted on the same out-of-fold predictions.

4. **Answer length (energy).** A third ridge on the same features predicts ln(answer tokens)
   (mean of the 8B's and the 70B's, MMLU-Pro training rows; LLMRouter has no lengths). With the
   ML.ENERGY power law it gives ``AdequacyModel.route_scores``: adequacy weighed against the
   energy a smaller tier saves. ``ref_tokens`` (median out-of-fold expected length) and the
   length factor's clip range (5%..95% of out-of-fold predictions) come from the same CV.
5. **Thresholds.** Two, each the lowest-energy one that keeps 95% of the 70B's accuracy on
   out-of-fold predictions: ``default_threshold`` for plain adequacy (``predict``) and
   ``energy_threshold`` for the energy-aware score (``route_scores`` / ``choose``).

Held-out questions (25%, split by question id, stratified by MMLU-Pro category and LLMRouter
task, seed 20250611) are never used here except for the metrics written into the artefact's
metadata, which ``bench/routing_eval.py`` reproduces.
"""

from __future__ import annotations

import argparse
import csv
import gzip
import hashlib
import json
import math
import random
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from scipy import sparse
from scipy.optimize import minimize

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from gateway.routing.adequacy import FORMAT, AdequacyModel  # noqa: E402
from gateway.routing.features import DENSE_NAMES, extract, prompt_text  # noqa: E402

DEFAULT_DATA = REPO.parent / "shared" / "routing-data"
DEFAULT_OUT = REPO / "gateway" / "routing" / "adequacy_model.json"
MMLU_DIR = "mmlu-pro-model-outputs"
LLMR_DIR = "llmrouter-9-open-models"

SPLIT_SEED = 20250611
HELDOUT_FRACTION = 0.25
CV_FOLDS = 5
MIN_DF = 3  # a word must appear in this many training prompts to get a weight
RIDGE_ALPHAS = (0.3, 1.0, 3.0, 10.0)
LENGTH_ALPHAS = (1.0, 3.0, 10.0)
CLIP_Q = 0.001  # dense features are clipped to their 0.1%..99.9% training quantiles
LENGTH_CLIP_Q = 0.05  # the length factor is clipped to the 5%..95% span of out-of-fold predictions
# ref_tokens (the answer length at which the energy-aware score equals plain adequacy for the 8B -> 70B
# pair) is the median expected length over the out-of-fold training predictions.

SMALL, LARGE = "Meta-Llama-3_1-8B-Instruct", "Meta-Llama-3_1-70B-Instruct"
ANCHORS = {
    "mmlu-pro": ((SMALL, 8.0), (LARGE, 70.6)),
    "llmrouter": (("llama-3.1-8b-instruct", 8.0), ("llama-3.1-nemotron-51b-instruct", 51.0)),
}
LLMR_IRT_MODELS = (
    "mistral-7b-instruct-v0.3",
    "qwen2.5-7b-instruct",
    "llama-3.1-8b-instruct",
    "gemma-2-9b-it",
    "llama-3.3-nemotron-super-49b-v1",
    "llama-3.1-nemotron-51b-instruct",
)


# --------------------------------------------------------------------------- data


@dataclass
class Dataset:
    """Prompts x models. ``Y`` holds scores in [0, 1], NaN where missing."""

    name: str
    ids: list[str]
    strata: list[str]  # MMLU-Pro category / LLMRouter task (splitting and baselines only)
    texts: list[str]
    models: list[str]
    params: dict[str, float]
    Y: np.ndarray
    out_chars: np.ndarray | None = None  # MMLU-Pro only: characters generated per model
    files: list[Path] = field(default_factory=list)

    def subset(self, rows: np.ndarray) -> "Dataset":
        pick = lambda xs: [xs[i] for i in rows]  # noqa: E731
        oc = None if self.out_chars is None else self.out_chars[rows]
        return Dataset(self.name, pick(self.ids), pick(self.strata), pick(self.texts), self.models,
                       self.params, self.Y[rows], oc, self.files)


def _read_csv(path: Path) -> list[dict[str, str]]:
    csv.field_size_limit(sys.maxsize)
    with path.open(newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def mmlu_prompt(question: str, options: list[str]) -> str:
    """The router's view of an MMLU-Pro question: a user message with lettered options."""
    lines = [question.strip(), "Options:"] + [f"{chr(65 + i)}. {o}" for i, o in enumerate(options)]
    return prompt_text([{"role": "user", "content": "\n".join(lines)}])


def load_mmlu(folder: Path) -> Dataset:
    """Every question of a folder in the mmlu-pro-model-outputs format."""
    questions = _read_csv(folder / "questions.csv")
    correct = {r["question_id"]: r for r in _read_csv(folder / "correct.csv")}
    chars = {r["question_id"]: r for r in _read_csv(folder / "output_chars.csv")}
    meta = _read_csv(folder / "models.csv")
    models = [m["model"] for m in meta]
    params = {m["model"]: float(m["params_total_b"]) for m in meta if m["params_total_b"]}
    ids, strata, texts, rows, lens = [], [], [], [], []
    cell = lambda v: float(v) if v not in ("", None) else math.nan  # noqa: E731
    for q in questions:
        qid = q["question_id"]
        if qid not in correct:
            continue
        ids.append(qid)
        strata.append(q["category"])
        texts.append(mmlu_prompt(q["question"], json.loads(q["options_json"])))
        rows.append([cell(correct[qid].get(m)) for m in models])
        lens.append([cell(chars.get(qid, {}).get(m)) for m in models])
    files = [folder / n for n in ("questions.csv", "correct.csv", "output_chars.csv", "models.csv")]
    return Dataset("mmlu-pro", ids, strata, texts, models, params, np.array(rows), np.array(lens), files)


def llmrouter_prompt(query: str, choices: str | None) -> str:
    """Multiple-choice rows keep their options outside ``query``; put them back."""
    text = query.strip()
    if choices:
        try:
            opts = json.loads(choices.replace("'", '"')) if choices.startswith("[") else None
        except ValueError:
            opts = None
        if isinstance(opts, list) and opts:
            text += "\nOptions:\n" + "\n".join(f"{chr(65 + i)}. {o}" for i, o in enumerate(opts))
        else:
            text += "\n" + choices
    return prompt_text([{"role": "user", "content": text}])


def load_llmrouter(folder: Path) -> Dataset:
    """LLMRouter rows, de-duplicated on the stripped query (first row kept)."""
    cands = json.loads((folder / "llm_candidates.json").read_text())
    params = {m: float(str(v["size"]).rstrip("Bb")) for m, v in cands.items() if v.get("size")}
    seen: set[str] = set()
    ids, strata, texts, rows = [], [], [], []
    models: list[str] | None = None
    with (folder / "routing.jsonl").open(encoding="utf-8") as f:
        for line in f:
            r = json.loads(line)
            key = r["query"].strip()
            if key in seen:
                continue
            seen.add(key)
            models = models or sorted(r["scores"])
            ids.append(hashlib.sha1(key.encode()).hexdigest()[:12])
            strata.append(r["task_name"])
            texts.append(llmrouter_prompt(r["query"], r.get("choices")))
            rows.append([float(r["scores"].get(m, math.nan)) for m in models])
    files = [folder / "routing.jsonl", folder / "llm_candidates.json"]
    return Dataset("llmrouter", ids, strata, texts, models or [], params, np.array(rows), None, files)


def data_hash(datasets: list[Dataset]) -> str:
    h = hashlib.sha256()
    for ds in datasets:
        for p in ds.files:
            h.update(p.name.encode())
            h.update(p.read_bytes())
    return h.hexdigest()[:16]


def split_heldout(ids: list[str], strata: list[str], seed: int = SPLIT_SEED,
                  fraction: float = HELDOUT_FRACTION) -> set[str]:
    """Held-out ids: within each stratum, sorted ids are shuffled by ``seed`` and the first
    ``round(fraction * n)`` are held out."""
    by: dict[str, list[str]] = {}
    for i, s in zip(ids, strata):
        by.setdefault(s, []).append(i)
    out: set[str] = set()
    for s in sorted(by):
        group = sorted(by[s])
        random.Random(f"{seed}:{s}").shuffle(group)
        out.update(group[: round(fraction * len(group))])
    return out


def folds(strata: list[str], k: int, seed: int) -> list[np.ndarray]:
    """Stratified k-fold assignment: fold index per row."""
    fold = np.zeros(len(strata), dtype=int)
    by: dict[str, list[int]] = {}
    for i, s in enumerate(strata):
        by.setdefault(s, []).append(i)
    for s in sorted(by):
        rows = by[s]
        random.Random(f"{seed}:cv:{s}").shuffle(rows)
        for j, r in enumerate(rows):
            fold[r] = j % k
    return [np.nonzero(fold == f)[0] for f in range(k)]


# --------------------------------------------------------------------------- IRT


def fit_irt(Y: np.ndarray, l2_b: float = 0.05, l2_loga: float = 1.0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """2PL item response model by penalised maximum likelihood (L-BFGS).

    Returns (theta per model, a per question, b per question) with
    ``P(correct) = sigmoid(a * (theta - b))``. Soft labels in [0, 1] are allowed; NaN is
    missing. Mean theta is pinned to 0 (the scale is re-anchored afterwards anyway).
    """
    n, m = Y.shape
    mask = ~np.isnan(Y)
    y = np.nan_to_num(Y)

    def loss(v: np.ndarray) -> tuple[float, np.ndarray]:
        th, la, b = v[:m], v[m:m + n], v[m + n:]
        a = np.exp(la)
        z = a[:, None] * (th[None, :] - b[:, None])
        nll = np.where(mask, y * np.logaddexp(0, -z) + (1 - y) * np.logaddexp(0, z), 0.0).sum()
        r = np.where(mask, 1 / (1 + np.exp(-z)) - y, 0.0)
        g_th = (r * a[:, None]).sum(0) + 2 * th.mean()
        g_b = -(r * a[:, None]).sum(1) + 2 * l2_b * b
        g_la = (r * z).sum(1) + 2 * l2_loga * la
        total = nll + l2_b * b @ b + l2_loga * la @ la + m * th.mean() ** 2
        return total, np.concatenate([g_th, g_la, g_b])

    res = minimize(loss, np.zeros(m + 2 * n), jac=True, method="L-BFGS-B", options={"maxiter": 1000})
    th, la, b = res.x[:m], res.x[m:m + n], res.x[m + n:]
    return th, np.exp(la), b


@dataclass
class Irt:
    """An IRT fit re-expressed on the log-size axis: theta = ln(params in billions)."""

    theta: dict[str, float]
    a: np.ndarray
    b: np.ndarray


def fit_anchored_irt(ds: Dataset, use_models: list[str]) -> Irt:
    cols = [ds.models.index(m) for m in use_models]
    th, a, b = fit_irt(ds.Y[:, cols])
    (lo_m, lo_s), (hi_m, hi_s) = ANCHORS[ds.name]
    t_lo, t_hi = th[use_models.index(lo_m)], th[use_models.index(hi_m)]
    scale = (math.log(hi_s) - math.log(lo_s)) / (t_hi - t_lo)
    shift = math.log(lo_s) - scale * t_lo
    theta = {m: float(scale * t + shift) for m, t in zip(use_models, th)}
    return Irt(theta, a / scale, scale * b + shift)


def irt_models(ds: Dataset) -> list[str]:
    return list(ds.models) if ds.name == "mmlu-pro" else [m for m in LLMR_IRT_MODELS if m in ds.models]


# --------------------------------------------------------------------------- features


def featurize(texts: list[str]) -> list:
    return [extract(t) for t in texts]


def build_vocab(feats: list, min_df: int = MIN_DF) -> list[str]:
    df: dict[str, int] = {}
    for f in feats:
        for t in f.terms:
            df[t] = df.get(t, 0) + 1
    return sorted(t for t, c in df.items() if c >= min_df)


def design(feats: list, vocab: list[str], mean: np.ndarray, std: np.ndarray, clip: np.ndarray) -> sparse.csr_matrix:
    """[terms / sqrt(#distinct words) | standardised dense features, clipped to ``clip`` (lo, hi)]."""
    index = {t: i for i, t in enumerate(vocab)}
    rows, cols, vals = [], [], []
    for r, f in enumerate(feats):
        w = 1 / math.sqrt(len(f.terms)) if f.terms else 0.0
        for t in f.terms:
            j = index.get(t)
            if j is not None:
                rows.append(r), cols.append(j), vals.append(w)
    terms = sparse.csr_matrix((vals, (rows, cols)), shape=(len(feats), len(vocab)))
    dense = (np.clip(np.array([f.dense for f in feats]), clip[:, 0], clip[:, 1]) - mean) / std
    return sparse.hstack([terms, sparse.csr_matrix(dense)]).tocsr()


def dense_stats(feats: list) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Mean, std and clip range (0.1% and 99.9% quantiles) of the dense features; the
    runtime clips to the same range, so a prompt unlike any in training does not extrapolate."""
    d = np.array([f.dense for f in feats])
    clip = np.stack([np.quantile(d, CLIP_Q, axis=0), np.quantile(d, 1 - CLIP_Q, axis=0)], 1)
    d = np.clip(d, clip[:, 0], clip[:, 1])
    std = d.std(0)
    return d.mean(0), np.where(std > 1e-9, std, 1.0), clip  # constant features (no data varies them) keep weight 0


def ridge(X: sparse.csr_matrix, y: np.ndarray, alpha: float) -> tuple[np.ndarray, float]:
    """Ridge regression with an unpenalised intercept (conjugate gradient, deterministic)."""
    from sklearn.linear_model import Ridge

    m = Ridge(alpha=alpha, solver="sparse_cg", tol=1e-6, max_iter=2000).fit(X, y)
    return m.coef_.astype(float), float(m.intercept_)


# --------------------------------------------------------------------------- the model


def sigmoid(z):
    return 1 / (1 + np.exp(-z))


def p_correct(b: np.ndarray, a: np.ndarray, size: float, sigma_b: float) -> np.ndarray:
    """Marginal P(correct) for a tier of ``size`` billions, averaging over the difficulty's
    uncertainty N(b, sigma_b^2) with the probit approximation (same as adequacy.py)."""
    return sigmoid(a * (math.log(size) - b) / np.sqrt(1 + (math.pi / 8) * (a * sigma_b) ** 2))


def lose_prob(p_small: np.ndarray, p_large: np.ndarray, rho: float) -> np.ndarray:
    """P(large right and small wrong): a mix of the nested coupling (rho) and independence."""
    return rho * np.maximum(p_large - p_small, 0) + (1 - rho) * p_large * (1 - p_small)


def fit_rho(p_s: np.ndarray, p_l: np.ndarray, lost: np.ndarray) -> float:
    """Maximum-likelihood coupling on a grid (out-of-fold predictions)."""
    best, best_ll = 0.0, -np.inf
    for rho in np.linspace(0, 1, 41):
        q = np.clip(lose_prob(p_s, p_l, rho), 1e-4, 1 - 1e-4)
        ll = float((lost * np.log(q) + (1 - lost) * np.log(1 - q)).sum())
        if ll > best_ll:
            best, best_ll = float(rho), ll
    return best


@dataclass
class Fitted:
    vocab: list[str]
    mean: np.ndarray
    std: np.ndarray
    clip: np.ndarray
    wb: np.ndarray
    b0: float
    wa: np.ndarray
    a0: float
    wl: np.ndarray
    l0: float


def fit_text_model(feats: list, b: np.ndarray, la: np.ndarray, alpha: float,
                   len_rows: np.ndarray, log_tokens: np.ndarray, len_alpha: float) -> Fitted:
    """Ridge fits of b and ln a (all rows) and of ln(answer tokens) (``len_rows``: the rows that
    have lengths, MMLU-Pro) on one design matrix."""
    vocab = build_vocab(feats)
    mean, std, clip = dense_stats(feats)
    X = design(feats, vocab, mean, std, clip)
    wb, b0 = ridge(X, b, alpha)
    wa, a0 = ridge(X, la, alpha * 3)  # discrimination is noisier: shrink it harder
    wl, l0 = ridge(X[len_rows], log_tokens, len_alpha)
    return Fitted(vocab, mean, std, clip, wb, b0, wa, a0, wl, l0)


def predict_text_model(fm: Fitted, feats: list) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(b, a, ln tokens) per prompt, as adequacy.py computes them."""
    X = design(feats, fm.vocab, fm.mean, fm.std, fm.clip)
    return X @ fm.wb + fm.b0, np.exp(np.clip(X @ fm.wa + fm.a0, -3, 2)), X @ fm.wl + fm.l0


def export(fm: Fitted, sigma_b: float, rho: float, threshold: float, energy_threshold: float, energy: dict,
           log_tokens: dict, metadata: dict) -> dict:
    """The artefact: plain numbers, rounded so that it is small and byte-stable."""
    nv = len(fm.vocab)
    r = lambda x: float(f"{x:.5g}")  # noqa: E731
    terms = {t: [r(fm.wb[i]), r(fm.wa[i]), r(fm.wl[i])] for i, t in enumerate(fm.vocab)
             if abs(fm.wb[i]) >= 5e-4 or abs(fm.wa[i]) >= 5e-4 or abs(fm.wl[i]) >= 5e-4}
    # fold the standardisation into the dense weights and the intercepts
    wbd, wad, wld = fm.wb[nv:] / fm.std, fm.wa[nv:] / fm.std, fm.wl[nv:] / fm.std
    return {
        "format": FORMAT,
        "dense_names": list(DENSE_NAMES),
        "dense_clip": [[r(lo), r(hi)] for lo, hi in fm.clip],
        "b": {"intercept": r(fm.b0 - float(wbd @ fm.mean)), "dense": [r(x) for x in wbd]},
        "log_a": {"intercept": r(fm.a0 - float(wad @ fm.mean)), "dense": [r(x) for x in wad]},
        "log_tokens": {"intercept": r(fm.l0 - float(wld @ fm.mean)), "dense": [r(x) for x in wld],
                       **{k: r(v) for k, v in log_tokens.items()}},
        "terms": dict(sorted(terms.items())),
        "sigma_b": r(sigma_b),
        "rho": r(rho),
        "energy": {k: (r(v) if isinstance(v, float) else v) for k, v in energy.items()},
        "default_threshold": r(threshold),
        "energy_threshold": r(energy_threshold),
        "metadata": metadata,
    }


# --------------------------------------------------------------------------- training


def pair_log_tokens(ds: Dataset) -> np.ndarray:
    """Target of the length model: mean of ln(answer tokens) of the 8B and the 70B (MMLU-Pro)."""
    from routing_eval import output_tokens

    return 0.5 * (np.log(output_tokens(ds, SMALL)) + np.log(output_tokens(ds, LARGE)))


def stack(parts: list[tuple[Dataset, Irt]]) -> tuple[list, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Features, b, ln a of all rows; the rows with answer lengths and their ln-token target."""
    feats, b, la, len_rows, lt = [], [], [], [], []
    for ds, irt in parts:
        if ds.out_chars is not None:
            len_rows.append(np.arange(len(feats), len(feats) + len(ds.ids)))
            lt.append(pair_log_tokens(ds))
        feats += featurize(ds.texts)
        b.append(irt.b)
        la.append(np.log(irt.a))
    return feats, np.concatenate(b), np.concatenate(la), np.concatenate(len_rows), np.concatenate(lt)


def pair_cols(ds: Dataset) -> tuple[int, int]:
    return ds.models.index(SMALL), ds.models.index(LARGE)


def length_factor(tokens: np.ndarray, ref_tokens: float, f_min: float, f_max: float) -> np.ndarray:
    return np.clip(tokens / ref_tokens, f_min, f_max)


def energy_score(adequacy: np.ndarray, f: np.ndarray) -> np.ndarray:
    """adequacy.py's route score for the 8B -> 70B pair (size factor g = 1 there)."""
    return 1 - (1 - adequacy) / f


def cross_validate(mmlu: Dataset, llmr: Dataset, alphas=RIDGE_ALPHAS, len_alphas=LENGTH_ALPHAS, log=print) -> dict:
    """Out-of-fold b, a and ln tokens on MMLU-Pro training rows for each alpha (LLMRouter rows
    always train the difficulty part)."""
    from routing_eval import apgr_curve  # the same metric code as the evaluation

    llmr_irt = fit_anchored_irt(llmr, irt_models(llmr))
    s, l = pair_cols(mmlu)
    target_lt = pair_log_tokens(mmlu)
    out = {}
    fs = folds(mmlu.strata, CV_FOLDS, SPLIT_SEED)
    irts = []
    for te in fs:
        tr = np.setdiff1d(np.arange(len(mmlu.ids)), te)
        irts.append((tr, te, fit_anchored_irt(mmlu.subset(tr), irt_models(mmlu))))
    full = fit_anchored_irt(mmlu, irt_models(mmlu))  # reference difficulty for the residual spread
    lt_oof = {a: np.zeros(len(mmlu.ids)) for a in len_alphas}
    for alpha in alphas:
        b_oof, a_oof = np.zeros(len(mmlu.ids)), np.zeros(len(mmlu.ids))
        for tr, te, irt in irts:
            feats, b, la, len_rows, lt = stack([(mmlu.subset(tr), irt), (llmr, llmr_irt)])
            for k, len_alpha in enumerate(len_alphas if alpha == alphas[0] else len_alphas[:1]):
                fm = fit_text_model(feats, b, la, alpha, len_rows, lt, len_alpha)
                pb, pa, plt = predict_text_model(fm, featurize([mmlu.texts[i] for i in te]))
                if alpha == alphas[0]:
                    lt_oof[len_alpha][te] = plt
                if k == 0:
                    b_oof[te], a_oof[te] = pb, pa
        sigma_b = float(np.std(b_oof - full.b))
        ps = p_correct(b_oof, a_oof, 8.0, sigma_b)
        pl = p_correct(b_oof, a_oof, 70.6, sigma_b)
        rho = fit_rho(ps, pl, (mmlu.Y[:, l] == 1) & (mmlu.Y[:, s] == 0))
        score = lose_prob(ps, pl, rho)
        val = apgr_curve(score, mmlu.Y[:, s], mmlu.Y[:, l])["apgr"]
        log(f"  cv alpha={alpha:<5g} APGR(8B->70B)={val:.4f} sigma_b={sigma_b:.3f} rho={rho:.3f}")
        out[alpha] = dict(apgr=val, sigma_b=sigma_b, rho=rho, b=b_oof, a=a_oof)
    length = {}
    for len_alpha, pred in lt_oof.items():
        mse = float(np.mean((pred - target_lt) ** 2))
        corr = float(np.corrcoef(pred, target_lt)[0, 1])
        log(f"  cv length alpha={len_alpha:<5g} mse(ln tokens)={mse:.4f} corr={corr:.3f}")
        length[len_alpha] = dict(mse=mse, corr=corr, pred=pred)
    return {"difficulty": out, "length": length}


def choose_threshold(score: np.ndarray, ys: np.ndarray, yl: np.ndarray, e_s: np.ndarray, e_l: np.ndarray,
                     keep: float = 0.95) -> float:
    """Lowest-energy threshold on out-of-fold scores that keeps ``keep`` of the large
    model's accuracy, raised to the next 0.01 (a round, slightly safer number)."""
    from routing_eval import threshold_sweep

    sweep = threshold_sweep(score, ys, yl, e_s, e_l)
    ok = [t for t in sweep if t["acc"] >= keep * yl.mean()]
    best = min(ok, key=lambda t: t["energy"])
    return math.ceil(best["threshold"] * 100) / 100


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", type=Path, default=DEFAULT_DATA)
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = ap.parse_args(argv)
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import routing_eval as ev

    t0 = time.time()
    mmlu_all, llmr_all = load_mmlu(args.data / MMLU_DIR), load_llmrouter(args.data / LLMR_DIR)
    digest = data_hash([mmlu_all, llmr_all])
    held = {
        "mmlu-pro": split_heldout(mmlu_all.ids, mmlu_all.strata),
        "llmrouter": split_heldout(llmr_all.ids, llmr_all.strata),
    }
    train_rows = lambda ds: np.array([i for i, q in enumerate(ds.ids) if q not in held[ds.name]])  # noqa: E731
    mmlu, llmr = mmlu_all.subset(train_rows(mmlu_all)), llmr_all.subset(train_rows(llmr_all))
    print(f"data {digest}: MMLU-Pro {len(mmlu.ids)} train / {len(held['mmlu-pro'])} held out; "
          f"LLMRouter {len(llmr.ids)} train / {len(held['llmrouter'])} held out")

    cv = cross_validate(mmlu, llmr)
    cvd, cvl = cv["difficulty"], cv["length"]
    alpha = max(cvd, key=lambda k: cvd[k]["apgr"])
    len_alpha = min(cvl, key=lambda k: cvl[k]["mse"])
    sigma_b, rho = cvd[alpha]["sigma_b"], cvd[alpha]["rho"]
    print(f"chosen alpha={alpha} (cv APGR {cvd[alpha]['apgr']:.4f}), length alpha={len_alpha} "
          f"(cv corr {cvl[len_alpha]['corr']:.3f})")

    # the length model's spread and the length factor's clip range, from out-of-fold predictions
    target_lt = pair_log_tokens(mmlu)
    lt_oof = cvl[len_alpha]["pred"]
    residual_var = float(np.var(target_lt - lt_oof))
    tokens_oof = np.exp(lt_oof + residual_var / 2)
    ref_tokens = float(round(np.median(tokens_oof)))
    f_min, f_max = (float(np.quantile(tokens_oof, q)) / ref_tokens for q in (LENGTH_CLIP_Q, 1 - LENGTH_CLIP_Q))
    log_tokens = {"residual_var": residual_var, "min": float(np.quantile(target_lt, CLIP_Q)),
                  "max": float(np.quantile(target_lt, 1 - CLIP_Q))}
    energy_model = ev.EnergyModel.load(args.data.parent / "mlenergy_v3_llm_configs.csv")
    energy = {"c": energy_model.c, "k": energy_model.k, "ref_tokens": ref_tokens, "ref_sizes": [8.0, 70.6],
              "f_min": f_min, "f_max": f_max,
              "source": "ML.ENERGY v3, H100, lm-arena-chat, max_num_seqs 64, bf16 dense (bench/routing_eval.py)"}

    # thresholds, from the out-of-fold predictions of the chosen alphas: one for plain adequacy
    # (AdequacyModel.predict, the round-1 rule) and one for the energy-aware score (route_scores)
    s, l = pair_cols(mmlu)
    b_oof, a_oof = cvd[alpha]["b"], cvd[alpha]["a"]
    ps, pl = p_correct(b_oof, a_oof, 8.0, sigma_b), p_correct(b_oof, a_oof, 70.6, sigma_b)
    adequacy_oof = 1 - lose_prob(ps, pl, rho)
    score_oof = energy_score(adequacy_oof, length_factor(tokens_oof, ref_tokens, f_min, f_max))
    e_s, e_l = ev.pair_energy(mmlu, SMALL, LARGE, energy_model)
    ys, yl = mmlu.Y[:, s], mmlu.Y[:, l]
    threshold = choose_threshold(adequacy_oof, ys, yl, e_s, e_l)
    energy_threshold = choose_threshold(score_oof, ys, yl, e_s, e_l)
    cv_saved = {name: ev.saved_at(ev.threshold_sweep(x, ys, yl, e_s, e_l), yl.mean())
                for name, x in (("adequacy", adequacy_oof), ("energy_score", score_oof))}
    print(f"thresholds: adequacy {threshold}, energy-aware {energy_threshold} (cv energy saved at 95%: "
          f"{cv_saved}); ref_tokens {ref_tokens:.0f}, length factor clip [{f_min:.3f}, {f_max:.3f}]")

    mmlu_irt = fit_anchored_irt(mmlu, irt_models(mmlu))
    llmr_irt = fit_anchored_irt(llmr, irt_models(llmr))
    feats, b, la, len_rows, lt = stack([(mmlu, mmlu_irt), (llmr, llmr_irt)])
    fm = fit_text_model(feats, b, la, alpha, len_rows, lt, len_alpha)
    metadata = {
        "trained_on": {"mmlu-pro": len(mmlu.ids), "llmrouter": len(llmr.ids)},
        "data_sha256_16": digest,
        "split": {"seed": SPLIT_SEED, "heldout_fraction": HELDOUT_FRACTION,
                  "rule": "per stratum (MMLU-Pro category, LLMRouter task_name): sorted ids shuffled by "
                          "random.Random(f'{seed}:{stratum}'), first round(fraction*n) held out",
                  "llmrouter_id": "sha1(query.strip())[:12]; rows de-duplicated on query.strip()",
                  "heldout_ids": {k: sorted(v) for k, v in held.items()}},
        "cv": {"folds": CV_FOLDS, "alpha": alpha,
               "apgr_by_alpha": {str(k): round(v["apgr"], 4) for k, v in cvd.items()},
               "length_alpha": len_alpha,
               "length_corr_by_alpha": {str(k): round(v["corr"], 4) for k, v in cvl.items()},
               "energy_saved_at_95pct": {k: round(v, 4) for k, v in cv_saved.items()}},
        "abilities_ln_params": {ds: {m: round(t, 3) for m, t in irt.theta.items()}
                                for ds, irt in (("mmlu-pro", mmlu_irt), ("llmrouter", llmr_irt))},
        "label": "adequate = small tier's answer scores at least the top tier's (0/1: small right or large wrong)",
        "length_target": "mean of ln(output_chars / 4) of Llama-3.1-8B- and 70B-Instruct on MMLU-Pro training rows",
    }
    spec = export(fm, sigma_b, rho, threshold, energy_threshold, energy, log_tokens, metadata)
    # held-out metrics, computed through the exported pure-Python model exactly as the eval does
    model = AdequacyModel(spec)
    spec["metadata"]["heldout"] = ev.heldout_summary(model, mmlu_all, held["mmlu-pro"], energy_model)
    spec["version"] = hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:12]
    write_artefact(spec, args.out)
    print(f"wrote {args.out} ({args.out.stat().st_size / 1e6:.2f} MB, {len(spec['terms'])} terms, "
          f"version {spec['version']}) in {time.time() - t0:.0f}s")
    print("held-out:", json.dumps(spec["metadata"]["heldout"]))
    return 0


def write_artefact(spec: dict, path: Path) -> None:
    text = json.dumps(spec, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    if path.suffix == ".gz":
        path.write_bytes(gzip.compress(text.encode(), mtime=0))
    else:
        path.write_text(text + "\n", encoding="utf-8")


if __name__ == "__main__":
    raise SystemExit(main())
