"""The batching lever on the simulator: the same N requests sent one at a time, all at once (what a
scheduler filling a server's spare batch slots would do), and interactively at a realistic arrival
rate, in one run; joules per generated token for each.

    python bench/batch_energy.py [--requests 64] [--tokens 256] [--rate 0.5] [--speed 1]

Each arm starts its own simulated vLLM server (Llama-3.1-8B on one H200, the default power model,
in real time by default: about five minutes in all) behind its own gateway (every feature on,
the shipped default settings), so no arm inherits another's state. Every request asks for
exactly ``--tokens`` tokens (``min_tokens`` and ``max_tokens``), so every arm generates the same
number. Two figures per arm:

* **GPU J/token**: the simulated GPU's energy counter (DCGM) over the arm, idle time included,
  divided by the tokens generated: what the hardware spent;
* **attributed J/token**: the sum of the energy the gateway's ledger gives the answers once final
  (``GET /v1/usage``), divided by the same tokens: what the gateway tells the users. The gateway
  charges a request its share of the GPU's power while it runs; idle power between requests is
  booked as idle, not charged to anyone.

"Interactive" sends the N requests as a Poisson process of ``--rate`` requests per simulated
second. Nothing here goes through the Batch API (not built yet): "all at once" is the
counterfactual that API's scheduler aims for. Writes ``bench/results/batch-energy.json`` and the
README's computed line (``--readme`` rewrites only that).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import sys
import tempfile
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.common import checkout, readme_block, start_gateway, stop_all  # noqa: E402

MODEL = "meta-llama/Llama-3.1-8B-Instruct"
RESULTS = ROOT / "bench" / "results" / "batch-energy.json"
PROMPT = "Summarise the main causes of the French Revolution and their consequences for Europe."


def dcgm_joules(url: str) -> float:
    """The simulated GPUs' energy counter, summed (DCGM reports mJ)."""
    text = httpx.get(f"{url}/dcgm/metrics", timeout=10).text
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
               if line.startswith("DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION{")) / 1000.0  # fmt: skip


def final_energy(url: str, n: int, timeout_s: float = 60.0) -> float:
    """The joules the gateway's ledger gives the ``n`` answers once every figure is final."""
    deadline = time.monotonic() + timeout_s
    while True:
        rows = httpx.get(f"{url}/v1/usage", params={"limit": 1000}, timeout=10).json()["data"]
        if len(rows) >= n and all(r["energy_final"] and r["energy_source"] == "measured" for r in rows):
            return sum(r["energy_j"] for r in rows)
        if time.monotonic() > deadline:
            raise RuntimeError(f"the ledger's energy is not final after {timeout_s:g} s")
        time.sleep(0.5)


async def _send(client: httpx.AsyncClient, url: str, tokens: int) -> dict:
    body = {"model": MODEL, "messages": [{"role": "user", "content": PROMPT}], "max_tokens": tokens,
            "min_tokens": tokens}  # fmt: skip
    r = await client.post(f"{url}/v1/chat/completions", json=body)
    r.raise_for_status()
    return r.json()["usage"]


async def _arm(kind: str, url: str, n: int, tokens: int, rate: float, speed: float, seed: int) -> list[dict]:
    async with httpx.AsyncClient(timeout=600) as client:
        if kind == "sequential":
            return [await _send(client, url, tokens) for _ in range(n)]
        if kind == "all_at_once":
            return list(await asyncio.gather(*(_send(client, url, tokens) for _ in range(n))))
        rng = random.Random(seed)
        tasks = []
        for _ in range(n):
            tasks.append(asyncio.create_task(_send(client, url, tokens)))
            await asyncio.sleep(rng.expovariate(rate) / speed)  # simulated seconds between arrivals
        return list(await asyncio.gather(*tasks))


def run_arm(kind: str, args: argparse.Namespace, tmp: Path) -> dict:
    import yaml

    from gateway.sim.process import start_sim

    sim = start_sim(["--model", MODEL, "--params-b", "8", "--speed", str(args.speed), "--seed", "7"])
    gw = None
    try:
        backend = {"name": "sim", "url": sim.url, "meter": {"type": "dcgm", "url": f"{sim.url}/dcgm/metrics"}}
        config = tmp / f"gateway-{kind}.yaml"
        config.write_text(yaml.safe_dump({"backends": [backend], "ledger": {"path": str(tmp / f"{kind}.db")}}))
        gw, url = start_gateway(config, tmp / f"gateway-{kind}.log", ROOT, core="0-1")
        time.sleep(1.0)
        before, t0 = dcgm_joules(sim.url), time.monotonic()
        usages = asyncio.run(_arm(kind, url, args.requests, args.tokens, args.rate, args.speed, seed=11))
        gpu = dcgm_joules(sim.url) - before  # the simulator books a step's energy when it starts: complete
        wall = time.monotonic() - t0
        attributed = final_energy(url, len(usages))
    finally:
        if gw is not None:
            stop_all([gw])
        sim.stop()
    tokens = sum(u["completion_tokens"] for u in usages)
    out = {"arm": kind, "requests": len(usages), "completion_tokens": tokens, "wall_s": round(wall, 2),
           "simulated_s": round(wall * args.speed, 1), "gpu_joules": round(gpu, 1),
           "gpu_j_per_token": round(gpu / tokens, 4), "attributed_joules": round(attributed, 1),
           "attributed_j_per_token": round(attributed / tokens, 4)}  # fmt: skip
    print(f"{kind:12s}: {tokens:,} tokens in {out['simulated_s']} simulated s; GPU {out['gpu_j_per_token']} J/token, "
          f"attributed {out['attributed_j_per_token']} J/token", flush=True)  # fmt: skip
    return out


def write_readme(r: dict) -> None:
    arms = {a["arm"]: a for a in r["arms"]}
    seq, batch, live = arms["sequential"], arms["all_at_once"], arms["interactive"]
    readme_block("batch-energy", (
        f"The batching lever, measured on the simulator (`{r['command']}`, `bench/results/batch-energy.json`, "
        f"{r['when'][:10]}; Llama-3.1-8B on one simulated H200, {r['requests']} requests of {r['tokens']} tokens "
        f"each, through the gateway): sent all at once they cost {batch['gpu_j_per_token']:.3f} J per generated "
        f"token of GPU energy, against {seq['gpu_j_per_token']:.3f} sent one at a time "
        f"({batch['gpu_j_per_token'] / seq['gpu_j_per_token']:.2f}x) and {live['gpu_j_per_token']:.3f} arriving "
        f"interactively at {r['rate']:g} per second ({batch['gpu_j_per_token'] / live['gpu_j_per_token']:.2f}x, "
        f"idle time included). What the gateway attributed to the answers: {batch['attributed_j_per_token']:.3f}, "
        f"{seq['attributed_j_per_token']:.3f} and {live['attributed_j_per_token']:.3f} J/token. One at a time is "
        "outside what the simulator was calibrated on (ML.ENERGY measured running batches of 8 and more), so that "
        "end of the ratio is the power model's extrapolation. No Batch API yet: 'all at once' is what a scheduler "
        "filling spare batch slots would aim for."
    ))  # fmt: skip


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--requests", type=int, default=64)
    ap.add_argument("--tokens", type=int, default=256)
    ap.add_argument("--rate", type=float, default=0.5, help="interactive arrivals per simulated second")
    # A speed-up compresses the simulator's clock but not the gateway's meter sampling (wall time):
    # a lone request then gets too little of its GPU energy attributed, the less the faster the
    # clock (checked by hand; in real time it gets all of it). The GPU figures hold at any speed;
    # the attributed ones need real time.
    ap.add_argument("--speed", type=float, default=1.0)
    ap.add_argument("--readme", action="store_true", help="only rewrite the README's line from the results file")
    args = ap.parse_args()
    if args.readme:
        write_readme(json.loads(RESULTS.read_text()))
        return 0
    tmp = Path(tempfile.mkdtemp(prefix="batch-energy-"))
    arms = [run_arm(kind, args, tmp) for kind in ("sequential", "all_at_once", "interactive")]
    out = {"command": f"python bench/batch_energy.py --requests {args.requests} --tokens {args.tokens} "
                      f"--rate {args.rate:g} --speed {args.speed:g}",
           "when": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "cpus": os.cpu_count(), "commit": checkout(),
           "requests": args.requests, "tokens": args.tokens, "rate": args.rate, "arms": arms}  # fmt: skip
    RESULTS.write_text(json.dumps(out, indent=1) + "\n")
    print(f"wrote {RESULTS.relative_to(ROOT)}")
    write_readme(out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
