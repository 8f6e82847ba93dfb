"""Labelled prompts for training and checking the router: who answered how well, per prompt.

Every set becomes a :class:`LabelledSet`: prompts as chat ``messages`` (what a client would
send; ``prompt(i)`` is the router's view, see ``gateway/routing/features.py``), models, a quality matrix ``Y`` in [0, 1] (NaN = missing),
answer lengths in tokens where the source has them, and the *ladders*: models of one family
and training recipe that differ only in size, so that the quality gained between two of them
is the gain from size alone (``ln(size ratio)`` on the router's ability axis).

Sources (see each folder's README for licence, commit and caveats):

in ``../shared/routing-data/``
  * ``mmlu-pro``: MMLU-Pro, 31 models, right/wrong (kind ``mc``)
  * ``llmrouter``: LLMRouter, 14 task types, scores in [0, 1] (kind ``tasks``)
  * ``routellm-*``: RouteLLM's MT-Bench (judge 1-10), GSM8K and MMLU (right/wrong),
    Mixtral-8x7B vs GPT-4 (kinds ``judge`` / ``math`` / ``mc``)

in the extra folder (``--extra``, built by ``bench/routing_sources/extract.py`` from public
GitHub snapshots; not shipped with the repository):
  * ``oasst``: 953 real OpenAssistant user prompts (56% not English), Guanaco 7B/13B/33B/65B,
    Vicuna-13B, GPT-3.5, GPT-4; GPT-4 pairwise preferences, quality = a model's win rate
    against the six others on that prompt (kind ``preference``)
  * ``vicuna80``: the 80 Vicuna-bench chat prompts, GPT-4 1-10 scores of 41 models, among
    them LLaMA-1 7B/13B/33B/65B ladders trained on the same data (kind ``judge``)

Only the standard library and numpy.
"""

from __future__ import annotations

import csv
import hashlib
import json
import math
import sys
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from gateway.routing.features import Prompt, prompt_of  # noqa: E402

Messages = list[dict[str, str]]

SHARED = REPO.parent / "shared" / "routing-data"
MMLU_DIR, LLMR_DIR, ROUTELLM_DIR = "mmlu-pro-model-outputs", "llmrouter-9-open-models", "routellm-evals"

# MMLU-Pro's pair of record (the held-out check): Llama-3.1 8B -> 70B Instruct.
MMLU_SMALL, MMLU_LARGE = "Meta-Llama-3_1-8B-Instruct", "Meta-Llama-3_1-70B-Instruct"


@dataclass
class LabelledSet:
    """Prompts x models. ``Y`` holds quality in [0, 1], NaN where missing."""

    name: str
    kind: str  # mc | tasks | judge | math | preference
    ids: list[str]
    messages: list[Messages]
    strata: list[str]  # category / task type (splits and per-category baselines only; never a feature)
    models: list[str]
    sizes: dict[str, float]  # total parameters in billions (same-family ladders only need ratios)
    Y: np.ndarray
    tokens: np.ndarray | None = None  # answer tokens per prompt and model, NaN where unknown
    ladders: list[tuple[str, ...]] = field(default_factory=list)  # same recipe, ascending size
    files: list[Path] = field(default_factory=list)

    def subset(self, rows) -> "LabelledSet":
        rows = np.asarray(rows, dtype=int)
        pick = lambda xs: [xs[i] for i in rows]  # noqa: E731
        tok = None if self.tokens is None else self.tokens[rows]
        return LabelledSet(self.name, self.kind, pick(self.ids), pick(self.messages), pick(self.strata), self.models,
                           self.sizes, self.Y[rows], tok, self.ladders, self.files)

    def prompt(self, i: int) -> Prompt:
        return prompt_of(self.messages[i])

    def col(self, model: str) -> np.ndarray:
        return self.Y[:, self.models.index(model)]

    def answer_tokens(self, model: str) -> np.ndarray:
        """Answer tokens of ``model`` per prompt; missing ones get the model's median (or 1 without lengths)."""
        if self.tokens is None or not np.isfinite(self.tokens).any():
            return np.ones(len(self.ids))
        t = self.tokens[:, self.models.index(model)]
        med = np.nanmedian(t) if np.isfinite(t).any() else np.nanmedian(self.tokens)
        return np.where(np.isnan(t), med, t)


def _read_csv(path: Path) -> list[dict[str, str]]:
    csv.field_size_limit(sys.maxsize)
    with path.open(newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def _cell(v: str | None) -> float:
    return float(v) if v not in ("", None) else math.nan


def user(text: str) -> Messages:
    return [{"role": "user", "content": text}]


def mmlu_prompt(question: str, options: list[str]) -> Messages:
    """The router's view of a multiple-choice question: one user message with lettered options."""
    lines = [question.strip(), "Options:"] + [f"{chr(65 + i)}. {o}" for i, o in enumerate(options)]
    return user("\n".join(lines))


# --------------------------------------------------------------------------- shared sets


def load_mmlu(folder: Path) -> LabelledSet:
    """Every question of a folder in the mmlu-pro-model-outputs format (models.csv may be absent:
    then the shared one is used)."""
    questions = _read_csv(folder / "questions.csv")
    correct = {r["question_id"]: r for r in _read_csv(folder / "correct.csv")}
    chars_path = folder / "output_chars.csv"
    chars = {r["question_id"]: r for r in _read_csv(chars_path)} if chars_path.exists() else {}
    models_path = folder / "models.csv" if (folder / "models.csv").exists() else SHARED / MMLU_DIR / "models.csv"
    meta = _read_csv(models_path)
    present = set(next(iter(correct.values())).keys()) if correct else set()
    models = [m["model"] for m in meta if m["model"] in present]
    sizes = {m["model"]: float(m["params_total_b"]) for m in meta if m["params_total_b"]}
    ids, strata, prompts, rows, lens = [], [], [], [], []
    for q in questions:
        qid = q["question_id"]
        if qid not in correct:
            continue
        ids.append(qid)
        strata.append(q["category"])
        prompts.append(mmlu_prompt(q["question"], json.loads(q["options_json"])))
        rows.append([_cell(correct[qid].get(m)) for m in models])
        lens.append([_cell(chars.get(qid, {}).get(m)) / 4.0 for m in models])
    ladders = [
        (MMLU_SMALL, MMLU_LARGE),
        ("Meta-Llama-3_1-8B", "Meta-Llama-3_1-70B"),
        ("Meta-Llama-3-8B", "Meta-Llama-3-70B"),
        ("Llama-2-7b-hf", "Llama-2-13b-hf", "Llama-2-70b-hf"),
        ("Qwen1.5-7B-Chat", "Qwen1.5-72B-Chat"),
        ("Yi-6B", "Yi-34B"),
    ]
    ladders = [lad for lad in ladders if all(m in models for m in lad)]
    files = [folder / "questions.csv", folder / "correct.csv"] + ([chars_path] if chars else [])
    return LabelledSet("mmlu-pro", "mc", ids, prompts, strata, models, sizes, np.array(rows, dtype=float),
                       np.array(lens, dtype=float), ladders, files)


def _choices_text(query: str, choices: str | None) -> str:
    """LLMRouter's multiple-choice rows keep their options outside ``query``; put them back."""
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
    return text


LLMR_MODELS = ("mistral-7b-instruct-v0.3", "qwen2.5-7b-instruct", "llama-3.1-8b-instruct", "gemma-2-9b-it",
               "llama-3.3-nemotron-super-49b-v1", "llama-3.1-nemotron-51b-instruct")  # not the RAG-tuned ChatQA, not CodeGemma


def load_llmrouter(folder: Path) -> LabelledSet:
    """LLMRouter rows, de-duplicated on the stripped query (first row kept)."""
    cands = json.loads((folder / "llm_candidates.json").read_text())
    sizes = {m: float(str(v["size"]).rstrip("Bb")) for m, v in cands.items() if v.get("size")}
    seen: set[str] = set()
    ids, strata, prompts, rows = [], [], [], []
    with (folder / "routing.jsonl").open(encoding="utf-8") as f:
        for line in f:
            r = json.loads(line)
            key = r["query"].strip()
            if key in seen:
                continue
            seen.add(key)
            ids.append(hashlib.sha1(key.encode()).hexdigest()[:12])
            strata.append(r["task_name"])
            prompts.append(user(_choices_text(r["query"], r.get("choices"))))
            rows.append([float(r["scores"].get(m, math.nan)) for m in LLMR_MODELS])
    # Nemotron-51B is Llama-3.1-70B pruned and distilled: the same recipe family as the 8B
    ladders = [("llama-3.1-8b-instruct", "llama-3.1-nemotron-51b-instruct")]
    return LabelledSet("llmrouter", "tasks", ids, prompts, strata, list(LLMR_MODELS), sizes, np.array(rows),
                       None, ladders, [folder / "routing.jsonl", folder / "llm_candidates.json"])


ROUTELLM_SMALL, ROUTELLM_LARGE = "Mixtral-8x7B-Instruct-v0.1", "gpt-4-1106-preview"


def load_routellm(folder: Path) -> list[LabelledSet]:
    """RouteLLM's three sets, Mixtral-8x7B vs GPT-4: MT-Bench first turns (judge score / 10),
    GSM8K and MMLU (right/wrong). MMLU drops duplicates, high_school_mathematics (GPT-4's 1-token
    labels are broken there, see the README) and questions that also appear in MMLU-Pro."""
    prompts = {}
    with (folder / "prompts.jsonl").open(encoding="utf-8") as f:
        for line in f:
            r = json.loads(line)
            prompts[r["prompt_id"]] = r
    scores: dict[str, dict[str, tuple[float, float]]] = defaultdict(dict)
    for r in _read_csv(folder / "scores.csv"):
        if r["turn"] == "1":
            scale = 10.0 if r["metric"] == "judge_1_10" else 1.0
            scores[r["prompt_id"]][r["model"]] = (float(r["score"]) / scale, _cell(r["output_words"]) * 4 / 3)
    models = [ROUTELLM_SMALL, ROUTELLM_LARGE]
    out = []
    for bench, name, kind in (("mt_bench", "routellm-mtbench", "judge"), ("gsm8k", "routellm-gsm8k", "math"),
                              ("mmlu", "routellm-mmlu", "mc")):
        ids, strata, ps, rows, lens = [], [], [], [], []
        for pid, r in prompts.items():
            if r["benchmark"] != bench or pid not in scores:
                continue
            if bench == "mmlu" and (r["dup_text"] or r["in_mmlu_pro"] or r["category"] == "high_school_mathematics"):
                continue
            s = scores[pid]
            if not all(m in s for m in models):
                continue
            ids.append(pid)
            strata.append(r["category"])
            ps.append(user(r["text"]))
            rows.append([s[m][0] for m in models])
            lens.append([s[m][1] for m in models])
        out.append(LabelledSet(name, kind, ids, ps, strata, models, {ROUTELLM_SMALL: 46.7}, np.array(rows),
                               np.array(lens), [tuple(models)], [folder / "prompts.jsonl", folder / "scores.csv"]))
    return out


# --------------------------------------------------------------------------- extra sets

OASST_LADDER = ("guanaco-7b", "guanaco-13b", "guanaco-33b", "guanaco-65b")
LLAMA1_SIZES = {"7b": 6.7, "13b": 13.0, "33b": 32.5, "65b": 65.2}


def load_oasst(folder: Path) -> LabelledSet:
    """OpenAssistant prompts (last user turn as the task, earlier turns as history); quality =
    a model's GPT-4 win rate against the six other models on that prompt."""
    rows_p = [json.loads(line) for line in (folder / "prompts.jsonl").open(encoding="utf-8")]
    scores: dict[str, dict[str, float]] = defaultdict(dict)
    tokens: dict[str, dict[str, float]] = defaultdict(dict)
    for r in _read_csv(folder / "scores.csv"):
        scores[r["id"]][r["model"]] = float(r["score"])
        if r.get("answer_chars"):
            tokens[r["id"]][r["model"]] = float(r["answer_chars"]) / 4.0
    models = [*OASST_LADDER, "vicuna-13b-v0", "gpt-3.5-turbo", "gpt-4"]
    sizes = {f"guanaco-{k}": v for k, v in LLAMA1_SIZES.items()} | {"vicuna-13b-v0": 13.0}
    ids, strata, prompts, Y, T = [], [], [], [], []
    for r in rows_p:
        s = scores.get(r["id"])
        if not s:
            continue
        ids.append(r["id"])
        strata.append(r.get("lang") or "?")
        prompts.append(_dialogue(r["text"]))
        Y.append([s.get(m, math.nan) for m in models])
        T.append([tokens[r["id"]].get(m, math.nan) for m in models])
    return LabelledSet("oasst", "preference", ids, prompts, strata, models, sizes, np.array(Y), np.array(T),
                       [OASST_LADDER], [folder / "prompts.jsonl", folder / "scores.csv"])


def _dialogue(text: str) -> Messages:
    """A '### Human: ... ### Assistant: ...' transcript as chat messages."""
    messages = []
    for part in text.split("### Human:")[1:]:
        human, _, assistant = part.partition("### Assistant:")
        messages.append({"role": "user", "content": human.strip()})
        if assistant.strip():
            messages.append({"role": "assistant", "content": assistant.strip()})
    return messages or user(text)


VICUNA_LADDERS = tuple(
    tuple(f"llama1-{s}-qlora-{d}" for s in LLAMA1_SIZES) for d in ("alpaca", "chip2")
) + (OASST_LADDER,)


def load_vicuna80(folder: Path) -> LabelledSet:
    """The 80 Vicuna-bench prompts; quality = GPT-4's 1-10 score / 10 (mean over its judgments)."""
    rows_p = [json.loads(line) for line in (folder / "prompts.jsonl").open(encoding="utf-8")]
    scores: dict[str, dict[str, float]] = defaultdict(dict)
    tokens: dict[str, dict[str, float]] = defaultdict(dict)
    for r in _read_csv(folder / "scores.csv"):
        scores[r["id"]][r["model"]] = float(r["score"]) / 10.0
        if r.get("answer_words"):
            tokens[r["id"]][r["model"]] = float(r["answer_words"]) * 4 / 3
    models = sorted({m for s in scores.values() for m in s})
    sizes = {}
    for m in models:
        for k, v in LLAMA1_SIZES.items():
            if f"-{k}" in m:
                sizes[m] = v
    ids, strata, prompts, Y, T = [], [], [], [], []
    for r in rows_p:
        rid = str(r["id"])
        ids.append(f"vicuna/{rid}")
        strata.append(r["category"])
        prompts.append(user(r["text"]))
        Y.append([scores[rid].get(m, math.nan) for m in models])
        T.append([tokens[rid].get(m, math.nan) for m in models])
    ladders = [lad for lad in VICUNA_LADDERS if all(m in models for m in lad)]
    return LabelledSet("vicuna80", "judge", ids, prompts, strata, models, sizes, np.array(Y), np.array(T), ladders,
                       [folder / "prompts.jsonl", folder / "scores.csv"])


# --------------------------------------------------------------------------- all of them


def load_all(shared: Path = SHARED, extra: Path | None = None, log=print) -> list[LabelledSet]:
    sets = [load_mmlu(shared / MMLU_DIR), load_llmrouter(shared / LLMR_DIR), *load_routellm(shared / ROUTELLM_DIR)]
    if extra is not None:
        for name, loader in (("qlora_oasst", load_oasst), ("vicuna80", load_vicuna80)):
            if (extra / name / "prompts.jsonl").exists():
                sets.append(loader(extra / name))
            else:
                log(f"note: {extra / name} not found; training without it")
    return sets


def data_hash(sets: list[LabelledSet]) -> str:
    h = hashlib.sha256()
    for ds in sets:
        for p in ds.files:
            h.update(p.name.encode())
            h.update(p.read_bytes())
    return h.hexdigest()[:16]


SPLIT_SEED = 20250611
HELDOUT_FRACTION = 0.25


def split_heldout(ids: list[str], strata: list[str], seed: int = SPLIT_SEED, fraction: float = HELDOUT_FRACTION) -> set[str]:
    """Held-out ids: within each stratum, sorted ids are shuffled by ``seed`` and the first
    ``round(fraction * n)`` are held out."""
    import random

    by: dict[str, list[str]] = defaultdict(list)
    for i, s in zip(ids, strata):
        by[s].append(i)
    out: set[str] = set()
    for s in sorted(by):
        group = sorted(by[s])
        random.Random(f"{seed}:{s}").shuffle(group)
        out.update(group[: round(fraction * len(group))])
    return out


def folds(strata: list[str], k: int, seed: int = SPLIT_SEED) -> np.ndarray:
    """Stratified k-fold assignment: the fold index of each row."""
    import random

    fold = np.zeros(len(strata), dtype=int)
    by: dict[str, list[int]] = defaultdict(list)
    for i, s in enumerate(strata):
        by[s].append(i)
    for s in sorted(by):
        rows = by[s]
        random.Random(f"{seed}:cv:{s}").shuffle(rows)
        for j, r in enumerate(rows):
            fold[r] = j % k
    return fold
