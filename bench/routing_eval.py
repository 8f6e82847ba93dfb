"""Evaluate right-sizing through the real router, at the gateway's default settings.

    python bench/routing_eval.py [--extra DIR]     # the held-out 25% of every labelled set; writes
                                                   # bench/results/routing-eval.json, docs/routing-eval.md
    python bench/routing_eval.py --data DIR        # every row of a folder shaped like
                                                   # ../shared/routing-data/mmlu-pro-model-outputs/

Each scenario serves models named after real ones (``meta-llama/Llama-3.1-8B-Instruct``,
``timdettmers/guanaco-65b``, ...) from a backend pool, builds the gateway's own ``Catalog`` and
``Router`` with the default ``routing`` config (sizes, abilities and energy from the names, as in
a deployment with no ``models:`` section), and sends every prompt as an OpenAI chat request with
``model: "auto"``. The routed model's published quality on that prompt is what the user got.

Definitions (per scenario):
  * quality kept: mean quality of the routed answers / mean quality of always-top-tier.
  * energy saved: 1 - sum of J(routed) / sum of J(top tier), J = ML.ENERGY v3 J/token of the model
    (a power law in total and active parameters, H100, batch 64) x the answer's tokens where the
    set has lengths (MMLU-Pro: output characters / 4; chat sets: answer words x 4/3), else one
    token per answer (energies are then relative).
  * random at the same mix: each tier's share as routed, spread at random (expected values).
  * APGR (two-tier scenarios): prompts sent to the large model in order of the router's need
    for it (1 - score of the small tier), mean performance gap recovered over 0, 10, ..., 100%
    large calls; random = 0.5.
  * best threshold on these rows: the lowest energy over every threshold keeping >= 95% quality,
    chosen on the evaluated rows themselves (a bound for this router, not a default setting).
The output ends with ``APGR <value> energy_saved_at_95pct <value>`` for MMLU-Pro Llama-3.1
8B -> 70B: the best-threshold energy saving at >= 95% quality (the same definition as before).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
for p in (str(REPO), str(BENCH)):
    if p not in sys.path:
        sys.path.insert(0, p)

import routing_data as rd  # noqa: E402
import train_router as tr  # noqa: E402
from gateway.config import BackendConfig, ModelConfig, RoutingConfig  # noqa: E402
from gateway.context import RequestContext  # noqa: E402
from gateway.proxy.backends import BackendPool, ServedModel  # noqa: E402
from gateway.routing.adequacy import AdequacyModel  # noqa: E402
from gateway.routing.catalog import Catalog  # noqa: E402
from gateway.routing.router import Router  # noqa: E402

RESULTS = BENCH / "results" / "routing-eval.json"
DOCS = REPO / "docs" / "routing-eval.md"
README = REPO / "README.md"
BEGIN, END = "<!-- routing-eval:begin -->", "<!-- routing-eval:end -->"
# The goals, for the computed "against the targets" lines.
GOAL_KEEP, GOAL_CHAT_SAVED, GOAL_MMLU_SAVED, GOAL_APGR = 0.95, 0.40, 0.25, 0.58


# --------------------------------------------------------------------------- the real router


def make_router(served: tuple[str, ...], model: AdequacyModel | None, models: dict[str, ModelConfig] | None = None,
                routing: RoutingConfig | None = None) -> Router:
    """The gateway's Catalog and Router over one healthy backend per served model (no network)."""
    configs = [BackendConfig(name=f"b{i}", url=f"http://127.0.0.1:{9000 + i}") for i in range(len(served))]
    pool = BackendPool(configs, session_factory=lambda: None)  # type: ignore[arg-type,return-value]
    for b, name in zip(pool.backends, served):
        b.healthy = True
        b.models = {name: ServedModel(name, 131072)}
    catalog = Catalog(models or {}, pool)
    return Router(catalog, pool, routing or RoutingConfig(), model)


def route_all(router: Router, messages: list[rd.Messages], served: tuple[str, ...]) -> tuple[np.ndarray, np.ndarray]:
    """Tier index (position in ``served``) and the small tier's score per prompt, as routed for ``auto``."""
    pick, need = np.zeros(len(messages), dtype=int), np.zeros(len(messages))
    for i, msgs in enumerate(messages):
        ctx = RequestContext(request_id=f"eval-{i}", endpoint="chat", body={"model": "auto", "messages": msgs})
        route = router.route(ctx, "auto")
        pick[i] = served.index(route.model.name)
        rs = router.scores(ctx.body)
        need[i] = 1.0 - rs.scores[0] if rs is not None else 0.0
    return pick, need


# --------------------------------------------------------------------------- metrics


@dataclass
class Policy:
    name: str
    kept: float
    saved: float
    shares: list[float]


@dataclass
class ScenarioResult:
    title: str
    data: str
    n: int
    tiers: list[str]
    abilities: list[float]
    policies: list[Policy] = field(default_factory=list)
    apgr: float | None = None
    best_saved_at_95: float | None = None  # best threshold chosen on these rows
    routed_kept: float = 0.0
    routed_saved: float = 0.0
    random_kept: float = 0.0


def apgr(need_large: np.ndarray, ys: np.ndarray, yl: np.ndarray) -> float:
    return tr.apgr(need_large, ys, yl)


def best_saved(need_large: np.ndarray, ys: np.ndarray, yl: np.ndarray, es: np.ndarray, el: np.ndarray,
               keep: float = 0.95) -> float:
    """Most energy saved by any threshold on ``need_large`` (small first where it is lowest) that
    keeps >= ``keep`` of the large model's quality. Ties cannot be split by a threshold."""
    order = np.argsort(need_large, kind="stable")
    a = need_large[order]
    q = (yl.sum() + np.concatenate([[0.0], np.cumsum((ys - yl)[order])])) / yl.sum()
    e = 1 - (el.sum() + np.concatenate([[0.0], np.cumsum((es - el)[order])])) / el.sum()
    cut = np.concatenate([[True], np.append(a[1:] != a[:-1], True)])  # k where a threshold can fall
    ok = (q >= keep) & cut
    return float(e[ok].max())


def scenario(title: str, ds: rd.LabelledSet, served: tuple[str, ...], cols: tuple[str, ...], model: AdequacyModel,
             energy: tr.EnergyFit, models: dict[str, ModelConfig] | None = None) -> ScenarioResult:
    rows = tr.scenario_rows(ds, cols)
    ds = ds.subset(rows)
    router = make_router(served, model, models)
    pick, need = route_all(router, ds.messages, served)
    infos = [router.catalog.get(m) for m in served]
    Y = np.stack([ds.col(m) for m in cols], 1)
    E = np.stack([energy.j(i.params_b or i.ability_b, i.active_b or i.params_b or i.ability_b) * ds.answer_tokens(m)
                  for i, m in zip(infos, cols)], 1)
    idx = np.arange(len(pick))
    top_q, top_e = Y[:, -1].mean(), E[:, -1].sum()

    def pol(name, p):
        return Policy(name, float(Y[idx, p].mean() / top_q), float(1 - E[idx, p].sum() / top_e),
                      [float((p == k).mean()) for k in range(len(cols))])

    res = ScenarioResult(title, ds.name, len(rows), list(served), [float(i.ability_b) for i in infos])
    for k, m in enumerate(served):
        res.policies.append(pol(f"always {m.split('/')[-1]}", np.full(len(pick), k)))
    routed = pol("router (default settings)", pick)
    res.policies.append(routed)
    shares = np.array(routed.shares)
    rnd = Policy("random at the same mix", float(Y.mean(0) @ shares / top_q), float(1 - (E.sum(0) @ shares) / top_e),
                 routed.shares)
    res.policies.append(rnd)
    oracle = (Y >= Y.max(1, keepdims=True) - 1e-12).argmax(1)
    res.policies.append(pol("oracle (smallest tier with the best answer)", oracle))
    res.routed_kept, res.routed_saved, res.random_kept = routed.kept, routed.saved, rnd.kept
    if len(served) == 2:
        res.apgr = apgr(need, Y[:, 0], Y[:, 1])
        res.best_saved_at_95 = best_saved(need, Y[:, 0], Y[:, 1], E[:, 0], E[:, 1])
    return res


# --------------------------------------------------------------------------- scenarios

MMLU_SERVED = ("meta-llama/Llama-3.1-8B-Instruct", "meta-llama/Llama-3.1-70B-Instruct")
MMLU_LADDER_SERVED = ("microsoft/Phi-3-mini-4k-instruct", *MMLU_SERVED)
GUANACO = ("timdettmers/guanaco-7b", "timdettmers/guanaco-13b", "timdettmers/guanaco-33b", "timdettmers/guanaco-65b")
MIXTRAL_GPT4 = ("mistralai/Mixtral-8x7B-Instruct-v0.1", "gpt-4-1106-preview")
GPT4_CONFIG = {"gpt-4-1106-preview": ModelConfig(params_b=300.0, ability=300.0)}


def mmlu_templates(ds: rd.LabelledSet) -> dict[str, list[rd.Messages]]:
    """The same questions as other clients would send them: MMLU-Pro's own zero-shot chain-of-thought
    instruction, and behind a system prompt."""
    cot, sys_ = [], []
    for msgs, cat in zip(ds.messages, ds.strata):
        q = msgs[-1]["content"]
        cot.append([{"role": "user", "content": (
            f"The following are multiple choice questions (with answers) about {cat}. Think step by step and then "
            f'finish your answer with "the answer is (X)" where X is the correct letter choice.\n\nQuestion: {q}\n'
            "Answer: Let's think step by step.")}])
        sys_.append([{"role": "system", "content": "You are a helpful assistant."}, {"role": "user", "content": q}])
    return {"MMLU-Pro zero-shot CoT instruction": cot, "behind a system prompt": sys_}


def run(sets: dict[str, rd.LabelledSet], model: AdequacyModel, energy: tr.EnergyFit, log=print) -> list[ScenarioResult]:
    out = []

    def add(title, name, served, cols, models=None):
        if name in sets:
            r = scenario(title, sets[name], served, cols, model, energy, models)
            out.append(r)
            log(f"  {title}: kept {r.routed_kept:.3f} saved {r.routed_saved:.3f} (random at the mix kept "
                f"{r.random_kept:.3f})" + (f" APGR {r.apgr:.3f}" if r.apgr is not None else ""))

    add("MMLU-Pro: Llama-3.1 8B -> 70B", "mmlu-pro", MMLU_SERVED, (rd.MMLU_SMALL, rd.MMLU_LARGE))
    add("MMLU-Pro: Phi-3-mini -> Llama-3.1 8B -> 70B", "mmlu-pro", MMLU_LADDER_SERVED,
        ("Phi-3-mini-4k-instruct", rd.MMLU_SMALL, rd.MMLU_LARGE))
    if "mmlu-pro" in sets:
        for label, msgs in mmlu_templates(sets["mmlu-pro"]).items():
            ds = sets["mmlu-pro"]
            sets[f"mmlu-pro ({label})"] = rd.LabelledSet(ds.name, ds.kind, ds.ids, msgs, ds.strata, ds.models, ds.sizes,
                                                         ds.Y, ds.tokens, ds.ladders, ds.files)
            add(f"MMLU-Pro: Llama-3.1 8B -> 70B, {label}", f"mmlu-pro ({label})", MMLU_SERVED,
                (rd.MMLU_SMALL, rd.MMLU_LARGE))
    add("OpenAssistant chat, GPT-4 preferences: Guanaco 7B -> 13B -> 33B -> 65B", "oasst", GUANACO, rd.OASST_LADDER)
    add("OpenAssistant chat, GPT-4 preferences: Guanaco 7B -> 65B", "oasst", (GUANACO[0], GUANACO[-1]),
        (rd.OASST_LADDER[0], rd.OASST_LADDER[-1]))
    add("Vicuna-80 chat, GPT-4 scores: Guanaco 7B -> 13B -> 33B -> 65B", "vicuna80", GUANACO, rd.OASST_LADDER)
    add("Vicuna-80 chat, GPT-4 scores: LLaMA-1 Alpaca 7B -> 13B -> 33B -> 65B", "vicuna80",
        ("llama1-alpaca-7b", "llama1-alpaca-13b", "llama1-alpaca-33b", "llama1-alpaca-65b"), rd.VICUNA_LADDERS[0])
    add("LLMRouter tasks: Llama-3.1 8B -> Nemotron 51B", "llmrouter",
        ("meta-llama/Llama-3.1-8B-Instruct", "nvidia/Llama-3.1-Nemotron-51B-Instruct"),
        ("llama-3.1-8b-instruct", "llama-3.1-nemotron-51b-instruct"))
    for name, label in (("routellm-mtbench", "MT-Bench, GPT-4 scores"), ("routellm-gsm8k", "GSM8K"),
                        ("routellm-mmlu", "MMLU")):
        add(f"{label}: Mixtral-8x7B -> GPT-4 (ability 300 configured)", name, MIXTRAL_GPT4,
            (rd.ROUTELLM_SMALL, rd.ROUTELLM_LARGE), GPT4_CONFIG)
    return out


SANITY_SERVED = ("Qwen/Qwen3-1.7B", "meta-llama/Llama-3.1-8B-Instruct", "Qwen/Qwen3-32B")
SANITY_PROMPTS = (
    "hi there",
    "What is 2+2?",
    "What is the capital of France?",
    "Thanks, that helps!",
    "Write a haiku about autumn.",
    "Translate 'good morning, how are you?' into Spanish.",
    "Write a Python function that merges overlapping intervals in a list and explain its complexity.",
    "Prove that for every integer n >= 1 the sum of the first n odd numbers is n^2. Then use induction and the "
    "binomial theorem to show that a^p - a is divisible by p for every prime p and integer a. Finally, compute the "
    "number of integer solutions (x, y, z) of x + y + z = 100 with 0 <= x, y, z and x <= 40, justifying every step "
    "of the derivation and every inequality you use.",
)


def sanity(model: AdequacyModel) -> list[dict]:
    router = make_router(SANITY_SERVED, model)
    out = []
    for text in SANITY_PROMPTS:
        ctx = RequestContext(request_id="s", endpoint="chat", body={"model": "auto", "messages": rd.user(text)})
        route = router.route(ctx, "auto")
        rs = router.scores(ctx.body)
        out.append({"prompt": text, "routed": route.model.name, "reason": route.reason,
                    "adequacy": [round(a, 3) for a in rs.adequacy] if rs else []})
    return out


# --------------------------------------------------------------------------- report


def pct(x: float) -> str:
    return f"{100 * x:.1f}%"


def report(results: list[ScenarioResult], probes: list[dict], model: AdequacyModel, mode: str, args_line: str) -> str:
    lines = ["# Routing evaluation\n",
             f"Produced by `{args_line}` on {mode}; model version `{model.version}`, default quality target "
             f"{model.default_quality} (starting price {model.default_price}, window {model.default_window}, kappa "
             f"{model.kappa}). Every row is routed by the gateway's own `Router` at its "
             "default settings, prompts sent as OpenAI chat requests with `model: \"auto\"` (see the script's docstring "
             "for the definitions).\n",
             "## Summary at the default settings\n",
             "| scenario | prompts | quality kept | energy saved | random at the same mix keeps | tier shares | APGR |",
             "|---|---|---|---|---|---|---|"]
    for r in results:
        routed = next(p for p in r.policies if p.name.startswith("router"))
        lines.append(f"| {r.title} | {r.n} | {pct(r.routed_kept)} | {pct(r.routed_saved)} | {pct(r.random_kept)} | "
                     + " / ".join(f"{100 * s:.0f}%" for s in routed.shares) + " | "
                     + (f"{r.apgr:.3f}" if r.apgr is not None else "") + " |")
    lines.append("")
    for r in results:
        lines += [f"## {r.title} ({r.n} prompts)\n",
                  "Tiers (ability, Llama-3.1-equivalent billions): "
                  + ", ".join(f"`{t}` ({a:.1f})" for t, a in zip(r.tiers, r.abilities)) + "\n",
                  "| policy | quality kept | energy saved | " + " | ".join(t.split("/")[-1] for t in r.tiers) + " |",
                  "|---|---|---|" + "---|" * len(r.tiers)]
        for p in r.policies:
            lines.append(f"| {p.name} | {pct(p.kept)} | {pct(p.saved)} | " + " | ".join(f"{100 * s:.0f}%" for s in p.shares) + " |")
        if r.best_saved_at_95 is not None:
            lines.append(f"\nAPGR {r.apgr:.3f}; best threshold chosen on these rows: {pct(r.best_saved_at_95)} "
                         "energy saved at >= 95% quality (a bound for this router, not a default setting).")
        lines.append("")
    lines += [f"## Probes: tiers {', '.join(SANITY_SERVED)}\n", "| prompt | routed to | adequacy per tier | reason |",
              "|---|---|---|---|"]
    for p in probes:
        short = p["prompt"] if len(p["prompt"]) < 60 else p["prompt"][:57] + "..."
        lines.append(f"| {short} | {p['routed']} | {' / '.join(str(a) for a in p['adequacy'])} | {p['reason']} |")
    lines += ["", "## Against the targets\n", *targets(results), *latency_lines(), ""]
    lines += method(model)
    return "\n".join(lines)


def method(model: AdequacyModel) -> list[str]:
    """How the shipped settings were chosen, from the artefact's own metadata."""
    md = model.metadata
    cv = md.get("cv", {})
    out = ["## How the model and its settings were chosen\n",
           "`bench/train_router.py` (its docstring has the whole recipe). Training rows per set: "
           + ", ".join(f"{n} {k}" for n, k in md.get("trained_on", {}).items())
           + (" (the chat sets came from `--extra`)." if md.get("extra_data") else " (no chat sets: shared data only)."),
           "",
           f"* Ridge strengths by 5-fold cross-validation inside the training rows, scored by the mean out-of-fold APGR "
           f"over the scenarios: " + ", ".join(f"{k}: {v}" for k, v in cv.get("mean_apgr_by_l2", {}).items())
           + f" (dense/words; chosen {cv.get('l2')}).",
           f"* Caution for unfamiliar requests kappa = {model.kappa} (a design choice). The scale of predicted losses "
           f"(shifts in ln units: " + ", ".join(f"{k} {v:+.3f}" for k, v in cv.get("scale_shift", {}).items())
           + f") and the starting price {model.default_price} were chosen so that "
           f"replaying every scenario's out-of-fold predictions through the quality budget (target {model.default_quality}) "
           f"keeps at least {cv.get('keep')} of the top tier's quality, saving the most energy on average:",
           "", "| scenario (training rows, out of fold) | quality kept | energy saved |", "|---|---|---|"]
    for k, v in cv.get("replayed", {}).items():
        out.append(f"| {k} | {pct(v['kept'])} | {pct(v['saved'])} |")
    out += ["", "## Which features carry the result\n",
            "The dense weights of ln s (per training standard deviation of the feature; positive: more is at stake "
            "on a smaller tier), largest first; the words add one weight each on top. `trivial` is the fixed prior.", "",
            "| feature | weight x spread |", "|---|---|"]
    from gateway.routing.features import DENSE_NAMES

    spec = model.spec
    spread = [w * (sc if sc < 1e8 else 1.0) for w, sc in zip(spec["sensitivity"]["dense"], spec["dense_scale"])]
    for name, v in sorted(zip(DENSE_NAMES, spread), key=lambda x: -abs(x[1])):
        if abs(v) >= 0.01:
            out.append(f"| {name} | {v:+.2f} |")
    emb = BENCH / "results" / "embedding-check.json"
    out += ["", "## What was tried and not kept\n",
            "* A fixed threshold on predicted adequacy (the first round's rule): one threshold strict enough for "
            "preference-judged chat routes almost no exam question small, and one loose enough for exam questions "
            "loses too much on chat. The quality budget replaced it.",
            "* One free loss scale per data set (judges, preferences and right/wrong labels pooled only in their "
            "ranking): the gateway cannot know which measure its users apply, so the shipped scale is the strictest "
            "chat one (preferences) and right/wrong for multiple-choice questions.",
            "* Learning the task-kind weights from every set: on exam sets a hard maths problem is often one every "
            "size fails, which taught that maths and proofs need less ability. Kind weights are learned from the "
            "judged chat sets only, and code, maths and multi-step reasoning may not weigh below zero."]
    if emb.exists():
        e = json.loads(emb.read_text())["apgr"]
        out.append("* A local sentence embedding (MiniLM) instead of, or with, the stdlib features: out-of-fold APGR on "
                   f"MMLU-Pro {e['embedding']['apgr']:.3f} (stdlib {e['stdlib']['apgr']:.3f}, both "
                   f"{e['both']['apgr']:.3f}; `bench/embedding_check.py`), and far slower (see the latency line above).")
    out.append("")
    return out


def targets(results: list[ScenarioResult]) -> list[str]:
    """Sentences about the goals, computed from the results."""
    kept = [r.routed_kept for r in results]
    worst = min(results, key=lambda r: r.routed_kept)
    chat = [r for r in results if r.data in ("oasst", "vicuna80")]
    mmlu = next((r for r in results if r.title == "MMLU-Pro: Llama-3.1 8B -> 70B"), None)
    out = [f"* Quality: every scenario keeps {pct(min(kept))} or more of its top tier's quality (lowest: {worst.title}); "
           f"goal >= {pct(GOAL_KEEP)}: **{'met' if min(kept) >= GOAL_KEEP else 'not met'}**."]
    if chat:
        lo, hi = min(r.routed_saved for r in chat), max(r.routed_saved for r in chat)
        out.append(f"* Energy on chat: {pct(lo)} to {pct(hi)} saved across the chat scenarios; goal >= "
                   f"{pct(GOAL_CHAT_SAVED)}: **{'met' if lo >= GOAL_CHAT_SAVED else 'not met'}**.")
    if mmlu is not None:
        out.append(f"* MMLU-Pro (8B -> 70B): {pct(mmlu.routed_saved)} saved at {pct(mmlu.routed_kept)} quality; goal >= "
                   f"{pct(GOAL_MMLU_SAVED)}: **{'met' if mmlu.routed_saved >= GOAL_MMLU_SAVED else 'not met'}**. "
                   f"APGR {mmlu.apgr:.3f}; goal >= {GOAL_APGR}: **{'met' if (mmlu.apgr or 0) >= GOAL_APGR else 'not met'}**. "
                   f"With the threshold chosen on these very rows the router would save {pct(mmlu.best_saved_at_95 or 0)} "
                   "at 95% (a bound, not a setting).")
    return out


LATENCY = BENCH / "results" / "router-latency.json"


def latency_lines() -> list[str]:
    """What bench/router_latency.py last measured (its own results file), for the README."""
    if not LATENCY.exists():
        return []
    lat = json.loads(LATENCY.read_text())
    rows = {(r["kind"], r["prompt"].split()[0]): r for r in lat["rows"] if r.get("measured")}
    out = []
    std = [r for (k, _), r in rows.items() if k == "stdlib"]
    emb = [r for (k, _), r in rows.items() if k == "embedding"]
    if std:
        out.append("* A decision (features and scores for four tiers, one core, `bench/router_latency.py`): "
                   + ", ".join(f"{r['prompt']} p99 {r['p99_us'] / 1000:.2f} ms" for r in std)
                   + f" (router `{lat['model_version']}`).")
    if emb:
        out.append("* The alternative, a MiniLM sentence embedding on the same core: "
                   + ", ".join(f"{r['prompt']} p99 {r['p99_us'] / 1000:.1f} ms" for r in emb)
                   + " (budget: 10 ms with a model file).")
    return out


def readme_block(results: list[ScenarioResult], model: AdequacyModel) -> str:
    lines = [BEGIN, "", f"Held-out prompts, routed by the gateway's own router at its default settings (router "
             f"`{model.version}`, quality target {model.default_quality}); written by `python bench/routing_eval.py "
             "--extra DIR`, full tables in [docs/routing-eval.md](docs/routing-eval.md):", "",
             "| scenario | prompts | quality kept | energy saved | random at the same mix keeps |", "|---|---|---|---|---|"]
    for r in results:
        lines.append(f"| {r.title} | {r.n} | {pct(r.routed_kept)} | {pct(r.routed_saved)} | {pct(r.random_kept)} |")
    return "\n".join(lines + [""] + targets(results) + latency_lines() + ["", END])


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", type=Path, default=None, help="a folder in mmlu-pro-model-outputs format: use all rows")
    ap.add_argument("--extra", type=Path, default=None, help="folder with qlora_oasst/ and vicuna80/")
    ap.add_argument("--model", type=Path, default=None, help="artefact to evaluate (default: the shipped one)")
    ap.add_argument("--no-write", action="store_true", help="print only")
    args = ap.parse_args(argv)
    t0 = time.time()
    model = AdequacyModel.load(args.model)
    energy = tr.EnergyFit.load()
    if args.data is not None:
        sets = {"mmlu-pro": rd.load_mmlu(args.data)}
        mode = f"all {len(sets['mmlu-pro'].ids)} rows of {args.data}"
        write = False
    else:
        all_sets = rd.load_all(rd.SHARED, args.extra)
        held = {n: set(v) for n, v in model.metadata["split"]["heldout_ids"].items()}
        sets = {ds.name: ds.subset([i for i, q in enumerate(ds.ids) if q in held.get(ds.name, ())]) for ds in all_sets}
        sets = {n: ds for n, ds in sets.items() if ds.ids}
        mode = "the held-out 25% of every labelled set (never used in training)"
        write = not args.no_write
    results = run(sets, model, energy)
    probes = sanity(model)
    args_line = "python bench/routing_eval.py" + (f" --data {args.data}" if args.data else "") + \
        (" --extra DIR" if args.extra else "")
    text = report(results, probes, model, mode, args_line)
    print(text)
    if write:
        RESULTS.parent.mkdir(parents=True, exist_ok=True)
        RESULTS.write_text(json.dumps({"model_version": model.version, "mode": mode,
                                       "scenarios": [asdict(r) for r in results], "probes": probes}, indent=1) + "\n")
        DOCS.write_text(text + "\n")
        readme = README.read_text()
        if BEGIN in readme and END in readme:
            head, rest = readme.split(BEGIN, 1)
            README.write_text(head + readme_block(results, model) + rest.split(END, 1)[1])
        print(f"wrote {RESULTS}, {DOCS} and the routing block of {README.name}")
    mm = next(r for r in results if r.title.startswith("MMLU-Pro: Llama-3.1 8B -> 70B"))
    print(f"({time.time() - t0:.0f}s)")
    print(f"APGR {mm.apgr:.4f} energy_saved_at_95pct {mm.best_saved_at_95:.4f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
