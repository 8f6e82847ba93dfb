"""Latency of the routing hot path: request text + features + adequacy prediction.

    python bench/router_latency.py [--n 5000]

Prints mean / p50 / p99 in microseconds for a short chat request and for a 16,000-character
prompt: features plus the energy-aware scores (adequacy, expected tokens, score) for four tiers
(1.7B, 8B, 32B, 70B), i.e. everything the router computes per request. The long prompt is made of words from
the model's own vocabulary (every word a dictionary hit: the worst case), with digits and
punctuation, deterministically. Runs on one core; needs nothing but the package.
"""

from __future__ import annotations

import argparse
import gc
import random
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from gateway.routing.adequacy import AdequacyModel  # noqa: E402
from gateway.routing.features import extract, request_text  # noqa: E402

TIERS = [1.7, 8.0, 32.0, 70.0]


def long_body(model: AdequacyModel, chars: int = 16_000) -> dict:
    rng = random.Random(0)
    vocab = sorted(model.spec["terms"])
    words: list[str] = []
    size = 0
    while size < chars:
        w = rng.choice(vocab)
        if rng.random() < 0.1:
            w = f"{w} {rng.randint(0, 9999)},"
        elif rng.random() < 0.05:
            w += ".\n"
        words.append(w)
        size += len(w) + 1
    text = " ".join(words)[:chars]
    return {"messages": [{"role": "system", "content": "You are a careful assistant."},
                         {"role": "user", "content": text}], "max_tokens": 512}


SHORT = {"messages": [{"role": "system", "content": "You are a helpful assistant."},
                      {"role": "user", "content": "What is the capital of Australia, and why isn't it Sydney?"}],
         "max_tokens": 256}


def measure(model: AdequacyModel, body: dict, n: int) -> list[float]:
    def once() -> None:
        text = request_text(body)
        f = extract(text, max_tokens=body.get("max_tokens"), has_tools=bool(body.get("tools")))
        model.route_scores(f, TIERS)

    for _ in range(min(200, n)):  # warm up
        once()
    gc.collect()
    out = []
    for _ in range(n):
        t = time.perf_counter_ns()
        once()
        out.append((time.perf_counter_ns() - t) / 1000)
    return out


def summary(name: str, us: list[float]) -> str:
    s = sorted(us)
    p = lambda q: s[min(len(s) - 1, int(q * len(s)))]  # noqa: E731
    return f"{name:<24} n={len(s):<6} mean {statistics.fmean(s):8.1f} us   p50 {p(0.5):8.1f} us   p99 {p(0.99):8.1f} us"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=5000)
    args = ap.parse_args(argv)
    t = time.perf_counter()
    model = AdequacyModel.load()
    print(f"load artefact: {(time.perf_counter() - t) * 1000:.0f} ms ({model!r})")
    body = long_body(model)
    print(summary("short chat request", measure(model, SHORT, args.n)))
    print(summary(f"{len(body['messages'][1]['content'])}-char prompt", measure(model, body, max(200, args.n // 5))))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
