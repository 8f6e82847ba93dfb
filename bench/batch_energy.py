"""The batching lever on the simulator: the same N requests sent one at a time, through the Batch
API, all at once (the ideal), and interactively at a realistic arrival rate, in one run; joules
per generated token for each; and what a running batch costs interactive requests.

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
second; "batch_api" uploads them as a batch input file and polls the batch until it completes
(the runner sends them as the backend has room: ``batch.max_inflight`` at a time); "all at
once" is the ideal a scheduler could aim for.

Then the cost to interactive traffic: streamed requests arriving as a Poisson process, timed to
their first content token, on a fresh simulator alone and while a batch runs (``--ttft-*``; a
sped-up clock here, which timings do not mind). Writes ``bench/results/batch-energy.json`` and
the README's computed line (``--readme`` rewrites only that).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import random
import sys
import tempfile
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.common import readme_block, start_gateway, stop_all, write_results  # noqa: E402

MODEL = "meta-llama/Llama-3.1-8B-Instruct"
RESULTS = ROOT / "bench" / "results" / "batch-energy.json"
SHIPPED_INFLIGHT = 16  # BatchConfig.max_inflight's default (checked in main)
PROMPT = "Summarise the main causes of the French Revolution and their consequences for Europe."


def dcgm_joules(url: str) -> float:
    """The simulated GPUs' energy counter, summed (DCGM reports mJ)."""
    text = httpx.get(f"{url}/dcgm/metrics", timeout=10).text
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
               if line.startswith("DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION{")) / 1000.0  # fmt: skip


def final_energy(url: str, n: int, timeout_s: float = 60.0, tier: str | None = None) -> float:
    """The joules the gateway's ledger gives the ``n`` answers (those on ``tier``, if given) once
    every figure is final."""
    deadline = time.monotonic() + timeout_s
    while True:
        rows = httpx.get(f"{url}/v1/usage", params={"limit": 1000}, timeout=10).json()["data"]
        rows = [r for r in rows if tier is None or r["service_tier"] == tier]
        if len(rows) >= n and all(r["energy_final"] and r["energy_source"] == "measured" for r in rows):
            return sum(r["energy_j"] for r in rows)
        if time.monotonic() > deadline:
            raise RuntimeError(f"the ledger's energy is not final after {timeout_s:g} s")
        time.sleep(0.5)


def _body(tokens: int, prompt: str = PROMPT) -> dict:
    return {"model": MODEL, "messages": [{"role": "user", "content": prompt}], "max_tokens": tokens,
            "min_tokens": tokens}  # fmt: skip


async def _send(client: httpx.AsyncClient, url: str, tokens: int) -> dict:
    r = await client.post(f"{url}/v1/chat/completions", json=_body(tokens))
    r.raise_for_status()
    return r.json()["usage"]


async def _submit_batch(client: httpx.AsyncClient, url: str, bodies: list[dict]) -> str:
    """Upload ``bodies`` as a batch input file and create the batch; its id."""
    lines = [{"custom_id": f"b{i}", "method": "POST", "url": "/v1/chat/completions", "body": body}
             for i, body in enumerate(bodies)]  # fmt: skip
    data = b"".join(json.dumps(line).encode() + b"\n" for line in lines)
    r = await client.post(f"{url}/v1/files", files={"file": ("bench.jsonl", data)}, data={"purpose": "batch"})
    r.raise_for_status()
    r = await client.post(f"{url}/v1/batches", json={"input_file_id": r.json()["id"],
                                                      "endpoint": "/v1/chat/completions", "completion_window": "24h"})
    r.raise_for_status()
    return r.json()["id"]


async def _through_batch_api(client: httpx.AsyncClient, url: str, bodies: list[dict]) -> list[dict]:
    """The requests as one batch, polled until it completes; the answers' usage."""
    batch_id = await _submit_batch(client, url, bodies)
    while (batch := (await client.get(f"{url}/v1/batches/{batch_id}")).json())["status"] not in (
            "completed", "failed", "cancelled", "expired"):  # fmt: skip
        await asyncio.sleep(0.2)
    if batch["status"] != "completed" or batch["request_counts"]["failed"]:
        raise RuntimeError(f"the benchmark's batch ended {batch['status']}: {batch['request_counts']}")
    content = (await client.get(f"{url}/v1/files/{batch['output_file_id']}/content")).content
    return [json.loads(line)["response"]["body"]["usage"] for line in content.splitlines()]


async def _arm(kind: str, url: str, n: int, tokens: int, rate: float, speed: float, seed: int) -> list[dict]:
    async with httpx.AsyncClient(timeout=600) as client:
        if kind == "sequential":
            return [await _send(client, url, tokens) for _ in range(n)]
        if kind == "all_at_once":
            return list(await asyncio.gather(*(_send(client, url, tokens) for _ in range(n))))
        if kind == "batch_api":
            return await _through_batch_api(client, url, [_body(tokens) for _ in range(n)])
        rng = random.Random(seed)
        tasks = []
        for _ in range(n):
            tasks.append(asyncio.create_task(_send(client, url, tokens)))
            await asyncio.sleep(rng.expovariate(rate) / speed)  # simulated seconds between arrivals
        return list(await asyncio.gather(*tasks))


def _sim(speed: float, seed: int = 7):
    """A fresh simulated vLLM: Llama-3.1-8B on one H200."""
    from gateway.sim.process import start_sim

    return start_sim(["--model", MODEL, "--params-b", "8", "--speed", str(speed), "--seed", str(seed)])


@contextlib.contextmanager
def served(name: str, speed: float, inflight: int | None, tmp: Path, replicas: int = 1):
    """Fresh simulators (``replicas`` of them, one model) and a gateway in front of them, with
    ``batch.max_inflight`` when given: (the first simulator's URL, the gateway's)."""
    import yaml

    sims, gw = [], None
    try:
        for i in range(replicas):
            sims.append(_sim(speed, seed=7 + i))
        backends = [{"name": f"sim{i}", "url": sim.url, "meter": {"type": "dcgm", "url": f"{sim.url}/dcgm/metrics"}}
                    for i, sim in enumerate(sims)]  # fmt: skip
        config = {"backends": backends, "ledger": {"path": str(tmp / f"{name}.db")}}
        if inflight:
            config["batch"] = {"max_inflight": inflight}
        (tmp / f"gateway-{name}.yaml").write_text(yaml.safe_dump(config))
        gw, url = start_gateway(tmp / f"gateway-{name}.yaml", tmp / f"gateway-{name}.log", ROOT, core="0-1")
        time.sleep(1.0)
        yield sims[0].url, url
    finally:
        if gw is not None:
            stop_all([gw])
        for sim in sims:
            sim.stop()


def saved_by_batching(url: str) -> float:
    """The gateway's estimate of what batching saved: gateway_energy_saved_joules{lever="batching"}."""
    text = httpx.get(f"{url}/metrics", timeout=10).text
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
               if line.startswith("gateway_energy_saved_joules_total{") and 'lever="batching"' in line)  # fmt: skip


def run_arm(kind: str, args: argparse.Namespace, tmp: Path, inflight: int | None = None) -> dict:
    estimated = None
    with served(f"{kind}{inflight or ''}", args.speed, inflight, tmp) as (sim_url, url):
        if kind == "batch_api" and args.warmup:
            # interactive traffic first, as a deployment has: the batch it runs in is what the
            # gateway prices the batch's tokens against (gateway_energy_saved_joules, lever batching)
            asyncio.run(_arm("interactive", url, args.warmup, args.tokens, args.rate, args.speed, seed=5))
            final_energy(url, args.warmup)
        before, t0 = dcgm_joules(sim_url), time.monotonic()
        usages = asyncio.run(_arm(kind, url, args.requests, args.tokens, args.rate, args.speed, seed=11))
        gpu = dcgm_joules(sim_url) - before  # the simulator books a step's energy when it starts: complete
        wall = time.monotonic() - t0
        attributed = final_energy(url, len(usages), tier="batch" if kind == "batch_api" else None)
        if kind == "batch_api":
            estimated = round(saved_by_batching(url), 1)
    tokens = sum(u["completion_tokens"] for u in usages)
    out = {"arm": kind, "max_inflight": inflight or SHIPPED_INFLIGHT, "requests": len(usages),
           "completion_tokens": tokens, "wall_s": round(wall, 2), "simulated_s": round(wall * args.speed, 1),
           "gpu_joules": round(gpu, 1), "gpu_j_per_token": round(gpu / tokens, 4),
           "attributed_joules": round(attributed, 1),
           "attributed_j_per_token": round(attributed / tokens, 4), "estimated_saved_joules": estimated}  # fmt: skip
    setting = f" ({out['max_inflight']} in flight)" if kind == "batch_api" else ""
    print(f"{kind + setting:27s}: {tokens:,} tokens in {out['simulated_s']} simulated s; "
          f"GPU {out['gpu_j_per_token']} J/token, attributed {out['attributed_j_per_token']} J/token",
          flush=True)  # fmt: skip
    return out


async def _ttfts(url: str, n: int, rate: float, speed: float, seed: int) -> list[float]:
    """Streamed interactive requests arriving as a Poisson process; each one's time to its first
    content token, in simulated seconds (wall time x speed)."""
    rng = random.Random(seed)

    async def one(client: httpx.AsyncClient) -> float:
        t0 = time.monotonic()
        body = {**_body(64, "Say something short."), "stream": True}
        async with client.stream("POST", f"{url}/v1/chat/completions", json=body) as r:
            async for line in r.aiter_lines():
                if not line.startswith("data: {"):
                    continue
                choices = json.loads(line[6:]).get("choices") or [{}]
                if (choices[0].get("delta") or {}).get("content"):
                    return (time.monotonic() - t0) * speed
        raise RuntimeError("a stream ended without content")

    async with httpx.AsyncClient(timeout=600) as client:
        tasks = []
        for _ in range(n):
            tasks.append(asyncio.create_task(one(client)))
            await asyncio.sleep(rng.expovariate(rate) / speed)
        return list(await asyncio.gather(*tasks))


def _percentiles(ttfts: list[float]) -> dict:
    import statistics

    ttfts = sorted(ttfts)
    return {"p50_s": round(statistics.median(ttfts), 4),
            "p95_s": round(ttfts[max(0, math.ceil(0.95 * len(ttfts)) - 1)], 4)}  # fmt: skip


def ttft_runs(args: argparse.Namespace, tmp: Path, settings: tuple[int, ...], rate: float, replicas: int = 1) -> dict:
    """Interactive time to first token, arriving at ``rate`` per simulated second, alone and with a
    batch running at each ``batch.max_inflight`` of ``settings``, each on fresh simulators
    (``replicas`` of the model)."""
    out: dict = {"speed": args.ttft_speed, "requests": args.ttft_requests, "rate": rate,
                 "batch_lines": args.ttft_batch, "replicas": replicas}  # fmt: skip
    for arm in ("alone", *(f"with_batch_{n}" for n in settings)):
        inflight = int(arm.rsplit("_", 1)[1]) if arm != "alone" else None
        with served(f"ttft-{rate:g}-{replicas}-{arm}", args.ttft_speed, inflight, tmp, replicas) as (_, url):
            batch_id = None
            if inflight is not None:
                async def submit() -> str:
                    async with httpx.AsyncClient(timeout=60) as client:
                        return await _submit_batch(client, url, [_body(args.tokens) for _ in range(args.ttft_batch)])

                batch_id = asyncio.run(submit())
                deadline = time.monotonic() + 30
                while httpx.get(f"{url}/v1/batches/{batch_id}").json()["request_counts"]["completed"] == 0:
                    if time.monotonic() > deadline:
                        raise RuntimeError("the batch did not start")
                    time.sleep(0.1)
            ttfts = asyncio.run(_ttfts(url, args.ttft_requests, rate, args.ttft_speed, seed=5))
            if batch_id is not None:
                batch = httpx.get(f"{url}/v1/batches/{batch_id}").json()
                out[f"completed_meanwhile_{inflight}"] = batch["request_counts"]["completed"]
                if batch["status"] != "in_progress":  # then some requests were timed without it
                    raise RuntimeError(f"the batch ended before the last interactive request: raise --ttft-batch "
                                       f"({batch['request_counts']})")  # fmt: skip
        out[arm] = _percentiles(ttfts)
        print(f"interactive TTFT at {rate:g}/s, {replicas} replica(s), {arm:10s}: p50 {out[arm]['p50_s'] * 1000:.1f} "
              f"ms, p95 {out[arm]['p95_s'] * 1000:.1f} ms (simulated)", flush=True)  # fmt: skip
    for n in settings:
        out[f"with_batch_{n}"]["p95_ratio"] = round(out[f"with_batch_{n}"]["p95_s"] / out["alone"]["p95_s"], 3)
    return out


def floor_runs(args: argparse.Namespace, rate: float) -> dict:
    """The same interactive streams straight to a simulator, no gateway: alone, and while
    ``SHIPPED_INFLIGHT`` batch-sized requests run without pause (each replaced as it ends). What a
    running batch costs interactive requests on one replica whatever schedules it."""
    out: dict = {"speed": args.ttft_speed, "requests": args.ttft_requests, "rate": rate}

    async def timed(url: str, running: int) -> list[float]:
        stop = asyncio.Event()

        async def keep_one_running(client: httpx.AsyncClient) -> None:
            while not stop.is_set():
                (await client.post(f"{url}/v1/chat/completions", json=_body(args.tokens))).raise_for_status()

        async with httpx.AsyncClient(timeout=600) as client:
            batch = [asyncio.create_task(keep_one_running(client)) for _ in range(running)]
            await asyncio.sleep(1.0 / args.ttft_speed if running else 0)  # the batch is decoding by then
            ttfts = await _ttfts(url, args.ttft_requests, rate, args.ttft_speed, seed=5)
            stop.set()
            await asyncio.gather(*batch)
        return ttfts

    for arm, running in (("alone", 0), (f"with_batch_{SHIPPED_INFLIGHT}", SHIPPED_INFLIGHT)):
        sim = _sim(args.ttft_speed)
        try:
            out[arm] = _percentiles(asyncio.run(timed(sim.url, running)))
        finally:
            sim.stop()
        print(f"interactive TTFT at {rate:g}/s straight to vLLM, {arm:10s}: p50 {out[arm]['p50_s'] * 1000:.1f} ms, "
              f"p95 {out[arm]['p95_s'] * 1000:.1f} ms (simulated)", flush=True)  # fmt: skip
    with_batch = out[f"with_batch_{SHIPPED_INFLIGHT}"]
    with_batch["p95_ratio"] = round(with_batch["p95_s"] / out["alone"]["p95_s"], 3)
    return out


def write_readme(r: dict) -> None:
    by = {(a["arm"], a["max_inflight"]): a for a in r["arms"]}
    seq, ideal, live = by[("sequential", SHIPPED_INFLIGHT)], by[("all_at_once", SHIPPED_INFLIGHT)], by[
        ("interactive", SHIPPED_INFLIGHT)]  # fmt: skip
    t = r["ttft"]
    rows = []
    for n in r["inflight"]:
        api = by[("batch_api", n)]
        shipped = " (shipped)" if n == SHIPPED_INFLIGHT else ""
        j, timed = api["gpu_j_per_token"], t[f"with_batch_{n}"]
        rows.append(
            f"| {n}{shipped} | {j:.3f} | {j / seq['gpu_j_per_token']:.2f}x | {j / live['gpu_j_per_token']:.2f}x | "
            f"{timed['p95_s'] * 1000:.1f} ms | {timed['p95_ratio']:.2f}x |"
        )
    readme_block("batch-energy", (
        f"Measured on the simulator (`{r['command']}`, `bench/results/batch-energy.json`, {r['when'][:10]}; "
        f"Llama-3.1-8B on one simulated H200 in real time, {r['requests']} requests of {r['tokens']} tokens each): "
        f"sent one at a time they cost {seq['gpu_j_per_token']:.3f} J of GPU energy per generated token, arriving "
        f"interactively at {r['rate']:g} per second {live['gpu_j_per_token']:.3f} (idle time included), all at once "
        f"(the ideal) {ideal['gpu_j_per_token']:.3f}. Through the Batch API, by how many batch requests a replica "
        f"runs at once (`batch.max_inflight`), and what a batch running meanwhile did to interactive streams' time to "
        f"first token ({t['requests']} arriving at {t['rate']:g} per second; "
        f"{t['alone']['p95_s'] * 1000:.1f} ms at the 95th percentile with no batch):"
    ))  # fmt: skip
    busy = r["ttft_busy"]
    shipped = by[("batch_api", SHIPPED_INFLIGHT)]
    measured = (live["attributed_j_per_token"] - shipped["attributed_j_per_token"]) * shipped["completion_tokens"]
    alone = (seq["attributed_j_per_token"] - shipped["attributed_j_per_token"]) * shipped["completion_tokens"]
    energy_met = [str(n) for n in r["inflight"]
                  if by[("batch_api", n)]["gpu_j_per_token"] <= 0.5 * seq["gpu_j_per_token"]]  # fmt: skip
    estimate = shipped["estimated_saved_joules"]
    readme_block("batch-energy-saved", (
        f"The gateway's own estimate of what batching saved (`gateway_energy_saved_joules{{lever=\"batching\"}}`), "
        f"at the shipped setting after {r['warmup']} interactive requests showed it the batch interactive work runs "
        f"in: {estimate / 1000:.1f} kJ. Measured (the batch's tokens times the difference "
        f"of attributed J/token), the batch saved {measured / 1000:.1f} kJ against the interactive arm and "
        f"{alone / 1000:.1f} kJ against one at a time: the estimate is {estimate / measured:.2f}x "
        f"and {estimate / alone:.2f}x of those. The goal of at most half the energy per "
        f"token of one at a time is met at `max_inflight` {', '.join(energy_met) or 'none'}."
    ))  # fmt: skip
    floor, two = r["ttft_floor"], r["ttft_two_replicas"]
    key = f"with_batch_{SHIPPED_INFLIGHT}"
    ms = lambda arm: f"{arm['p95_s'] * 1000:.1f} ms"  # noqa: E731
    rise = lambda x: f"{(x[key]['p95_s'] - x['alone']['p95_s']) * 1000:.1f} ms"  # noqa: E731
    one_met = [f"{x['rate']:g}/s" for x in (t, busy) if x[key]["p95_ratio"] <= 1.1]
    two_met = [f"{x['rate']:g}/s" for x in two.values() if x[key]["p95_ratio"] <= 1.1]
    pairs = "; ".join(f"at {x['rate']:g}/s {ms(x['alone'])} alone, {ms(x[key])} with the batch "
                      f"({x[key]['p95_ratio']:.2f}x)" for x in two.values())  # fmt: skip
    readme_block("batch-energy-latency", (
        f"Time to first token at the 95th percentile, {t['requests']} interactive streams, batch at the shipped "
        f"setting. Straight to the simulated vLLM, no gateway, with {SHIPPED_INFLIGHT} batch-sized requests kept "
        f"running: {ms(floor['alone'])} alone, {ms(floor[key])} with them ({floor[key]['p95_ratio']:.2f}x) at "
        f"{floor['rate']:g}/s, the cost no scheduler in front of one replica removes. Through the gateway on one "
        f"replica: {ms(t['alone'])} and {ms(t[key])} ({t[key]['p95_ratio']:.2f}x) at {t['rate']:g}/s, a rise of "
        f"{rise(t)} where vLLM's own was {rise(floor)}; {ms(busy['alone'])} and {ms(busy[key])} "
        f"({busy[key]['p95_ratio']:.2f}x) at {busy['rate']:g}/s. With a second replica of the model, the batch "
        f"packed onto one: {pairs}. The goal of within 10% of no batch: met on one replica at "
        f"{', '.join(one_met) or 'neither rate'}, on two at {', '.join(two_met) or 'neither rate'}."
    ))  # fmt: skip
    readme_block("batch-energy-table", "\n".join([
        "| `max_inflight` | J/token | vs one at a time | vs interactive | TTFT p95 with a batch | vs no batch |",
        "|---|---|---|---|---|---|", *rows]), wrap=False)  # fmt: skip


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
    ap.add_argument("--warmup", type=int, default=8,
                    help="interactive requests a Batch API arm's gateway serves before the batch")
    ap.add_argument("--ttft-requests", type=int, default=120, help="interactive requests timed, alone and with a batch")
    ap.add_argument("--ttft-rate", type=float, default=2.0, help="their arrivals per simulated second")
    ap.add_argument("--ttft-busy-rate", type=float, default=8.0,
                    help="a busier interactive load, timed alone and with a batch at the shipped max_inflight")
    ap.add_argument("--ttft-batch", type=int, default=2000, help="lines of the batch running meanwhile")
    ap.add_argument("--ttft-speed", type=float, default=1.0, help="the simulator clock for the TTFT runs")
    ap.add_argument("--inflight", default="2,4,16", help="batch.max_inflight settings compared (16 is the shipped)")
    ap.add_argument("--readme", action="store_true", help="only rewrite the README's line from the results file")
    args = ap.parse_args()
    if args.readme:
        write_readme(json.loads(RESULTS.read_text()))
        return 0
    from gateway.config import BatchConfig

    assert BatchConfig().max_inflight == SHIPPED_INFLIGHT, "update SHIPPED_INFLIGHT"
    tmp = Path(tempfile.mkdtemp(prefix="batch-energy-"))
    settings = tuple(int(n) for n in args.inflight.split(","))
    arms = [run_arm(kind, args, tmp) for kind in ("sequential", "all_at_once", "interactive")]
    arms += [run_arm("batch_api", args, tmp, n) for n in settings]
    ttft = ttft_runs(args, tmp, settings, args.ttft_rate)
    busy = ttft_runs(args, tmp, (SHIPPED_INFLIGHT,), args.ttft_busy_rate)
    floor = floor_runs(args, args.ttft_rate)
    two = {f"{rate:g}": ttft_runs(args, tmp, (SHIPPED_INFLIGHT,), rate, replicas=2)
           for rate in (args.ttft_rate, args.ttft_busy_rate)}  # fmt: skip
    command = (f"python bench/batch_energy.py --requests {args.requests} --tokens {args.tokens} --rate {args.rate:g} "
               f"--warmup {args.warmup} "
               f"--speed {args.speed:g} --ttft-requests {args.ttft_requests} --ttft-rate {args.ttft_rate:g} "
               f"--ttft-busy-rate {args.ttft_busy_rate:g} --ttft-batch {args.ttft_batch} "
               f"--ttft-speed {args.ttft_speed:g} --inflight {args.inflight}")
    write_readme(write_results(RESULTS, command, requests=args.requests, tokens=args.tokens, rate=args.rate, arms=arms,
                               inflight=list(settings), ttft=ttft, ttft_busy=busy, ttft_floor=floor,
                               ttft_two_replicas=two, warmup=args.warmup))  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
