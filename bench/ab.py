"""Is this checkout faster or slower than another commit? Both gateways side by side, in one run.

    python bench/ab.py REV [--rounds 5] [--duration 5]        # needs wrk and taskset

The gateway of the working tree ("new") and the gateway of commit REV ("old", exported with
``git archive`` into a temporary directory) run with the same config (every feature on: routing,
the shipped default policy, energy attribution reading the simulator's DCGM page, the SQLite
ledger) in front of one instant simulator. Each gateway runs on core 1 and is frozen (SIGSTOP)
while the other is measured; the load (``wrk``, one thread, 16 connections, closed loop) and the
simulator run on core 0. Rounds alternate the order. Two loads: a short unary chat request, and the
same streamed (``stream: true``, usage chunk) over 32 tokens.

It prints, per load, the median requests/s and latency p50/p99 of each gateway and their ratio
(new / old), and writes ``bench/results/ab-<REV>.json``. A ratio is only as steady as the shared
machine: rerun before reading anything into a few percent.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.common import checkout, readme_block, start_gateway, stop_all, wrk, wrk_script  # noqa: E402

MODEL = "meta-llama/Llama-3.1-8B-Instruct"
LOADS = {
    "unary": {"model": MODEL, "messages": [{"role": "user", "content": "Name one prime number."}], "max_tokens": 8},
    "stream": {"model": MODEL, "messages": [{"role": "user", "content": "Count to thirty."}], "max_tokens": 32,
               "min_tokens": 32, "stream": True, "stream_options": {"include_usage": True}},
}  # fmt: skip
def export(rev: str, into: Path) -> str:
    """The tree of ``rev`` under ``into``; returns the full commit id."""
    commit = subprocess.run(["git", "rev-parse", rev], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    archive = subprocess.run(["git", "archive", "--format=tar", commit.strip()], cwd=ROOT, capture_output=True,
                             check=True).stdout  # fmt: skip
    tar = into / "tree.tar"
    tar.write_bytes(archive)
    with tarfile.open(tar) as t:
        t.extractall(into / "tree", filter="data")
    return commit.strip()


def write_readme(r: dict) -> None:
    """The README's before/after line, computed from a results file."""
    u, st = r["summary"]["unary"], r["summary"]["stream"]
    text = (
        f"Before and after, side by side (`{r['command']}`, `bench/results/ab-{r['old']}.json`, {r['when'][:10]}, "
        f"{r['cpus']} cores, every feature on, 16 connections): the gateway at {r['new']} serves "
        f"{u['median']['new']['rps']:,.0f} unary requests/s against {u['median']['old']['rps']:,.0f} at {r['old'][:7]} "
        f"({u['new_over_old']['rps']:.2f}x) and {st['median']['new']['rps']:,.0f} streamed against "
        f"{st['median']['old']['rps']:,.0f} ({st['new_over_old']['rps']:.2f}x); p50 latency "
        f"{u['median']['new']['p50_ms']:.2f} ms against {u['median']['old']['p50_ms']:.2f} (unary)."
    )
    readme_block("ab", text)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("rev", help="the commit to compare the working tree with (e.g. HEAD~3, a tag)")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--duration", type=float, default=5.0)
    ap.add_argument("--readme", action="store_true", help="only rewrite the README's line from bench/results/ab-REV.json")
    args = ap.parse_args()
    if args.readme:
        commit = subprocess.run(["git", "rev-parse", args.rev], cwd=ROOT, capture_output=True, text=True, check=True)
        write_readme(json.loads((ROOT / "bench" / "results" / f"ab-{commit.stdout.strip()[:12]}.json").read_text()))
        return 0

    import yaml

    from gateway.sim.process import start_sim

    tmp = Path(tempfile.mkdtemp(prefix="ab-"))
    commit = export(args.rev, tmp)
    trees = {"new": ROOT, "old": tmp / "tree"}
    luas = {}
    for load, body in LOADS.items():
        luas[load] = wrk_script(tmp / f"{load}.lua", body)
    sim = start_sim(["--model", MODEL, "--params-b", "8", "--speed", "instant", "--no-coalesce"])
    procs: dict[str, subprocess.Popen] = {}
    urls: dict[str, str] = {}
    rounds: list[dict] = []
    try:
        subprocess.run(["taskset", "-cp", "0", str(sim.proc.pid)], capture_output=True)
        config = {"backends": [{"name": "sim", "url": sim.url, "meter": {"type": "dcgm", "url": f"{sim.url}/dcgm/metrics"}}],
                  }  # fmt: skip
        for arm, tree in trees.items():
            cfg = tmp / f"gateway-{arm}.yaml"
            cfg.write_text(yaml.safe_dump({**config, "ledger": {"path": str(tmp / f"usage-{arm}.db")}}))
            procs[arm], urls[arm] = start_gateway(cfg, tmp / f"gateway-{arm}.log", tree)
        for arm in urls:  # warm-up, then frozen until its turn
            for load in LOADS:
                wrk(f"{urls[arm]}/v1/chat/completions", luas[load], 2)
            procs[arm].send_signal(signal.SIGSTOP)
        for i in range(args.rounds):
            order = list(urls) if i % 2 == 0 else list(reversed(list(urls)))
            result: dict = {}
            for arm in order:
                procs[arm].send_signal(signal.SIGCONT)
                time.sleep(0.2)
                result[arm] = {load: wrk(f"{urls[arm]}/v1/chat/completions", luas[load], args.duration) for load in LOADS}
                procs[arm].send_signal(signal.SIGSTOP)
            rounds.append(result)
            print(f"round {i + 1}: " + "; ".join(
                f"{arm} " + ", ".join(f"{load} {r['rps']:.0f} req/s" for load, r in result[arm].items())
                for arm in order), flush=True)  # fmt: skip
    finally:
        stop_all(procs.values())
        sim.stop()
    summary: dict = {}
    for load in LOADS:
        med = {arm: {k: statistics.median(r[arm][load][k] for r in rounds) for k in ("rps", "p50_ms", "p99_ms")}
               for arm in trees}  # fmt: skip
        errors = {arm: sum(r[arm][load]["errors"] for r in rounds) for arm in trees}
        ratio = {k: round(med["new"][k] / med["old"][k], 3) for k in ("rps", "p50_ms", "p99_ms")}
        summary[load] = {"median": med, "errors": errors, "new_over_old": ratio}
        print(f"{load:6s}  old {med['old']['rps']:7.0f} req/s p50 {med['old']['p50_ms']:.2f} ms p99 "
              f"{med['old']['p99_ms']:.2f} ms | new {med['new']['rps']:7.0f} req/s p50 {med['new']['p50_ms']:.2f} ms "
              f"p99 {med['new']['p99_ms']:.2f} ms | new/old throughput {ratio['rps']:.3f}")  # fmt: skip
    out = {"command": f"python bench/ab.py {args.rev} --rounds {args.rounds} --duration {args.duration:g}",
           "when": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "cpus": os.cpu_count(), "old": commit[:12],
           "new": checkout(), "rounds": rounds, "summary": summary}  # fmt: skip
    path = ROOT / "bench" / "results" / f"ab-{commit[:12]}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(out, indent=1) + "\n")
    print(f"wrote {path.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
