"""Per-request energy attribution against the simulator's ground truth, under mixed concurrent load.

    python bench/attribution_eval.py [--requests 64] [--concurrency 12] [--speed realistic] [--seed 1]

Starts two simulated vLLM servers (a 1.7B and a 32B Qwen3, both able to reason), a gateway
(``nudge-gateway serve``) in front of them with the ``dcgm`` meter on each simulator's
``/dcgm/metrics``, and sends a mixed load through the gateway: short and long prompts, short
and long answers, reasoning on and off, streaming and not, both models, ``--concurrency`` at a
time. A share of the requests (``--direct``) goes straight to the simulators, as another client
would: the gateway must leave their energy to "other". Then it compares each request's final
energy in the gateway's ledger with the energy the simulator booked for it
(``GET /debug/energy``), and prints per-request error percentiles overall and per kind, and
the energy balance per backend (attributed + idle + other against the simulator's energy over
the same window, from an idle moment before the load to one after it).

Target (issue 3): per-request error p50 <= 5 %, p90 <= 15 %.

``--power-model roofline`` runs the simulators on a GPU model whose ground truth does not share the
attribution's formula (``gateway/sim/roofline.py``). Beside the simulator's own per-request truth,
every request is also compared with its *marginal* cost: the simulator's load replayed offline
without it (``GET /debug/trace``, ``gateway/sim/replay.py``). ``--sweep`` runs every seed and power
model in one command, writes ``bench/results/attribution-eval.json`` and the README's accuracy
table; ``--readme`` rewrites only the table from that file.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.common import free_port, wait_ready  # noqa: E402
from gateway.sim.process import start_sim  # noqa: E402
from gateway.sim.replay import marginal_costs, replay  # noqa: E402

RESULTS = ROOT / "bench" / "results" / "attribution-eval.json"
MODELS = {"small": ("Qwen/Qwen3-1.7B", 1.7), "large": ("Qwen/Qwen3-32B", 32.0)}
LONG_PROMPT = " ".join(
    "The ledger records each request with its model, its tokens and the energy it caused, so teams can see"
    " which workloads dominate and where a smaller model or a shorter answer would do." for _ in range(60)
)  # ~2,000 tokens
SHORT_PROMPT = "Name one prime number."


def plan(n: int, seed: int) -> list[dict]:
    """The mixed workload: every combination of the factors, shuffled."""
    rng = random.Random(seed)
    out = []
    for i in range(n):
        reasoning = rng.random() < 0.3
        out.append({
            "i": i,
            "model": rng.choice(["small", "large"]),
            "prompt": "long" if rng.random() < 0.35 else "short",
            "answer": "reasoning" if reasoning else rng.choice(["short", "long"]),
            "stream": rng.random() < 0.6,
        })  # fmt: skip
    return out


def body_for(item: dict) -> dict:
    prompt = LONG_PROMPT if item["prompt"] == "long" else SHORT_PROMPT
    body = {
        "model": MODELS[item["model"]][0],
        "messages": [{"role": "user", "content": f"{prompt} (#{item['i']})"}],
        "stream": item["stream"],
    }
    if item["answer"] == "reasoning":
        body["max_tokens"] = 900  # thinking is long; cut it so the run stays short
    else:
        body["max_tokens"] = 24 if item["answer"] == "short" else 360
        body["ignore_eos"] = True
        body["chat_template_kwargs"] = {"enable_thinking": False}
    return body


async def send(client: httpx.AsyncClient, url: str, body: dict) -> str | None:
    """One request; returns the gateway's x-request-id (None for a direct one or a failure)."""
    if body["stream"]:
        async with client.stream("POST", f"{url}/v1/chat/completions", json=body) as resp:
            async for _ in resp.aiter_bytes():
                pass
            return resp.headers.get("x-request-id") if resp.status_code == 200 else None
    resp = await client.post(f"{url}/v1/chat/completions", json=body)
    return resp.headers.get("x-request-id") if resp.status_code == 200 else None


async def drive(gateway_url: str, sims: dict, items: list[dict], concurrency: int, direct: float, seed: int):
    rng = random.Random(seed + 1)
    queue: asyncio.Queue = asyncio.Queue()
    for item in items:
        queue.put_nowait(item)
    ours: dict[str, dict] = {}
    direct_ids: dict[str, str] = {}  # X-Request-Id we sent straight to a simulator -> model

    async def worker(client):
        while not queue.empty():
            item = queue.get_nowait()
            body = body_for(item)
            if rng.random() < direct:
                rid = f"direct-{item['i']}"
                sim = sims[item["model"]]
                headers = {"x-request-id": rid}
                if body["stream"]:
                    async with client.stream("POST", f"{sim.url}/v1/chat/completions", json=body, headers=headers) as r:
                        async for _ in r.aiter_bytes():
                            pass
                else:
                    await client.post(f"{sim.url}/v1/chat/completions", json=body, headers=headers)
                direct_ids[rid] = item["model"]
                continue
            rid = await send(client, gateway_url, body)
            if rid:
                ours[rid] = item

    async with httpx.AsyncClient(timeout=600) as client:
        await asyncio.gather(*(worker(client) for _ in range(concurrency)))
    return ours, direct_ids


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    k = (len(ordered) - 1) * q
    lo, hi = int(k), min(int(k) + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (k - lo)


def metric_sum(text: str, name: str, **labels: str) -> float:
    total = 0.0
    for line in text.splitlines():
        if line.startswith(name + "{") and all(f'{k}="{v}"' in line for k, v in labels.items()):
            total += float(line.rsplit(" ", 1)[1])
    return total


def run(args) -> dict:
    """Run the whole evaluation; returns the numbers (the test uses them)."""
    tmp = Path(tempfile.mkdtemp(prefix="attribution-eval-"))
    sims = {}
    gw = None
    try:
        for seed, (key, (name, params)) in enumerate(MODELS.items(), start=1):
            sims[key] = start_sim(["--model", name, "--params-b", str(params), "--reasoning", "qwen3",
                                   "--speed", args.speed, "--seed", str(seed),
                                   "--power-model", args.power_model])  # fmt: skip
        config = {
            "features": {"routing": False, "policy": False},
            "server": {"health_interval_s": 0.5, "load_interval_s": 0.5},
            "backends": [
                {"name": key, "url": sim.url, "models": [MODELS[key][0]], "gpu": "h200",
                 "meter": {"type": "dcgm", "url": f"{sim.url}/dcgm/metrics", "interval_s": args.interval}}
                for key, sim in sims.items()
            ],  # fmt: skip
            "models": {MODELS[k][0]: {"params_b": MODELS[k][1]} for k in MODELS},
            "ledger": {"path": str(tmp / "usage.db")},
        }
        (tmp / "gateway.yaml").write_text(yaml.safe_dump(config))
        port = free_port()
        url = f"http://127.0.0.1:{port}"
        log = open(tmp / "gateway.log", "wb")
        gw = subprocess.Popen(
            [sys.executable, "-m", "gateway.cli", "serve", "--config", str(tmp / "gateway.yaml"), "--port", str(port),
             "--log-level", "warning"],
            stdout=log, stderr=subprocess.STDOUT, cwd=ROOT,
        )  # fmt: skip
        wait_ready(url, gw, tmp / "gateway.log")
        # The balance window: the gateway's energy totals and the simulators' at one moment before
        # the load and one after it, both while idle. The gateway books an interval some time after
        # it ends (prompts are spread back over up to 2 s), a lag the same at both edges, so over
        # steady idle power it cancels.
        time.sleep(args.settle)
        gw_before, truth_before = balance_snapshot(url, sims)
        items = plan(args.requests, args.seed)
        started = time.monotonic()
        ours, direct_ids = asyncio.run(drive(url, sims, items, args.concurrency, args.direct, args.seed))
        load_s = time.monotonic() - started
        time.sleep(args.settle)  # idle, and every request past the attribution horizon
        gw_after, truth_after = balance_snapshot(url, sims)
        gw.terminate()
        gw.wait(60)
        truth = {k: s.energy() for k, s in sims.items()}
        traces = {k: httpx.get(f"{s.url}/debug/trace", timeout=30).json() for k, s in sims.items()}
    finally:
        if gw is not None and gw.poll() is None:
            gw.kill()
        for sim in sims.values():
            sim.stop()

    with sqlite3.connect(tmp / "usage.db") as conn:
        rows = {r[0]: r for r in conn.execute(
            "SELECT request_id, backend, energy_j, energy_source, prompt_tokens, completion_tokens FROM requests")}  # fmt: skip

    results = []
    keys_of: dict[str, tuple[str, list[str]]] = {}
    for rid, item in ours.items():
        row = rows.get(rid)
        if row is None or row[2] is None:
            continue
        truth_rows = truth[row[1]]["requests"]
        keys = [k for k in truth_rows if k.startswith(f"{rid}-")]
        true_j = sum(truth_rows[k]["joules"] for k in keys)
        if true_j <= 0:
            continue
        keys_of[rid] = (row[1], keys)
        results.append({**item, "rid": rid, "source": row[3], "ours": row[2], "truth": true_j,
                        "err": abs(row[2] - true_j) / true_j})
    # the second truth: each request's marginal cost, from an offline replay without it
    marginal: dict[str, float] = {}
    replayed = {}
    for backend, trace in traces.items():
        wanted = [k for b, keys in keys_of.values() if b == backend for k in keys]
        marginal.update(marginal_costs(trace, wanted))
        full, span = replay(trace)
        busy = truth[backend]["total_j"] - truth[backend]["idle_j"]
        replayed[backend] = {"replay_j": full, "span_s": span, "sim_busy_j": busy}
    for r in results:
        m = sum(marginal.get(k, 0.0) for k in keys_of[r["rid"]][1])
        r["marginal"] = m
        r["err_marginal"] = abs(r["ours"] - m) / m if m > 0 else float("nan")

    balance = {}
    for key in sims:
        kinds = {k: gw_after[key][k] - gw_before[key][k] for k in KINDS}
        direct_truth = sum(truth[key]["requests"][rid]["joules"] for rid, m in direct_ids.items()
                           if m == key and rid in truth[key]["requests"])  # fmt: skip
        balance[key] = {**kinds, "sim_total": truth_after[key] - truth_before[key], "direct_truth": direct_truth}
    errors = [r["err"] for r in results]
    m_errors = [r["err_marginal"] for r in results if r["err_marginal"] == r["err_marginal"]]
    return {
        "results": results, "balance": balance, "sent": len(ours), "direct": len(direct_ids), "load_s": load_s,
        "p50": percentile(errors, 0.5), "p90": percentile(errors, 0.9), "workdir": str(tmp),
        "marginal_p50": percentile(m_errors, 0.5), "marginal_p90": percentile(m_errors, 0.9),
        "marginal_share": sum(r["marginal"] for r in results) / max(1e-9, sum(r["truth"] for r in results)),
        "replayed": replayed,
    }  # fmt: skip


KINDS = ("attributed", "idle", "other")


def balance_snapshot(url: str, sims: dict) -> tuple[dict, dict]:
    """The gateway's energy by backend and kind, and each simulator's total, read back to back."""
    text = httpx.get(f"{url}/metrics", timeout=10).text
    truth = {k: s.energy()["total_j"] for k, s in sims.items()}
    return {key: {k: metric_sum(text, "gateway_energy_joules_total", backend=key, kind=k) for k in KINDS} for key in sims}, truth


def report(out: dict, details: bool = False) -> None:
    results = out["results"]
    print(f"{out['sent']} requests through the gateway, {out['direct']} direct; load {out['load_s']:.1f} s; "
          f"{len(results)} compared with the simulator's ground truth")  # fmt: skip
    print(f"\n{'kind':34} {'n':>4} {'p50 err':>8} {'p90 err':>8} {'max err':>8} {'J ours':>10} {'J truth':>10}")

    def line(label, rs):
        if not rs:
            return
        e = [r["err"] for r in rs]
        print(f"{label:34} {len(rs):4d} {percentile(e, .5):8.1%} {percentile(e, .9):8.1%} {max(e):8.1%} "
              f"{sum(r['ours'] for r in rs):10.0f} {sum(r['truth'] for r in rs):10.0f}")  # fmt: skip

    line("all", results)
    for field, values in (("model", ("small", "large")), ("prompt", ("short", "long")),
                          ("answer", ("short", "long", "reasoning")), ("stream", (True, False))):  # fmt: skip
        for v in values:
            line(f"{field}={v}", [r for r in results if r[field] == v])
    sources = sorted({r["source"] for r in results})
    counts = ", ".join(f"{s} {sum(r['source'] == s for r in results)}" for s in sources)
    print(f"\nsources: {counts}")
    print(f"\n{'backend':8} {'attributed':>11} {'idle':>9} {'other':>9} {'measured':>10} {'sim total':>10} {'diff':>7} "
          f"{'direct (truth)':>15}")  # fmt: skip
    for key, b in out["balance"].items():
        measured = b["attributed"] + b["idle"] + b["other"]
        diff = (measured - b["sim_total"]) / b["sim_total"] if b["sim_total"] else float("nan")
        print(f"{key:8} {b['attributed']:11.0f} {b['idle']:9.0f} {b['other']:9.0f} {measured:10.0f} "
              f"{b['sim_total']:10.0f} {diff:7.1%} {b['direct_truth']:15.0f}")  # fmt: skip
    print("  (both from an idle moment before the load to one after it)")
    if details:
        print(f"\n{'#':>3} {'model':5} {'prompt':6} {'answer':9} {'stream':6} {'ours J':>9} {'truth J':>9} {'err':>7}")
        for r in sorted(results, key=lambda r: -r["err"]):
            print(f"{r['i']:3d} {r['model']:5} {r['prompt']:6} {r['answer']:9} {str(r['stream']):6} "
                  f"{r['ours']:9.1f} {r['truth']:9.1f} {(r['ours'] - r['truth']) / r['truth']:+7.1%}")  # fmt: skip
    verdict = "MEETS" if out["p50"] <= 0.05 and out["p90"] <= 0.15 else "MISSES"
    print(f"\nper-request error p50 {out['p50']:.1%}, p90 {out['p90']:.1%}: {verdict} the target (p50 <= 5%, p90 <= 15%)")
    print(f"against each request's marginal cost (replay without it): p50 {out['marginal_p50']:.1%}, "
          f"p90 {out['marginal_p90']:.1%}; the marginal costs add up to {out['marginal_share']:.0%} of the "
          "attributed truth (sharing a batch is cheaper at the margin)")


def summary(out: dict, power_model: str, seed: int) -> dict:
    """One run as the sweep's results file keeps it."""
    res = out["results"]

    def pq(rs, key="err"):
        e = [r[key] for r in rs if r[key] == r[key]]
        return {"n": len(e), "p50": round(percentile(e, 0.5), 4), "p90": round(percentile(e, 0.9), 4)} if e else None

    kinds = {f"{f}={v}": pq([r for r in res if r[f] == v])
             for f, vs in (("model", ("small", "large")), ("prompt", ("short", "long")),
                           ("answer", ("short", "long", "reasoning")), ("stream", (True, False))) for v in vs}
    balance = {}
    for key, b in out["balance"].items():
        measured = b["attributed"] + b["idle"] + b["other"]
        balance[key] = round((measured - b["sim_total"]) / b["sim_total"], 4) if b["sim_total"] else None
    return {"power_model": power_model, "seed": seed, "requests": out["sent"], "direct": out["direct"],
            "all": pq(res), "kinds": kinds, "against_marginal": pq(res, "err_marginal"),
            "marginal_share_of_truth": round(out["marginal_share"], 4), "balance_diff": balance}


def sweep(args) -> int:
    """Every (power model, seed) in one command; writes the results file the README quotes."""
    runs = []
    for power_model in args.power_models.split(","):
        for seed in parse_seeds(args.seeds):
            args.power_model, args.seed = power_model, seed
            out = run(args)
            runs.append(summary(out, power_model, seed))
            a = runs[-1]["all"]
            print(f"{power_model:9} seed {seed}: p50 {a['p50']:.1%} p90 {a['p90']:.1%} "
                  f"(against marginal cost p50 {runs[-1]['against_marginal']['p50']:.0%})", flush=True)
    result = {"command": "python bench/attribution_eval.py --sweep " + f"--seeds {args.seeds} --power-models {args.power_models}"
              f" --requests {args.requests} --concurrency {args.concurrency} --speed {args.speed}",
              "target": {"p50": 0.05, "p90": 0.15}, "runs": runs}
    by_model = {}
    for r in runs:
        by_model.setdefault(r["power_model"], []).append(r)
    result["by_power_model"] = {
        m: {"runs": len(rs), "p50_range": [min(r["all"]["p50"] for r in rs), max(r["all"]["p50"] for r in rs)],
            "p90_range": [min(r["all"]["p90"] for r in rs), max(r["all"]["p90"] for r in rs)],
            "marginal_p50_range": [min(r["against_marginal"]["p50"] for r in rs),
                                   max(r["against_marginal"]["p50"] for r in rs)],
            "marginal_share_range": [min(r["marginal_share_of_truth"] for r in rs),
                                     max(r["marginal_share_of_truth"] for r in rs)],
            "worst_balance_diff": max(abs(v) for r in rs for v in r["balance_diff"].values() if v is not None)}
        for m, rs in by_model.items()}  # fmt: skip
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=1) + "\n")
    write_readme(result)
    print(f"wrote {RESULTS} and the attribution block of README.md")
    return 0


def write_readme(result: dict) -> None:
    readme = ROOT / "README.md"
    text = readme.read_text()
    if README_BEGIN in text and README_END in text:
        head, rest = text.split(README_BEGIN, 1)
        readme.write_text(head + readme_block(result) + rest.split(README_END, 1)[1])


README_BEGIN, README_END = "<!-- attribution-eval:begin -->", "<!-- attribution-eval:end -->"
MODEL_WORDS = {"additive": "additive (`--power-model additive`: the form the attribution's cost model shares)",
               "roofline": "roofline (`--power-model roofline`: an independent form, usage accounting)"}


def readme_block(result: dict) -> str:
    """The README's accuracy lines, computed from the sweep's results."""
    t = result["target"]
    lines = [README_BEGIN, "", f"Accuracy against the simulator's per-request ground truth (`{result['command']}`, "
             "results in `bench/results/attribution-eval.json`; mixed concurrent load: short and long prompts and "
             "answers, reasoning on and off, two model sizes, streaming and not, 10% of traffic from direct clients):",
             "", "| simulator GPU model | runs | per-request error p50 | p90 | meets p50 <= 5%, p90 <= 15% | "
             "attributed + idle + other against the simulator's energy, worst* |", "|---|---|---|---|---|---|"]
    for m, b in result["by_power_model"].items():
        ok = b["p50_range"][1] <= t["p50"] and b["p90_range"][1] <= t["p90"]
        lines.append(f"| {MODEL_WORDS.get(m, m)} | {b['runs']} | {b['p50_range'][0]:.1%}–{b['p50_range'][1]:.1%} | "
                     f"{b['p90_range'][0]:.1%}–{b['p90_range'][1]:.1%} | {'yes' if ok else '**no**'} | "
                     f"{b['worst_balance_diff']:.1%} |")
    lines.append("\n\\* Over the same window, from an idle moment before the load to one after it: what the gateway "
                 "split against what the simulator's GPUs drew. Inside the gateway, attributed + idle + other equals "
                 "what its meter measured by construction; this column also checks the meter.\n")
    for m, b in result["by_power_model"].items():
        lines.append(f"* Against each request's *marginal* cost ({m}; the load replayed without it, "
                     f"`gateway/sim/replay.py`): the marginal costs add up to only "
                     f"{b['marginal_share_range'][0]:.0%}–{b['marginal_share_range'][1]:.0%} of the energy spent, and "
                     f"the attributed figures are off them by a median of {b['marginal_p50_range'][0]:.0%}–"
                     f"{b['marginal_p50_range'][1]:.0%}. The gateway allocates what was measured (its figures add up "
                     "to it); what a request caused at the margin is a different quantity, much smaller when batches "
                     "are shared.")
    return "\n".join(lines + ["", README_END])


def parse_seeds(text: str) -> list[int]:
    out = []
    for part in text.split(","):
        lo, _, hi = part.partition("-")
        out += list(range(int(lo), int(hi or lo) + 1))
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--requests", type=int, default=64)
    ap.add_argument("--concurrency", type=int, default=12)
    ap.add_argument("--speed", default="realistic", help="simulator speed: realistic, or a speed-up factor")
    ap.add_argument("--direct", type=float, default=0.1, help="share of requests sent straight to the simulators")
    ap.add_argument("--interval", type=float, default=0.1, help="the meters' sampling interval (s)")
    ap.add_argument("--settle", type=float, default=4.0, help="seconds of idle after the load")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--power-model", default="additive", choices=("additive", "roofline"),
                    help="the simulator's GPU model and ground truth (roofline: a form the attribution does not share)")
    ap.add_argument("--sweep", action="store_true", help=f"every seed x power model; writes {RESULTS.relative_to(ROOT)}")
    ap.add_argument("--seeds", default="1-8", help="with --sweep: e.g. 1-8 or 1,3,5")
    ap.add_argument("--power-models", default="additive,roofline", help="with --sweep")
    ap.add_argument("--details", action="store_true", help="print every request, worst first")
    ap.add_argument("--readme", action="store_true", help="only rewrite the README's block from the results file")
    args = ap.parse_args()
    if args.readme:
        write_readme(json.loads(RESULTS.read_text()))
        return 0
    if args.sweep:
        return sweep(args)
    out = run(args)
    report(out, args.details)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
